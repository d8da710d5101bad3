// Remote inference (issue 14) end to end: the real firstread binary with a
// model on backend: openai, against tests/openai_protocol_server.py, a strict
// implementation of the OpenAI-compatible chat-completions contract on
// 127.0.0.1 that refuses any request off the documented schema (and checks
// the sent PNG pixel by pixel against pydicom's reading of the source), with
// Orthanc as the PACS, dciodvfy on the SR, and the faults a GPU server has.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <thread>

#include "tests/orthanc_server.h"
#include "tests/service_harness.h"

namespace fs = std::filesystem;
using firstread::testing::FirstreadService;
using firstread::testing::TempDir;
using firstread::testing::OrthancServer;
using firstread::testing::run;
using json = nlohmann::json;

namespace {

const std::string kCtSmall = "/usr/lib/python3/dist-packages/pydicom/data/test_files/CT_small.dcm";  // 128 x 128
const std::string kToken = "test-token-4f1c2a";  // given to firstread only through FR_TEST_GPU_TOKEN
const std::string kPrompt = "Please locate and describe the findings in this CT image.";

// The harness's polling and one-value query (tests/service_harness.h).
using firstread::testing::query_value;
using firstread::testing::wait_until;

// The protocol server as a child process (/usr/bin/python3).
class ProtocolServer {
 public:
  struct Options {
    std::string expect_dir;
    std::string expect_size = "100x100";
    std::string tls_cert, tls_key;
  };
  ProtocolServer(const std::string& dir, Options o) : dir_(dir), options_(std::move(o)) {
    port_ = firstread::testing::test_port(0) - 10000;  // 10000-19599: free of the harness's ports
    scenario(json{{"mode", "ok"}});
  }
  ~ProtocolServer() { stop(); }
  void start() {
    const std::string ready = dir_ + "/protocol.ready";
    fs::remove(ready);
    std::vector<std::string> args = {"/usr/bin/python3", std::string(FIRSTREAD_SOURCE_DIR) + "/tests/openai_protocol_server.py",
                                     "--port", std::to_string(port_), "--model", "medrega-served", "--token", kToken,
                                     "--prompt", kPrompt, "--scenario-file", dir_ + "/scenario.json", "--log",
                                     log_path(), "--ready-file", ready, "--expect-size", options_.expect_size};
    if (!options_.expect_dir.empty()) args.insert(args.end(), {"--expect-dir", options_.expect_dir});
    if (!options_.tls_cert.empty()) args.insert(args.end(), {"--tls-cert", options_.tls_cert, "--tls-key", options_.tls_key});
    pid_ = fork();
    if (pid_ == 0) {
      const std::string out = dir_ + "/protocol.out";
      freopen(out.c_str(), "a", stdout);
      freopen(out.c_str(), "a", stderr);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    if (!wait_until([&] { return fs::exists(ready); }, 60))
      throw std::runtime_error("protocol server did not start:\n" + run("cat " + dir_ + "/protocol.out").output);
  }
  void stop() {
    if (pid_ <= 0) return;
    kill(pid_, SIGTERM);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }
  void scenario(const json& s) {
    const std::string tmp = dir_ + "/scenario.json.tmp";
    std::ofstream(tmp) << s.dump();
    fs::rename(tmp, dir_ + "/scenario.json");
  }
  std::vector<json> requests() const {
    std::vector<json> out;
    std::ifstream in(log_path());
    for (std::string line; std::getline(in, line);)
      if (!line.empty()) out.push_back(json::parse(line));
    return out;
  }
  std::vector<json> chat_requests() const {
    std::vector<json> out;
    for (auto& r : requests())
      if (r.value("path", "") == "/v1/chat/completions") out.push_back(r);
    return out;
  }
  std::string log_path() const { return dir_ + "/protocol.jsonl"; }
  int port() const { return port_; }

 private:
  std::string dir_;
  Options options_;
  int port_;
  pid_t pid_ = -1;
};

struct RemoteYaml {
  std::string url;
  int max_in_flight = 4;
  int workers = 1;
  int max_attempts = 3;
  double backoff = 1;
  double timeout = 20;
  std::string box_format = "internvl-999";
  std::string extra_model_keys;
  std::string served_name = "medrega-served";
  int lease_seconds = 30;
  int orthanc_port = 0;  // 0 = no export destination
};

std::string remote_yaml(const RemoteYaml& y) {
  std::ostringstream s;
  s << "models:\n  gpu:\n    backend: openai\n    url: " << y.url << "\n    model: " << y.served_name
    << "\n    api_key_env: FR_TEST_GPU_TOKEN\n    timeout_seconds: " << y.timeout
    << "\n    max_in_flight: " << y.max_in_flight << "\n    max_image_side: 100\n    box_format: " << y.box_format
    << "\n    system_prompt: Answer the questions.\n" << y.extra_model_keys
    << "routes:\n  - {name: ct, model: gpu, prompt: \"" << kPrompt << "\", max_new_tokens: 300}\n"
    << "worklist: {stable_seconds: 1, poll_seconds: 0.2, lease_seconds: " << y.lease_seconds
    << ", retry_backoff_seconds: " << y.backoff << ", max_attempts: " << y.max_attempts << ", workers: " << y.workers
    << "}\n";
  if (y.orthanc_port)
    s << "export:\n  retry_backoff_seconds: 1\n  destinations:\n    - {name: pacs, ae_title: ORTHANC, host: 127.0.0.1, "
         "port: "
      << y.orthanc_port << "}\n";
  return s.str();
}

std::string send_study(const FirstreadService& s, const std::string& dir) {
  auto made = firstread::testing::make_instances(kCtSmall, dir, 1);
  auto r = run("storescu -aec FIRSTREAD 127.0.0.1 " + std::to_string(s.port()) + " '" + made[0].first + "'");
  if (r.exit_code != 0) throw std::runtime_error(r.output);
  return made[0].first;
}

std::string http_get(const FirstreadService&, const std::string& path, int* code = nullptr) {
  auto r = run("curl -s -w '\\n%{http_code}' http://127.0.0.1:" + std::to_string(firstread::testing::test_port(2)) + path);
  const size_t nl = r.output.rfind('\n');
  if (code) *code = std::atoi(r.output.substr(nl + 1).c_str());
  return r.output.substr(0, nl);
}

class Env {
 public:
  Env() { setenv("FR_TEST_GPU_TOKEN", kToken.c_str(), 1); }
  ~Env() { unsetenv("FR_TEST_GPU_TOKEN"); }
};

}  // namespace

TEST(RemoteInference, OrthancStudyThroughTheProtocolServerComesBackAsAnSrWithBoxesOnSourcePixels) {
  Env env;
  const TempDir tmp("remote");
  const std::string& dir = tmp.path();
  // The server checks the sent PNG against pydicom's 8-bit reading of the
  // very file Orthanc forwards, resized to 100 x 100 (max_image_side 100).
  fs::create_directories(dir + "/expect");
  fs::copy_file(kCtSmall, dir + "/expect/ct.dcm");
  ProtocolServer gpu(dir, {dir + "/expect"});
  // Grid 0..999 of the sent image: one box in the grid, one outside it (dropped, text kept).
  gpu.scenario({{"mode", "ok"},
                {"served_model", "MedRegA-40B"},
                {"content", "Findings: <ref>nodule</ref><box>[[250, 250, 750, 500]]</box> in the left lung; "
                            "<ref>artefact</ref><box>[[100, 100, 1200, 400]]</box>.\nImpression: one nodule."},
                {"prompt_tokens", 1790},
                {"completion_tokens", 41}});
  gpu.start();
  OrthancServer pacs(firstread::testing::test_port(0));
  RemoteYaml y;
  y.url = "http://127.0.0.1:" + std::to_string(gpu.port());
  y.orthanc_port = pacs.dicom_port();
  FirstreadService s(remote_yaml(y));
  pacs.start();
  s.start();

  // /readyz polls GET /v1/models with the token.
  int code = 0;
  ASSERT_TRUE(wait_until([&] { return http_get(s, "/readyz", &code), code == 200; }, 30)) << http_get(s, "/readyz");

  const json uploaded = json::parse(pacs.upload(kCtSmall));
  pacs.rest("POST", "/modalities/firstread/store", uploaded.at("ParentStudy"), &code);
  ASSERT_EQ(code, 200);
  ASSERT_TRUE(wait_until([&] { return query_value(s, "SELECT count(*) FROM api.reports") == "1"; }, 120)) << s.log();

  const auto requests = gpu.chat_requests();
  ASSERT_EQ(requests.size(), 1u);
  EXPECT_TRUE(requests[0].value("accepted", false)) << requests[0].dump();
  EXPECT_EQ(requests[0].at("images"), json::array({"100x100"}));
  EXPECT_EQ(requests[0].at("matched"), json::array({"ct.dcm"}));
  EXPECT_EQ(requests[0].at("system"), "Answer the questions.");
  EXPECT_EQ(requests[0].at("max_tokens"), 300);

  EXPECT_EQ(query_value(s, "SELECT backend FROM api.reports"), "openai");
  EXPECT_EQ(query_value(s, "SELECT served_model FROM api.reports"), "MedRegA-40B");
  EXPECT_EQ(query_value(s, "SELECT model FROM api.reports"), "gpu");
  EXPECT_EQ(query_value(s, "SELECT prompt_tokens FROM api.reports"), "1790");
  EXPECT_EQ(query_value(s, "SELECT completion_tokens FROM api.reports"), "41");
  EXPECT_EQ(query_value(s, "SELECT truncated FROM api.reports"), "f");
  const std::string text = query_value(s, "SELECT text FROM api.reports");
  EXPECT_NE(text.find("nodule in the left lung"), std::string::npos) << text;
  EXPECT_NE(text.find("artefact."), std::string::npos) << "the dropped box's text stays: " << text;
  // One finding: [[250, 250, 750, 500]] on 0..999 of the sent image = the same
  // fraction of the 128 x 128 source.
  ASSERT_EQ(query_value(s, "SELECT count(*) FROM api.findings"), "1");
  EXPECT_EQ(query_value(s, "SELECT label FROM api.findings"), "nodule");
  const double expect[4] = {250 / 999.0 * 128, 250 / 999.0 * 128, 750 / 999.0 * 128, 500 / 999.0 * 128};
  const char* cols[4] = {"x1", "y1", "x2", "y2"};
  for (int k = 0; k < 4; ++k)
    EXPECT_NEAR(std::atof(query_value(s, std::string("SELECT ") + cols[k] + " FROM api.findings").c_str()), expect[k], 1e-3)
        << cols[k];

  // The SR: valid, its device observer names the served model and the server's host.
  const std::string sr_path = s.storage() + "/" + query_value(s, "SELECT sr_file_path FROM api.reports");
  auto v = run("dciodvfy '" + sr_path + "' 2>&1 | grep '^Error' || true");
  EXPECT_TRUE(v.output.empty()) << v.output;
  auto dump = run("dsrdump '" + sr_path + "'");
  EXPECT_EQ(dump.exit_code, 0);
  EXPECT_NE(dump.output.find("\"MedRegA-40B\""), std::string::npos) << dump.output;
  EXPECT_NE(dump.output.find("inference server 127.0.0.1"), std::string::npos) << dump.output;
  // The SR's polyline is the finding's rectangle in source pixels.
  EXPECT_NE(dump.output.find("POLYLINE"), std::string::npos) << dump.output;
  EXPECT_NE(dump.output.find("32.032"), std::string::npos) << dump.output;

  // Back in Orthanc, in the same study.
  ASSERT_TRUE(wait_until([&] { return query_value(s, "SELECT state FROM api.exports") == "sent"; }, 60)) << s.log();
  const json found = json::parse(pacs.rest("POST", "/tools/find",
                                           R"({"Level":"Instance","Query":{"SOPInstanceUID":")" +
                                               query_value(s, "SELECT sr_sop_instance_uid FROM api.reports") + R"("}})"));
  EXPECT_EQ(found.size(), 1u);

  // /metrics: one successful openai request for model gpu.
  const std::string metrics = http_get(s, "/metrics");
  EXPECT_NE(metrics.find("firstread_inference_requests_total{backend=\"openai\",model=\"gpu\",outcome=\"ok\"} 1"),
            std::string::npos)
      << metrics;
  EXPECT_NE(metrics.find("firstread_inference_request_seconds_count{backend=\"openai\",model=\"gpu\"} 1"),
            std::string::npos);
  // The token is in no log line.
  EXPECT_EQ(s.log().find(kToken), std::string::npos);
  fs::remove_all(dir);
}

TEST(RemoteInference, QwenPixelBoxesMapThroughTheSentSizeAndTruncationIsMarked) {
  Env env;
  const TempDir tmp("remote");
  const std::string& dir = tmp.path();
  fs::create_directories(dir + "/expect");
  fs::copy_file(kCtSmall, dir + "/expect/ct.dcm");
  // qwen25-pixels: 128 px at max_image_side 100 is sent at 84 x 84 (multiples
  // of 28, so the server's smart_resize keeps it).
  ProtocolServer gpu(dir, {dir + "/expect", "84x84"});
  gpu.scenario({{"mode", "ok"},
                {"finish_reason", "length"},
                {"content", "```json\n[{\"bbox_2d\": [21, 42, 63, 84], \"label\": \"mass\"},"
                            " {\"bbox_2d\": [-5, 0, 40, 40], \"label\": \"outside\"}]\n```\nThere is a mass"}});
  gpu.start();
  RemoteYaml y;
  y.url = "http://127.0.0.1:" + std::to_string(gpu.port()) + "/v1/";
  y.box_format = "qwen25-pixels";
  FirstreadService s(remote_yaml(y));
  s.start();
  send_study(s, s.dir() + "/study");
  ASSERT_TRUE(wait_until([&] { return query_value(s, "SELECT count(*) FROM api.reports") == "1"; }, 120)) << s.log();
  ASSERT_EQ(gpu.chat_requests().size(), 1u);
  EXPECT_TRUE(gpu.chat_requests()[0].value("accepted", false)) << gpu.chat_requests()[0].dump();
  EXPECT_EQ(query_value(s, "SELECT truncated FROM api.reports"), "t");
  EXPECT_NE(query_value(s, "SELECT text FROM api.reports").find("[Truncated"), std::string::npos);
  ASSERT_EQ(query_value(s, "SELECT count(*) FROM api.findings"), "1") << s.log();
  EXPECT_EQ(query_value(s, "SELECT label FROM api.findings"), "mass");
  EXPECT_EQ(query_value(s, "SELECT x1 || ',' || y1 || ',' || x2 || ',' || y2 FROM api.findings"),
            "32,64,96,128");  // x * 128 / 84
  const std::string sr_path = s.storage() + "/" + query_value(s, "SELECT sr_file_path FROM api.reports");
  EXPECT_NE(run("dsrdump +Pl '" + sr_path + "'").output.find("[Truncated: the model stopped"), std::string::npos);
  fs::remove_all(dir);
}

// Each fault: a job error naming the cause, retried by the queue, never a report.
TEST(RemoteInference, EveryServerFaultIsAClearJobErrorAndNeverAReport) {
  Env env;
  const TempDir tmp("remote");
  const std::string& dir = tmp.path();
  ProtocolServer gpu(dir, {});
  RemoteYaml y;
  y.url = "http://127.0.0.1:" + std::to_string(gpu.port());
  y.max_attempts = 1;  // one attempt per study: the error is the fault's
  y.timeout = 2;
  FirstreadService s(remote_yaml(y));
  s.start();

  struct Case {
    std::string name;
    json scenario;
    std::string expected_error;
  };
  const std::vector<Case> cases = {
      {"refused", json(), "cannot connect: Connection refused"},
      {"5xx", {{"mode", "status"}, {"status", 500}, {"message", "CUDA out of memory"}},
       "HTTP 500 server error: CUDA out of memory"},
      {"4xx", {{"mode", "status"}, {"status", 400}, {"message", "image too large for the context"}},
       "HTTP 400 (request refused): image too large for the context"},
      {"not json", {{"mode", "not_json"}}, "the reply is not valid JSON"},
      {"truncated json", {{"mode", "truncated_json"}}, "the reply is not valid JSON"},
      {"no choices", {{"mode", "no_choices"}}, "the reply has no choices"},
      {"empty content", {{"mode", "empty_content"}}, "choices[0].message.content is empty"},
      {"closed", {{"mode", "close"}}, "closed the connection before the reply was complete"},
      {"timeout", {{"mode", "sleep"}, {"delay", 5}}, "no reply within 2 s"},
  };
  int n = 0;
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    if (c.scenario.is_null()) {
      gpu.stop();
    } else {
      gpu.scenario(c.scenario);
      if (n == 1) gpu.start();
    }
    ++n;
    send_study(s, s.dir() + "/study" + std::to_string(n));
    ASSERT_TRUE(wait_until([&] { return query_value(s, "SELECT count(*) FROM api.jobs WHERE state = 'dead'") == std::to_string(n); }, 60))
        << s.log();
    const std::string error = query_value(s, "SELECT error FROM api.jobs ORDER BY job_id DESC LIMIT 1");
    EXPECT_NE(error.find(c.expected_error), std::string::npos) << error;
    EXPECT_NE(error.find("remote model 'gpu' (http://127.0.0.1:"), std::string::npos) << error;
    EXPECT_EQ(query_value(s, "SELECT count(*) FROM api.reports"), "0");
  }
  // A wrong served model name: the server's 404 message.
  const std::string metrics = http_get(s, "/metrics");
  for (const char* kind : {"connect", "http_5xx", "http_4xx", "bad_reply", "timeout"})
    EXPECT_NE(metrics.find(std::string("kind=\"") + kind + "\""), std::string::npos) << kind << "\n" << metrics;
  EXPECT_EQ(s.log().find(kToken), std::string::npos);
  fs::remove_all(dir);
}

TEST(RemoteInference, TooManyRequestsWaitsForRetryAfterThenSucceeds) {
  Env env;
  const TempDir tmp("remote");
  const std::string& dir = tmp.path();
  ProtocolServer gpu(dir, {});
  gpu.scenario({{"mode", "status"}, {"status", 429}, {"retry_after", "4"}, {"message", "rate limited"}});
  gpu.start();
  RemoteYaml y;
  y.url = "http://127.0.0.1:" + std::to_string(gpu.port());
  y.backoff = 0.2;  // the queue's own backoff is shorter than Retry-After
  FirstreadService s(remote_yaml(y));
  s.start();
  send_study(s, s.dir() + "/study");
  ASSERT_TRUE(wait_until([&] { return query_value(s, "SELECT state FROM api.jobs") == "failed"; }, 60)) << s.log();
  EXPECT_NE(query_value(s, "SELECT error FROM api.jobs").find("HTTP 429 too many requests (Retry-After 4): rate limited"),
            std::string::npos)
      << query_value(s, "SELECT error FROM api.jobs");
  // next_attempt_at honours Retry-After, not the 0.2 s backoff.
  const double wait = std::atof(
      query_value(s, "SELECT extract(epoch FROM next_attempt_at - finished_at) FROM firstread.jobs").c_str());
  EXPECT_GE(wait, 3.9);
  gpu.scenario({{"mode", "ok"}, {"content", "No finding."}});
  ASSERT_TRUE(wait_until([&] { return query_value(s, "SELECT count(*) FROM api.reports") == "1"; }, 60)) << s.log();
  const auto requests = gpu.chat_requests();
  ASSERT_EQ(requests.size(), 2u);
  EXPECT_GE(requests[1].at("t").get<double>() - requests[0].at("t").get<double>(), 3.9);
  EXPECT_EQ(query_value(s, "SELECT attempts FROM api.jobs"), "2");
  fs::remove_all(dir);
}

TEST(RemoteInference, WrongTokenAndUnknownModelGiveTheServersMessage) {
  const TempDir tmp("remote");
  const std::string& dir = tmp.path();
  ProtocolServer gpu(dir, {});
  gpu.start();
  setenv("FR_TEST_GPU_TOKEN", "not-the-token", 1);
  RemoteYaml y;
  y.url = "http://127.0.0.1:" + std::to_string(gpu.port());
  y.max_attempts = 1;
  y.served_name = "no-such-model";
  FirstreadService s(remote_yaml(y));
  s.start();
  int code = 0;
  const std::string ready = http_get(s, "/readyz", &code);
  EXPECT_EQ(code, 503);
  EXPECT_NE(ready.find("GET /v1/models answered HTTP 401: invalid api key"), std::string::npos) << ready;
  send_study(s, s.dir() + "/a");
  ASSERT_TRUE(wait_until([&] { return query_value(s, "SELECT state FROM api.jobs") == "dead"; }, 60)) << s.log();
  EXPECT_NE(query_value(s, "SELECT error FROM api.jobs").find("HTTP 401 (request refused): invalid api key"),
            std::string::npos)
      << query_value(s, "SELECT error FROM api.jobs");
  EXPECT_EQ(s.log().find("not-the-token"), std::string::npos);
  s.terminate();
  setenv("FR_TEST_GPU_TOKEN", kToken.c_str(), 1);
  s.start();
  ASSERT_TRUE(wait_until([&] { return http_get(s, "/readyz", &code).find("does not list model 'no-such-model'") != std::string::npos; }, 20))
      << http_get(s, "/readyz");
  send_study(s, s.dir() + "/b");
  ASSERT_TRUE(wait_until([&] { return query_value(s, "SELECT count(*) FROM api.jobs WHERE state = 'dead'") == "2"; }, 60));
  EXPECT_NE(query_value(s, "SELECT error FROM api.jobs ORDER BY job_id DESC LIMIT 1")
                .find("HTTP 404 (request refused): The model `no-such-model` does not exist."),
            std::string::npos)
      << query_value(s, "SELECT error FROM api.jobs ORDER BY job_id DESC LIMIT 1");
  unsetenv("FR_TEST_GPU_TOKEN");
  fs::remove_all(dir);
}

TEST(RemoteInference, HttpsWithTheTestCaAndAWrongCaRefused) {
  Env env;
  const TempDir tmp("remote");
  const std::string& dir = tmp.path();
  // A test CA and a server certificate for 127.0.0.1 signed by it; a second CA that signed nothing.
  const std::string sh =
      "cd '" + dir + "' && "
      "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=firstread-test-ca "
      "2>/dev/null && "
      "openssl req -x509 -newkey rsa:2048 -nodes -keyout other.key -out other-ca.pem -days 2 -subj /CN=other-ca "
      "2>/dev/null && "
      "openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1 2>/dev/null && "
      "printf 'subjectAltName=IP:127.0.0.1\\n' > san.ext && "
      "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 "
      "-extfile san.ext 2>/dev/null";
  ASSERT_EQ(run(sh).exit_code, 0) << run(sh).output;
  ProtocolServer gpu(dir, {"", "100x100", dir + "/server.pem", dir + "/server.key"});
  gpu.scenario({{"mode", "ok"}, {"content", "<ref>nodule</ref><box>[[0, 0, 999, 999]]</box>"}});
  gpu.start();
  RemoteYaml y;
  y.url = "https://127.0.0.1:" + std::to_string(gpu.port());
  y.max_attempts = 1;
  y.extra_model_keys = "    ca_file: " + dir + "/other-ca.pem\n";
  {
    FirstreadService wrong(remote_yaml(y));
    wrong.start();
    send_study(wrong, wrong.dir() + "/s");
    ASSERT_TRUE(wait_until([&] { return query_value(wrong, "SELECT state FROM api.jobs") == "dead"; }, 60)) << wrong.log();
    const std::string error = query_value(wrong, "SELECT error FROM api.jobs");
    EXPECT_NE(error.find("TLS handshake failed"), std::string::npos) << error;
    EXPECT_NE(error.find("certificate"), std::string::npos) << error;
    EXPECT_EQ(query_value(wrong, "SELECT count(*) FROM api.reports"), "0");
    EXPECT_TRUE(gpu.chat_requests().empty()) << "no request may reach a server that failed verification";
  }
  y.extra_model_keys = "    ca_file: " + dir + "/ca.pem\n";
  FirstreadService s(remote_yaml(y));
  s.start();
  send_study(s, s.dir() + "/s");
  ASSERT_TRUE(wait_until([&] { return query_value(s, "SELECT count(*) FROM api.reports") == "1"; }, 60)) << s.log();
  EXPECT_EQ(gpu.chat_requests().size(), 1u);
  EXPECT_EQ(query_value(s, "SELECT x2 FROM api.findings"), "128");
  fs::remove_all(dir);
}

TEST(RemoteInference, TwentyStudiesWithMaxInFlightFourNeverOpenMoreThanFour) {
  Env env;
  const TempDir tmp("remote");
  const std::string& dir = tmp.path();
  ProtocolServer gpu(dir, {});
  gpu.scenario({{"mode", "ok"}, {"delay", 0.8}, {"content", "No finding."}});
  gpu.start();
  RemoteYaml y;
  y.url = "http://127.0.0.1:" + std::to_string(gpu.port());
  y.workers = 8;  // more workers than the server may take at once
  y.max_in_flight = 4;
  FirstreadService s(remote_yaml(y));
  s.start();
  std::string files;
  for (int i = 0; i < 20; ++i)
    files += " '" + firstread::testing::make_instances(kCtSmall, s.dir() + "/s" + std::to_string(i), 1)[0].first + "'";
  ASSERT_EQ(run("storescu -aec FIRSTREAD 127.0.0.1 " + std::to_string(s.port()) + files).exit_code, 0);
  ASSERT_TRUE(wait_until([&] { return query_value(s, "SELECT count(*) FROM api.reports") == "20"; }, 180))
      << query_value(s, "SELECT count(*) FROM api.reports") << "\n" << s.log();
  int most = 0;
  const auto requests = gpu.chat_requests();
  EXPECT_EQ(requests.size(), 20u);
  for (const auto& r : requests) most = std::max(most, r.at("open").get<int>());
  EXPECT_LE(most, 4);
  EXPECT_GE(most, 2) << "8 workers on 20 studies must have several requests open at once";
  fs::remove_all(dir);
}

TEST(RemoteInference, KillDashNineWithRequestsInFlightGivesExactlyOneReportPerJob) {
  Env env;
  const TempDir tmp("remote");
  const std::string& dir = tmp.path();
  ProtocolServer gpu(dir, {});
  gpu.scenario({{"mode", "ok"}, {"delay", 3}, {"content", "No finding."}});
  gpu.start();
  RemoteYaml y;
  y.url = "http://127.0.0.1:" + std::to_string(gpu.port());
  y.workers = 4;
  y.lease_seconds = 5;
  FirstreadService s(remote_yaml(y));
  s.start();
  std::string files;
  for (int i = 0; i < 4; ++i)
    files += " '" + firstread::testing::make_instances(kCtSmall, s.dir() + "/s" + std::to_string(i), 1)[0].first + "'";
  ASSERT_EQ(run("storescu -aec FIRSTREAD 127.0.0.1 " + std::to_string(s.port()) + files).exit_code, 0);
  ASSERT_TRUE(wait_until([&] { return query_value(s, "SELECT count(*) FROM api.jobs WHERE state = 'running'") == "4"; }, 60))
      << s.log();
  std::this_thread::sleep_for(std::chrono::milliseconds(800));  // the requests are open on the server
  s.kill9();
  EXPECT_EQ(query_value(s, "SELECT count(*) FROM api.reports"), "0");
  gpu.scenario({{"mode", "ok"}, {"delay", 0.2}, {"content", "No finding."}});
  s.start();
  ASSERT_TRUE(wait_until([&] { return query_value(s, "SELECT count(*) FROM api.jobs WHERE state = 'done'") == "4"; }, 120))
      << s.log();
  std::this_thread::sleep_for(std::chrono::seconds(2));
  EXPECT_EQ(query_value(s, "SELECT count(*) FROM api.reports"), "4");
  EXPECT_EQ(query_value(s, "SELECT count(DISTINCT job_id) FROM api.reports"), "4");
  EXPECT_GE(gpu.chat_requests().size(), 8u) << "the killed requests were sent again";
  fs::remove_all(dir);
}
