// End to end with Orthanc as the PACS: a study forwarded by Orthanc to
// firstread comes back as an SR in the same study. Plus the faults users
// expect to survive: PACS down, broken pixel data, kill -9 during inference.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <thread>

#include "engine/test_fixtures.h"
#include "tests/orthanc_server.h"
#include "tests/service_harness.h"

namespace fs = std::filesystem;
using firstread::testing::FirstreadService;
using firstread::testing::OrthancServer;
using firstread::testing::run;
using json = nlohmann::json;

namespace {

const std::string kCtSmall = "/usr/lib/python3/dist-packages/pydicom/data/test_files/CT_small.dcm";

// A firstread configuration that runs the engine's small reference model
// (random weights: the text is noise, but every step from DICOM pixels to the
// SR in the PACS is real).
std::string pipeline_yaml(int orthanc_dicom_port, int lease_seconds = 30, int max_new_tokens = 12) {
  const std::string model = firstread::engine::testing_support::fixture_root() + "/v12";
  return "models:\n  tiny: {path: " + model + ", threads: 2}\n"
         "routes:\n  - {name: default, model: tiny, prompt: \"Describe the image.\", max_new_tokens: " +
         std::to_string(max_new_tokens) + "}\n" +
         "worklist: {stable_seconds: 1, poll_seconds: 0.2, lease_seconds: " + std::to_string(lease_seconds) +
         ", retry_backoff_seconds: 1, max_attempts: 2}\n"
         "export:\n  retry_backoff_seconds: 1\n  max_attempts: 100\n  destinations:\n"
         "    - {name: pacs, ae_title: ORTHANC, host: 127.0.0.1, port: " +
         std::to_string(orthanc_dicom_port) + "}\n";
}

bool wait_until(const std::function<bool()>& condition, int seconds) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  while (std::chrono::steady_clock::now() < deadline) {
    if (condition()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return condition();
}

std::string query1(const FirstreadService& s, const std::string& sql) {
  try {
    auto c = s.connect();
    pqxx::work t(c);
    auto r = t.exec(sql);
    if (r.empty() || r[0][0].is_null()) return "";
    return r[0][0].c_str();
  } catch (const std::exception&) {
    return "";
  }
}

void expect_valid_sr(const std::string& path) {
  auto v = run("dciodvfy '" + path + "'");
  std::string errors;
  std::istringstream lines(v.output);
  for (std::string line; std::getline(lines, line);)
    if (line.rfind("Error", 0) == 0) errors += line + "\n";
  EXPECT_TRUE(errors.empty()) << "dciodvfy errors in " << path << ":\n" << errors;
  auto d = run("dsrdump '" + path + "'");
  EXPECT_EQ(d.exit_code, 0) << d.output;
  EXPECT_EQ(d.output.find("\nE: "), std::string::npos) << d.output;
}

// Writes a copy of CT_small with new UIDs (and optionally pixel data that is
// far shorter than Rows x Columns promise).
std::string make_study(const std::string& dir, bool broken_pixels) {
  auto made = firstread::testing::make_instances(kCtSmall, dir, 1);
  if (broken_pixels) {
    auto r = run("dcmodify -nb -m '(0028,0010)=4096' -m '(0028,0011)=4096' '" + made[0].first + "'");
    if (r.exit_code != 0) throw std::runtime_error(r.output);
  }
  return made[0].first;
}

}  // namespace

TEST(Pipeline, OrthancForwardsAStudyAndReceivesTheSrInTheSameStudy) {
  OrthancServer pacs(firstread::testing::test_port(0));
  FirstreadService s(pipeline_yaml(pacs.dicom_port()));
  pacs.start();
  s.start();

  const json uploaded = json::parse(pacs.upload(kCtSmall));
  const std::string study_id = uploaded.at("ParentStudy");
  int code = 0;
  pacs.rest("POST", "/modalities/firstread/store", study_id, &code);
  ASSERT_EQ(code, 200) << "Orthanc could not forward the study to firstread";

  ASSERT_TRUE(wait_until([&] { return !query1(s, "SELECT sr_sop_instance_uid FROM api.reports").empty(); }, 180))
      << s.log();
  const std::string sr_uid = query1(s, "SELECT sr_sop_instance_uid FROM api.reports");
  const std::string sr_path = s.storage() + "/" + query1(s, "SELECT sr_file_path FROM api.reports");
  expect_valid_sr(sr_path);
  EXPECT_EQ(query1(s, "SELECT state FROM api.studies"), "reported");
  EXPECT_NE(query1(s, "SELECT latency_ms FROM api.reports"), "");

  ASSERT_TRUE(wait_until([&] { return query1(s, "SELECT state FROM api.exports") == "sent"; }, 60))
      << query1(s, "SELECT last_error FROM api.exports") << "\n" << s.log();

  // Orthanc lists the SR in the same study, and it points at the CT image.
  const json instances = json::parse(pacs.rest("GET", "/studies/" + study_id + "/instances"));
  std::string sr_orthanc_id;
  for (const auto& i : instances)
    if (i.at("MainDicomTags").value("SOPInstanceUID", "") == sr_uid) sr_orthanc_id = i.at("ID");
  ASSERT_FALSE(sr_orthanc_id.empty()) << "the SR is not in the study in Orthanc: " << instances.dump(2);
  const json series = json::parse(pacs.rest("GET", "/instances/" + sr_orthanc_id + "/series"));
  EXPECT_EQ(series.at("MainDicomTags").value("Modality", ""), "SR");
  const std::string ct_uid = uploaded.contains("ID")
                                 ? json::parse(pacs.rest("GET", "/instances/" + std::string(uploaded.at("ID")) +
                                                                    "/simplified-tags"))
                                       .value("SOPInstanceUID", "")
                                 : "";
  ASSERT_FALSE(ct_uid.empty());
  auto dump = run("dsrdump +Pu '" + sr_path + "'");
  EXPECT_NE(dump.output.find(ct_uid), std::string::npos) << "the SR does not reference the CT image:\n" << dump.output;
}

TEST(Pipeline, ExportWaitsForTheDownPacsAndABrokenStudyDiesWithItsReason) {
  OrthancServer pacs(firstread::testing::test_port(0));
  FirstreadService s(pipeline_yaml(pacs.dicom_port()));
  s.start();  // the PACS is down
  const std::string port = std::to_string(s.port());
  const std::string good = make_study(s.dir() + "/good", false);
  const std::string broken = make_study(s.dir() + "/broken", true);
  ASSERT_EQ(run("storescu -aec FIRSTREAD 127.0.0.1 " + port + " '" + broken + "'").exit_code, 0);
  ASSERT_EQ(run("storescu -aec FIRSTREAD 127.0.0.1 " + port + " '" + good + "'").exit_code, 0);

  ASSERT_TRUE(wait_until([&] { return query1(s, "SELECT count(*) FROM api.reports") == "1"; }, 180)) << s.log();
  ASSERT_TRUE(wait_until([&] { return query1(s, "SELECT state FROM api.jobs WHERE state = 'dead'") == "dead"; }, 120))
      << s.log();
  const std::string error = query1(s, "SELECT error FROM api.jobs WHERE state = 'dead'");
  EXPECT_NE(error.find("ixel"), std::string::npos) << "the reason should name the pixel data: " << error;
  EXPECT_EQ(query1(s, "SELECT attempts FROM api.jobs WHERE state = 'dead'"), "2");
  EXPECT_EQ(query1(s, "SELECT count(*) FROM api.studies WHERE state = 'failed'"), "1");

  // The export waits (pending, with its error) while the PACS is down...
  ASSERT_TRUE(wait_until([&] { return query1(s, "SELECT attempts FROM api.exports") >= "2"; }, 60));
  EXPECT_EQ(query1(s, "SELECT state FROM api.exports"), "pending");
  EXPECT_NE(query1(s, "SELECT last_error FROM api.exports"), "");
  // ...and is delivered when the PACS is back.
  pacs.start();
  ASSERT_TRUE(wait_until([&] { return query1(s, "SELECT state FROM api.exports") == "sent"; }, 90))
      << query1(s, "SELECT last_error FROM api.exports");
  const json found = json::parse(pacs.rest("POST", "/tools/find",
                                           R"({"Level":"Instance","Query":{"SOPInstanceUID":")" +
                                               query1(s, "SELECT sr_sop_instance_uid FROM api.reports") + R"("}})"));
  EXPECT_EQ(found.size(), 1u);
  EXPECT_TRUE(s.echo());
}

TEST(Pipeline, KillDashNineDuringInferenceGivesExactlyOneReport) {
  OrthancServer pacs(firstread::testing::test_port(0));
  // A short lease so that the restarted service takes the job again quickly,
  // and many tokens so that the kill lands while the model runs.
  FirstreadService s(pipeline_yaml(pacs.dicom_port(), 5, 1500));
  s.start();
  const std::string study = make_study(s.dir() + "/study", false);
  ASSERT_EQ(run("storescu -aec FIRSTREAD 127.0.0.1 " + std::to_string(s.port()) + " '" + study + "'").exit_code, 0);
  ASSERT_TRUE(wait_until([&] { return query1(s, "SELECT state FROM api.jobs") == "running"; }, 60)) << s.log();
  s.kill9();
  EXPECT_EQ(query1(s, "SELECT count(*) FROM api.reports"), "0") << "the kill came after the report";
  s.start();
  ASSERT_TRUE(wait_until([&] { return query1(s, "SELECT count(*) FROM api.reports") == "1"; }, 240)) << s.log();
  std::this_thread::sleep_for(std::chrono::seconds(2));
  EXPECT_EQ(query1(s, "SELECT count(*) FROM api.reports"), "1");
  EXPECT_EQ(query1(s, "SELECT state FROM api.jobs"), "done");
  EXPECT_EQ(query1(s, "SELECT attempts FROM api.jobs"), "2");
}

TEST(Pipeline, ReprocessGivesANewSrThatSupersedesTheFirst) {
  OrthancServer pacs(firstread::testing::test_port(0));
  FirstreadService s(pipeline_yaml(pacs.dicom_port()));
  s.start();
  const std::string study_file = make_study(s.dir() + "/study", false);
  ASSERT_EQ(run("storescu -aec FIRSTREAD 127.0.0.1 " + std::to_string(s.port()) + " '" + study_file + "'").exit_code, 0);
  ASSERT_TRUE(wait_until([&] { return query1(s, "SELECT count(*) FROM api.reports") == "1"; }, 180)) << s.log();
  const std::string study = query1(s, "SELECT study_uid FROM api.studies");
  const std::string first_sr = query1(s, "SELECT sr_sop_instance_uid FROM api.reports");

  auto results = s.cli("results --json --study " + study);
  ASSERT_EQ(results.exit_code, 0) << results.output;
  const json parsed = json::parse(results.output.substr(results.output.find('[')));
  ASSERT_EQ(parsed.size(), 1u);
  EXPECT_EQ(parsed[0].at("sr_sop_instance_uid"), first_sr);
  EXPECT_TRUE(parsed[0].at("findings").is_array());
  for (const auto& f : parsed[0].at("findings"))
    for (const char* k : {"label", "sop_instance_uid", "x1", "y1", "x2", "y2"}) EXPECT_TRUE(f.contains(k)) << f.dump();
  EXPECT_EQ(parsed[0].at("exports").size(), 1u);
  // One read model: HTTP /report answers the same JSON as the CLI.
  const auto http_report = run("curl -s http://127.0.0.1:" + std::to_string(firstread::testing::test_port(2)) +
                               "/api/v1/studies/" + study + "/report");
  ASSERT_EQ(http_report.exit_code, 0) << http_report.output;
  // (The export may be retried between the two reads: its state and attempts move.)
  json from_http = json::parse(http_report.output), from_cli = parsed[0];
  ASSERT_EQ(from_http.at("exports").size(), from_cli.at("exports").size());
  for (size_t i = 0; i < from_cli.at("exports").size(); ++i)
    EXPECT_EQ(from_http["exports"][i].at("destination"), from_cli["exports"][i].at("destination"));
  from_http.erase("exports");
  from_cli.erase("exports");
  EXPECT_EQ(from_http, from_cli);

  auto bad = s.cli("reprocess 1.2.3.999");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.output.find("no study 1.2.3.999"), std::string::npos) << bad.output;
  ASSERT_EQ(s.cli("reprocess " + study).exit_code, 0);
  ASSERT_TRUE(wait_until([&] { return query1(s, "SELECT count(*) FROM api.reports") == "2"; }, 180)) << s.log();
  EXPECT_EQ(query1(s, "SELECT supersedes_report_id FROM api.reports ORDER BY report_id DESC LIMIT 1"),
            query1(s, "SELECT min(report_id) FROM api.reports"));
  const std::string second_path =
      s.storage() + "/" + query1(s, "SELECT sr_file_path FROM api.reports ORDER BY report_id DESC LIMIT 1");
  expect_valid_sr(second_path);
  auto dump = run("dcmdump +P 0040,a360 +P 0008,1155 '" + second_path + "'");
  EXPECT_NE(dump.output.find(first_sr), std::string::npos)
      << "the new SR must list the first one in Predecessor Documents Sequence:\n" << dump.output;
  EXPECT_EQ(query1(s, "SELECT state FROM api.studies"), "reported");
}
