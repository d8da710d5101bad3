// End to end with Orthanc as the PACS: a study forwarded by Orthanc to
// firstread comes back as an SR in the same study. Plus the faults users
// expect to survive: PACS down, broken pixel data, kill -9 during inference.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>
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

// The harness's polling and one-value query (tests/service_harness.h).
using firstread::testing::query_value;
using firstread::testing::wait_until;

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

  ASSERT_TRUE(wait_until([&] { return !query_value(s, "SELECT sr_sop_instance_uid FROM api.reports").empty(); }, 180))
      << s.log();
  const std::string sr_uid = query_value(s, "SELECT sr_sop_instance_uid FROM api.reports");
  const std::string sr_path = s.storage() + "/" + query_value(s, "SELECT sr_file_path FROM api.reports");
  expect_valid_sr(sr_path);
  EXPECT_EQ(query_value(s, "SELECT state FROM api.studies"), "reported");
  EXPECT_NE(query_value(s, "SELECT latency_ms FROM api.reports"), "");

  // The SR and the GSPS (export.destinations[].objects defaults to [sr, gsps]).
  ASSERT_TRUE(wait_until([&] { return query_value(s, "SELECT string_agg(object || ':' || state, ',' ORDER BY object)"
                                                " FROM api.exports") == "gsps:sent,sr:sent"; }, 60))
      << query_value(s, "SELECT string_agg(last_error, '; ') FROM api.exports") << "\n" << s.log();

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

  ASSERT_TRUE(wait_until([&] { return query_value(s, "SELECT count(*) FROM api.reports") == "1"; }, 180)) << s.log();
  ASSERT_TRUE(wait_until([&] { return query_value(s, "SELECT state FROM api.jobs WHERE state = 'dead'") == "dead"; }, 120))
      << s.log();
  const std::string error = query_value(s, "SELECT error FROM api.jobs WHERE state = 'dead'");
  EXPECT_NE(error.find("ixel"), std::string::npos) << "the reason should name the pixel data: " << error;
  EXPECT_EQ(query_value(s, "SELECT attempts FROM api.jobs WHERE state = 'dead'"), "2");
  EXPECT_EQ(query_value(s, "SELECT count(*) FROM api.studies WHERE state = 'failed'"), "1");

  // The exports (SR and GSPS) wait (pending, with their error) while the PACS is down...
  ASSERT_TRUE(wait_until([&] { return query_value(s, "SELECT min(attempts) >= 2 FROM api.exports") == "t"; }, 60));
  EXPECT_EQ(query_value(s, "SELECT string_agg(DISTINCT state, ',') FROM api.exports"), "pending");
  EXPECT_EQ(query_value(s, "SELECT count(*) FROM api.exports WHERE last_error IS NOT NULL"), "2");
  // ...and are delivered when the PACS is back.
  pacs.start();
  ASSERT_TRUE(wait_until([&] { return query_value(s, "SELECT string_agg(DISTINCT state, ',') FROM api.exports") == "sent"; }, 90))
      << query_value(s, "SELECT string_agg(last_error, '; ') FROM api.exports");
  const json found = json::parse(pacs.rest("POST", "/tools/find",
                                           R"({"Level":"Instance","Query":{"SOPInstanceUID":")" +
                                               query_value(s, "SELECT sr_sop_instance_uid FROM api.reports") + R"("}})"));
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
  ASSERT_TRUE(wait_until([&] { return query_value(s, "SELECT state FROM api.jobs") == "running"; }, 60)) << s.log();
  s.kill9();
  EXPECT_EQ(query_value(s, "SELECT count(*) FROM api.reports"), "0") << "the kill came after the report";
  s.start();
  ASSERT_TRUE(wait_until([&] { return query_value(s, "SELECT count(*) FROM api.reports") == "1"; }, 240)) << s.log();
  std::this_thread::sleep_for(std::chrono::seconds(2));
  EXPECT_EQ(query_value(s, "SELECT count(*) FROM api.reports"), "1");
  EXPECT_EQ(query_value(s, "SELECT state FROM api.jobs"), "done");
  EXPECT_EQ(query_value(s, "SELECT attempts FROM api.jobs"), "2");
}

TEST(Pipeline, ReprocessGivesANewSrThatSupersedesTheFirst) {
  OrthancServer pacs(firstread::testing::test_port(0));
  FirstreadService s(pipeline_yaml(pacs.dicom_port()));
  s.start();
  const std::string study_file = make_study(s.dir() + "/study", false);
  ASSERT_EQ(run("storescu -aec FIRSTREAD 127.0.0.1 " + std::to_string(s.port()) + " '" + study_file + "'").exit_code, 0);
  ASSERT_TRUE(wait_until([&] { return query_value(s, "SELECT count(*) FROM api.reports") == "1"; }, 180)) << s.log();
  const std::string study = query_value(s, "SELECT study_uid FROM api.studies");
  const std::string first_sr = query_value(s, "SELECT sr_sop_instance_uid FROM api.reports");

  auto results = s.cli("results --json --study " + study);
  ASSERT_EQ(results.exit_code, 0) << results.output;
  const json parsed = json::parse(results.output.substr(results.output.find('[')));
  ASSERT_EQ(parsed.size(), 1u);
  EXPECT_EQ(parsed[0].at("sr_sop_instance_uid"), first_sr);
  EXPECT_TRUE(parsed[0].at("findings").is_array());
  for (const auto& f : parsed[0].at("findings"))
    for (const char* k : {"label", "sop_instance_uid", "x1", "y1", "x2", "y2"}) EXPECT_TRUE(f.contains(k)) << f.dump();
  EXPECT_EQ(parsed[0].at("exports").size(), 2u);  // the SR and the GSPS
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
  ASSERT_TRUE(wait_until([&] { return query_value(s, "SELECT count(*) FROM api.reports") == "2"; }, 180)) << s.log();
  EXPECT_EQ(query_value(s, "SELECT supersedes_report_id FROM api.reports ORDER BY report_id DESC LIMIT 1"),
            query_value(s, "SELECT min(report_id) FROM api.reports"));
  const std::string second_path =
      s.storage() + "/" + query_value(s, "SELECT sr_file_path FROM api.reports ORDER BY report_id DESC LIMIT 1");
  expect_valid_sr(second_path);
  auto dump = run("dcmdump +P 0040,a360 +P 0008,1155 '" + second_path + "'");
  EXPECT_NE(dump.output.find(first_sr), std::string::npos)
      << "the new SR must list the first one in Predecessor Documents Sequence:\n" << dump.output;
  EXPECT_EQ(query_value(s, "SELECT state FROM api.studies"), "reported");
}

namespace {

// The shipped demo model on its own synthetic phantoms (tools/demo_model/make_dicom.py,
// held-out seeds): a grey chest radiograph and a colour endoscopy image.
std::string demo_yaml(int orthanc_dicom_port) {
  const std::string model = std::string(FIRSTREAD_SOURCE_DIR) + "/models/demo";
  return "models:\n  demo: {path: " + model + ", threads: 2, box_scale: 999}\n"
         "routes:\n"
         "  - {name: chest, match: {modality: [CR, DX]}, model: demo, max_new_tokens: 96,"
         " prompt: \"Please locate and describe the findings in this chest x-ray.\"}\n"
         "  - {name: endo, match: {modality: [ES]}, model: demo, max_new_tokens: 96,"
         " prompt: \"Please locate and describe the findings in this endoscopy image.\"}\n"
         "worklist: {stable_seconds: 1, poll_seconds: 0.2, lease_seconds: 30, retry_backoff_seconds: 1, max_attempts: 2}\n"
         "export:\n  retry_backoff_seconds: 1\n  max_attempts: 100\n  destinations:\n"
         "    - {name: pacs, ae_title: ORTHANC, host: 127.0.0.1, port: " +
         std::to_string(orthanc_dicom_port) + ", objects: [sr, gsps, key_image]}\n";
}

std::vector<std::vector<std::string>> query_rows(const FirstreadService& s, const std::string& sql) {
  std::vector<std::vector<std::string>> rows;
  auto c = s.connect();
  pqxx::work t(c);
  for (const auto& r : t.exec(sql)) {
    std::vector<std::string> row;
    for (const auto& field : r) row.push_back(field.is_null() ? "" : field.c_str());
    rows.push_back(row);
  }
  return rows;
}

void expect_dciodvfy_clean(const std::string& path) {
  auto v = run("dciodvfy '" + path + "'");
  std::istringstream lines(v.output);
  for (std::string line; std::getline(lines, line);)
    EXPECT_NE(line.rfind("Error", 0), 0u) << "dciodvfy " << path << ": " << line;
}

// The study in Orthanc that holds the instance, or "" when Orthanc lacks it.
std::string orthanc_study_of(OrthancServer& pacs, const std::string& sop_uid) {
  const json found = json::parse(pacs.rest("POST", "/tools/find",
                                           R"({"Level":"Instance","Query":{"SOPInstanceUID":")" + sop_uid + R"("}})"));
  if (found.size() != 1) return "";
  const json study = json::parse(pacs.rest("GET", "/instances/" + std::string(found[0]) + "/study"));
  return study.at("MainDicomTags").value("StudyInstanceUID", "");
}

}  // namespace

TEST(Pipeline, ReportReachesThePacsAsSrPresentationStatesAndKeyImagesAndAReprocessSupersedesThem) {
  OrthancServer pacs(firstread::testing::test_port(0));
  FirstreadService s(demo_yaml(pacs.dicom_port()));
  pacs.start();
  s.start();
  const std::string phantoms = s.dir() + "/phantoms";
  auto made = run("/usr/bin/python3 '" + std::string(FIRSTREAD_SOURCE_DIR) + "/tools/demo_model/make_dicom.py' '" +
                  phantoms + "' --per-modality 4");
  ASSERT_EQ(made.exit_code, 0) << made.output;
  const std::string port = std::to_string(s.port());
  for (const char* file : {"chest/003.dcm", "endo/000.dcm"})
    ASSERT_EQ(run("storescu -aec FIRSTREAD 127.0.0.1 " + port + " '" + phantoms + "/" + file + "'").exit_code, 0);

  // Per report: the SR, one presentation state (one source series) and one key image, each sent.
  ASSERT_TRUE(wait_until([&] { return query_value(s, "SELECT count(*) FROM api.reports") == "2"; }, 240)) << s.log();
  ASSERT_TRUE(wait_until([&] { return query_value(s, "SELECT count(*) FROM api.exports WHERE state = 'sent'") == "6"; }, 120))
      << query_value(s, "SELECT string_agg(last_error, '; ') FROM api.exports") << "\n" << s.log();
  EXPECT_NE(query_value(s, "SELECT count(*) FROM api.findings f JOIN api.reports r USING (report_id)"
                      " JOIN api.jobs j USING (job_id) WHERE j.route = 'endo'"),
            "0")
      << "the demo model finds the polyp on its endoscopy phantom";

  const auto objects = query_rows(s, "SELECT o.report_id, o.kind, o.sop_instance_uid, o.series_instance_uid,"
                                     " o.instance_number, o.file_path, r.study_uid FROM api.report_objects o"
                                     " JOIN api.reports r USING (report_id) ORDER BY o.report_id, o.kind");
  ASSERT_EQ(objects.size(), 4u);
  std::map<std::string, std::string> chest_series;  // kind -> series, for the re-run
  std::string chest_study;
  for (const auto& o : objects) {
    const std::string& report_id = o[0], kind = o[1], sop = o[2], path = s.storage() + "/" + o[5], study = o[6];
    SCOPED_TRACE(kind + " " + path);
    expect_dciodvfy_clean(path);
    EXPECT_EQ(orthanc_study_of(pacs, sop), study) << "Orthanc lacks it, or has it outside the source study";
    if (kind == "key_image") continue;
    // The presentation state's boxes are api.findings of its report, in source pixels.
    const auto reader = run("/usr/bin/python3 '" + std::string(FIRSTREAD_SOURCE_DIR) + "/tools/sr_check/read_ps.py' '" +
                            path + "'");
    ASSERT_EQ(reader.exit_code, 0) << reader.output;
    const json ps = json::parse(reader.output);
    std::multiset<std::vector<double>> drawn, found;
    for (const auto& a : ps["annotations"])
      for (const auto& g : a["graphics"]) {
        EXPECT_EQ(g["type"], "POLYLINE");
        EXPECT_EQ(g["points"][0], g["points"][4]) << "closed";
        drawn.insert(std::vector<double>{g["points"][0][0].get<double>(), g["points"][0][1].get<double>(),
                                         g["points"][2][0].get<double>(), g["points"][2][1].get<double>()});
      }
    for (const auto& f : query_rows(s, "SELECT x1, y1, x2, y2 FROM api.findings WHERE report_id = " + report_id))
      found.insert(std::vector<double>{std::stod(f[0]), std::stod(f[1]), std::stod(f[2]), std::stod(f[3])});
    ASSERT_EQ(drawn.size(), found.size());
    auto d = drawn.begin();
    for (auto f = found.begin(); f != found.end(); ++f, ++d)
      for (int k = 0; k < 4; ++k) EXPECT_NEAR((*d)[k], (*f)[k], 1e-3);  // Graphic Data is 32-bit float
    EXPECT_EQ(ps["content_label"], "FIRSTREAD_AI");
    if (kind == "gsps") {
      EXPECT_EQ(ps["sop_class_uid"], "1.2.840.10008.5.1.4.1.1.11.1");
      EXPECT_EQ(ps["voi"].size(), 1u) << "the window the model saw";
      chest_study = study;
    } else {
      EXPECT_EQ(kind, "csps");
      EXPECT_EQ(ps["sop_class_uid"], "1.2.840.10008.5.1.4.1.1.11.2");
      EXPECT_GT(ps["icc_profile_bytes"].get<int>(), 0);
    }
  }
  for (const auto& o : objects)
    if (o[6] == chest_study) chest_series[o[1]] = o[3];
  ASSERT_EQ(chest_series.size(), 2u);
  const std::string old_ps_path = s.storage() + "/" +
      query_value(s, "SELECT file_path FROM api.report_objects WHERE kind = 'gsps'");
  const json old_ps = json::parse(run("/usr/bin/python3 '" + std::string(FIRSTREAD_SOURCE_DIR) +
                                      "/tools/sr_check/read_ps.py' '" + old_ps_path + "'").output);

  // A reprocess: new objects in the same series, next instance, later creation; sent too.
  ASSERT_EQ(s.cli("reprocess " + chest_study).exit_code, 0);
  ASSERT_TRUE(wait_until([&] { return query_value(s, "SELECT count(*) FROM api.reports") == "3"; }, 240)) << s.log();
  ASSERT_TRUE(wait_until([&] { return query_value(s, "SELECT count(*) FROM api.exports WHERE state = 'sent'") == "9"; }, 120))
      << s.log();
  const auto newer = query_rows(s, "SELECT kind, series_instance_uid, instance_number, file_path, sop_instance_uid"
                                   " FROM api.report_objects WHERE report_id = (SELECT max(report_id) FROM api.reports)"
                                   " ORDER BY kind");
  ASSERT_EQ(newer.size(), 2u);
  for (const auto& o : newer) {
    SCOPED_TRACE(o[0]);
    EXPECT_EQ(o[1], chest_series[o[0]]) << "a re-run's object goes into the superseded one's series";
    EXPECT_EQ(o[2], "2");
    EXPECT_EQ(orthanc_study_of(pacs, o[4]), chest_study);
  }
  const json new_ps = json::parse(run("/usr/bin/python3 '" + std::string(FIRSTREAD_SOURCE_DIR) +
                                      "/tools/sr_check/read_ps.py' '" + s.storage() + "/" +
                                      (newer[0][0] == "gsps" ? newer[0][3] : newer[1][3]) + "'").output);
  EXPECT_GT(new_ps["creation"].get<std::string>(), old_ps["creation"].get<std::string>());
  EXPECT_EQ(new_ps["series_instance_uid"], old_ps["series_instance_uid"]);

  // FIRSTREAD_KEEP_SR_FILES=DIR keeps the chest phantom with its objects (the README's renderings).
  if (const char* keep = std::getenv("FIRSTREAD_KEEP_SR_FILES"); keep != nullptr && keep[0] == '/') {
    fs::create_directories(keep);
    fs::copy_file(phantoms + "/chest/003.dcm", std::string(keep) + "/chest.dcm", fs::copy_options::overwrite_existing);
    for (const auto& o : objects)
      if (o[6] == chest_study)
        fs::copy_file(s.storage() + "/" + o[5], std::string(keep) + "/chest_" + o[1] + ".dcm",
                      fs::copy_options::overwrite_existing);
    for (const auto& o : objects)
      if (o[6] != chest_study)
        fs::copy_file(s.storage() + "/" + o[5], std::string(keep) + "/endo_" + o[1] + ".dcm",
                      fs::copy_options::overwrite_existing);
    fs::copy_file(phantoms + "/endo/000.dcm", std::string(keep) + "/endo.dcm", fs::copy_options::overwrite_existing);
  }
}
