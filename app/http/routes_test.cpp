// The route table is the one source: the README's table is its output, and
// the OpenAPI document lists every route with its parameters and security.
#include <gtest/gtest.h>

#include <fstream>
#include <set>
#include <sstream>

#include "app/http/api.h"

using namespace firstread::app::http;

TEST(HttpRoutes, ReadmeTableIsTheRouteTable) {
  std::ifstream in(std::string(FIRSTREAD_SOURCE_DIR) + "/README.md");
  std::stringstream text;
  text << in.rdbuf();
  const std::string readme = text.str();
  const std::string begin = "<!-- routes: generated from app/http/routes.cpp -->\n", end = "<!-- routes end -->";
  const size_t a = readme.find(begin), b = readme.find(end);
  ASSERT_NE(a, std::string::npos) << "README.md lacks the marker " << begin;
  ASSERT_NE(b, std::string::npos) << "README.md lacks the marker " << end;
  EXPECT_EQ(readme.substr(a + begin.size(), b - a - begin.size()), markdown_route_table())
      << "paste this table between the markers in README.md:\n"
      << markdown_route_table();
}

TEST(HttpRoutes, OpenApiListsEveryRouteWithItsParametersAndSecurity) {
  const json doc = openapi_document();
  EXPECT_EQ(doc["openapi"], "3.0.3");
  std::set<std::string> documented;
  for (const auto& [path, ops] : doc["paths"].items())
    for (const auto& [method, op] : ops.items()) {
      documented.insert(method + " " + path);
      EXPECT_TRUE(op.contains("summary") && op.contains("responses")) << path;
    }
  EXPECT_EQ(documented.size(), routes().size());
  const json& report = doc["paths"]["/api/v1/studies/{study_uid}/report"]["get"];
  ASSERT_TRUE(report.contains("parameters"));
  EXPECT_EQ(report["parameters"][0]["name"], "study_uid");
  EXPECT_EQ(report["parameters"][0]["in"], "path");
  EXPECT_EQ(report["parameters"][1]["name"], "route");
  EXPECT_EQ(report["parameters"][1]["in"], "query");
  EXPECT_TRUE(report.contains("security"));
  EXPECT_FALSE(doc["paths"]["/healthz"]["get"].contains("security"));
  EXPECT_TRUE(doc["paths"]["/api/v1/studies/{study_uid}/reprocess"].contains("post"));
  EXPECT_EQ(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
}

TEST(HttpRoutes, EveryRouteHasASummaryAHandlerAndAUniqueMethodAndPattern) {
  std::set<std::string> seen;
  for (const Route& r : routes()) {
    EXPECT_NE(r.handler, nullptr) << r.pattern;
    EXPECT_GT(std::string(r.summary).size(), 10u) << r.pattern;
    EXPECT_EQ(r.pattern[0], '/') << r.pattern;
    EXPECT_TRUE(seen.insert(std::to_string(static_cast<int>(r.method)) + r.pattern).second) << r.pattern;
  }
}
