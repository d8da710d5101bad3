// `firstread serve` with a model whose memory plan exceeds the machine:
// MedRegA's real configuration (tests/data/medrega, config.json only, about
// 80 GB as stored) routed beside nothing else. The service must keep serving,
// report the model not ready on /readyz with the reason, and log it, instead
// of starting an 80 GB load that the kernel would end. models.medrega.max_memory
// (2 GB, below what any test machine has free) makes the figure independent of
// the machine's load.
#include <gtest/gtest.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <thread>

#include "tests/service_harness.h"

using firstread::testing::FirstreadService;
using firstread::testing::run;
using nlohmann::json;

namespace {

struct Reply {
  int status = 0;
  std::string body;
};

Reply get(int port, const std::string& target) {
  auto r = run("curl -s -w '\\n%{http_code}' 'http://127.0.0.1:" + std::to_string(port) + target + "'");
  Reply out;
  const auto nl = r.output.rfind('\n');
  if (nl == std::string::npos) return out;
  out.body = r.output.substr(0, nl);
  try {
    out.status = std::stoi(r.output.substr(nl + 1));
  } catch (...) {
  }
  return out;
}

}  // namespace

TEST(ModelPlanServe, ModelThatDoesNotFitIsNotReadyWithTheReason) {
  const std::string medrega = std::string(FIRSTREAD_SOURCE_DIR) + "/tests/data/medrega";
  FirstreadService s("models:\n  medrega: {path: " + medrega + ", weights: int8, threads: 2, max_memory: 2GB, max_batch: 1}\n"
                     "routes:\n  - {name: cxr, model: medrega, prompt: \"Describe the image.\", max_new_tokens: 400}\n");
  s.start();
  const int http = firstread::testing::test_port(2);
  std::string models_check, kernels;
  int status = 0;
  for (int i = 0; i < 100; ++i) {
    Reply r = get(http, "/readyz");
    status = r.status;
    if (r.status == 503) {
      kernels = json::parse(r.body).value("kernels", "");
      models_check = json::parse(r.body)["checks"]["models"].get<std::string>();
      if (models_check.find("loading") == std::string::npos) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  EXPECT_EQ(status, 503);
  EXPECT_EQ(models_check.rfind("medrega: needs 49.", 0), 0u) << models_check;
  EXPECT_NE(models_check.find("int8 decoder"), std::string::npos) << models_check;
  EXPECT_NE(models_check.find("2.0 GB available (models.medrega.max_memory)"), std::string::npos) << models_check;
  // The service keeps serving DICOM and says why in its log.
  EXPECT_TRUE(s.echo());
  EXPECT_NE(s.log().find("models: medrega: needs 49."), std::string::npos) << s.log();
  // /readyz and the start-up log name the engine's kernel path (issue 13).
  const bool known = kernels.rfind("scalar", 0) == 0 || kernels.rfind("avx2", 0) == 0 || kernels.rfind("avx512", 0) == 0 ||
                     kernels.rfind("amx", 0) == 0;
  EXPECT_TRUE(known) << kernels;
  EXPECT_NE(s.log().find("engine: kernels " + kernels), std::string::npos) << s.log();
  EXPECT_EQ(s.terminate(), 0);
}
