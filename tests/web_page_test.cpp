// The results page and the API calls it makes, against the real `firstread
// serve` (embedded PostgreSQL, in-process DICOM node, the engine's tiny
// reference model producing a real report), driven by curl and storescu.
// When Debian's chromium is installed, the page is also loaded in headless
// Chromium: the report text and one box per finding must be in its DOM, and a
// screenshot is kept in the build directory (web_page_test.png) for humans.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>

#include "engine/test_fixtures.h"
#include "tests/service_harness.h"

namespace fs = std::filesystem;
using firstread::testing::FirstreadService;
using firstread::testing::run;
using json = nlohmann::json;

namespace {

const std::string kCtSmall = "/usr/lib/python3/dist-packages/pydicom/data/test_files/CT_small.dcm";

bool wait_until(const std::function<bool()>& condition, int seconds) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  while (std::chrono::steady_clock::now() < deadline) {
    if (condition()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  return condition();
}

struct CurlReply {
  int status = 0;
  std::string body;
};

// curl: the body, then the status code on the last line.
CurlReply curl(int port, const std::string& method, const std::string& target) {
  auto r = run("curl -s -X " + method + " -w '\\n%{http_code}' 'http://127.0.0.1:" + std::to_string(port) + target + "'");
  CurlReply reply;
  const size_t nl = r.output.rfind('\n');
  if (nl == std::string::npos) return reply;
  reply.body = r.output.substr(0, nl);
  try {
    reply.status = std::stoi(r.output.substr(nl + 1));
  } catch (const std::exception&) {
    reply.status = 0;
  }
  return reply;
}

json curl_json(int port, const std::string& target) {
  auto r = curl(port, "GET", target);
  EXPECT_EQ(r.status, 200) << target << ": " << r.body;
  try {
    return json::parse(r.body);
  } catch (const std::exception& e) {
    ADD_FAILURE() << target << ": not JSON: " << r.body;
    return json();
  }
}

// The value of one sample line `name{labels} value` in Prometheus text, or -1.
double metric_value(const std::string& text, const std::string& series) {
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);)
    if (line.compare(0, series.size() + 1, series + " ") == 0) return std::stod(line.substr(series.size() + 1));
  return -1;
}

TEST(WebPage, ServiceServesThePageTheReportAndItsKeyImage) {
  const std::string model = firstread::engine::testing_support::fixture_root() + "/v12";
  FirstreadService s("models:\n  tiny: {path: " + model + ", threads: 2}\n"
                     "routes:\n  - {name: default, model: tiny, prompt: \"Describe the image.\", max_new_tokens: 12}\n"
                     "worklist: {stable_seconds: 1, poll_seconds: 0.2}\n");
  s.start();
  const int http = firstread::testing::test_port(2);
  if (!wait_until([&] { return curl(http, "GET", "/healthz").status == 200; }, 20))
    GTEST_SKIP() << "firstread serve does not answer HTTP on 127.0.0.1:" << http
                 << " (the HTTP API is not started by app/serve.cpp in this build)";

  auto ready = curl(http, "GET", "/readyz");
  EXPECT_EQ(ready.status, 200) << ready.body;
  const std::string metrics_before = curl(http, "GET", "/metrics").body;
  EXPECT_EQ(metric_value(metrics_before, "firstread_dicom_instances_received_total{outcome=\"stored\"}"), 0)
      << metrics_before;

  // One study of two instances over DICOM.
  const std::string send_dir = s.dir() + "/send";
  fs::create_directories(send_dir);
  auto made = firstread::testing::make_instances(kCtSmall, send_dir, 2);
  std::string files;
  for (const auto& [path, sop] : made) files += " '" + path + "'";
  auto sent = run("storescu -aec FIRSTREAD 127.0.0.1 " + std::to_string(s.port()) + files);
  ASSERT_EQ(sent.exit_code, 0) << sent.output;

  const std::string metrics_after = curl(http, "GET", "/metrics").body;
  EXPECT_EQ(metric_value(metrics_after, "firstread_dicom_instances_received_total{outcome=\"stored\"}"), 2)
      << metrics_after;
  EXPECT_GE(metric_value(metrics_after, "firstread_dicom_associations_total{outcome=\"accepted\"}"), 1);
  EXPECT_EQ(metric_value(metrics_after, "firstread_stored_instances"), 2);

  // The study appears, and is reported by the tiny model.
  std::string study_uid;
  ASSERT_TRUE(wait_until(
      [&] {
        auto page = curl(http, "GET", "/api/v1/studies?limit=10");
        if (page.status != 200) return false;
        auto studies = json::parse(page.body)["studies"];
        if (studies.size() != 1) return false;
        study_uid = studies[0]["study_uid"];
        return studies[0]["state"] == "reported";
      },
      240))
      << s.log();
  auto report = curl_json(http, "/api/v1/studies/" + study_uid + "/report");
  ASSERT_TRUE(report.contains("report_id")) << report.dump();
  EXPECT_EQ(report["model"], "tiny");
  EXPECT_TRUE(report["text"].is_string());
  EXPECT_TRUE(report["findings"].is_array());
  for (const auto& f : report["findings"]) {
    if (f["x1"].is_null()) continue;
    EXPECT_LE(0.0, f["x1"].get<double>());
    EXPECT_LE(f["x1"].get<double>(), f["x2"].get<double>());
    EXPECT_LE(f["x2"].get<double>(), 128.0);  // CT_small is 128 x 128: boxes in source pixels
  }
  // The job's completion was observed by the pipeline in this process, and the
  // database's tallies moved with the report (all without a full-table scan).
  const std::string metrics_reported = curl(http, "GET", "/metrics").body;
  EXPECT_EQ(metric_value(metrics_reported, "firstread_report_latency_seconds_count{model=\"tiny\"}"), 1)
      << metrics_reported;
  EXPECT_EQ(metric_value(metrics_reported, "firstread_job_duration_seconds_count{model=\"tiny\"}"), 1);
  EXPECT_GT(metric_value(metrics_reported, "firstread_report_inference_seconds_sum{model=\"tiny\"}"), 0);
  EXPECT_EQ(metric_value(metrics_reported, "firstread_reports{model=\"tiny\"}"), 1);
  EXPECT_EQ(metric_value(metrics_reported, "firstread_studies{state=\"reported\"}"), 1);
  EXPECT_EQ(metric_value(metrics_reported, "firstread_jobs{state=\"done\"}"), 1);
  auto detail = curl_json(http, "/api/v1/studies/" + study_uid);
  EXPECT_EQ(detail["instances"].size(), 2u);
  EXPECT_EQ(detail["jobs"].size(), 1u);

  // The SR as the API serves it is the file the report row names.
  const std::string downloaded = s.dir() + "/sr.dcm";
  auto got = run("curl -s -o '" + downloaded + "' -w '%{http_code} %{content_type}' http://127.0.0.1:" +
                 std::to_string(http) + report["sr_url"].get<std::string>());
  EXPECT_EQ(got.output, "200 application/dicom");
  auto dump = run("dcmdump +P SOPInstanceUID '" + downloaded + "'");
  EXPECT_NE(dump.output.find(report["sr_sop_instance_uid"].get<std::string>()), std::string::npos) << dump.output;

  // The key image the page shows.
  const std::string sop = detail["instances"][0]["sop_instance_uid"];
  const std::string png_path = s.dir() + "/key.png";
  got = run("curl -s -o '" + png_path + "' -w '%{http_code} %{content_type}' 'http://127.0.0.1:" +
            std::to_string(http) + "/api/v1/instances/" + sop + "/png?frame=0'");
  EXPECT_EQ(got.output, "200 image/png");
  std::ifstream png_file(png_path, std::ios::binary);
  std::string png((std::istreambuf_iterator<char>(png_file)), std::istreambuf_iterator<char>());
  ASSERT_GT(png.size(), 24u);
  EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  EXPECT_EQ(static_cast<unsigned char>(png[19]), 128u);  // IHDR width, low byte: the 128 x 128 source frame
  EXPECT_EQ(static_cast<unsigned char>(png[23]), 128u);  // IHDR height, low byte

  auto page = curl(http, "GET", "/");
  EXPECT_EQ(page.status, 200);
  EXPECT_NE(page.body.find("<title>firstread"), std::string::npos);

  // The page in a real browser, where Debian's chromium is installed.
  const std::string chromium = run("command -v chromium || command -v chromium-browser").output;
  if (chromium.empty()) {
    std::cout << "[ NOTE     ] chromium is not installed: the page was not loaded in a browser\n";
  } else {
    const std::string binary = chromium.substr(0, chromium.find('\n'));
    const std::string url = "http://127.0.0.1:" + std::to_string(http) + "/#study=" + study_uid;
    const std::string flags = " --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --hide-scrollbars"
                              " --virtual-time-budget=15000 --window-size=1400,1000 --user-data-dir='" +
                              s.dir() + "/chromium' ";
    auto dom = run("'" + binary + "'" + flags + "--dump-dom '" + url + "' 2>/dev/null");
    EXPECT_NE(dom.output.find("<pre id=\"report-text\">"), std::string::npos) << dom.output;
    EXPECT_NE(dom.output.find("data-study-uid=\"" + study_uid + "\""), std::string::npos) << dom.output;
    size_t boxes_expected = 0;
    for (const auto& f : report["findings"])
      if (!f["x1"].is_null() && f["sop_instance_uid"].is_string()) ++boxes_expected;
    size_t boxes = 0;
    for (size_t at = dom.output.find("class=\"finding-box\""); at != std::string::npos;
         at = dom.output.find("class=\"finding-box\"", at + 1))
      ++boxes;
    EXPECT_EQ(boxes, boxes_expected) << dom.output;
    const std::string text = report["text"];
    if (!text.empty() && text.find_first_of("<>&\"") == std::string::npos)
      EXPECT_NE(dom.output.find(text.substr(0, std::min<size_t>(text.size(), 30))), std::string::npos) << dom.output;
    const std::string screenshot = fs::current_path().string() + "/web_page_test.png";
    run("'" + binary + "'" + flags + "--screenshot='" + screenshot + "' '" + url + "' 2>/dev/null");
    EXPECT_TRUE(fs::exists(screenshot)) << "no screenshot at " << screenshot;
  }

  // Reprocess from the API: a second report that supersedes the first.
  auto rerun = curl(http, "POST", "/api/v1/studies/" + study_uid + "/reprocess");
  EXPECT_EQ(rerun.status, 202) << rerun.body;
  ASSERT_TRUE(wait_until(
      [&] {
        auto r = curl(http, "GET", "/api/v1/studies/" + study_uid + "/report");
        return r.status == 200 && json::parse(r.body)["report_id"] != report["report_id"];
      },
      240))
      << s.log();
  auto second = curl_json(http, "/api/v1/studies/" + study_uid + "/report");
  EXPECT_EQ(second["supersedes_report_id"], report["report_id"]);
}

}  // namespace
