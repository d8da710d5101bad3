// GSCo end to end (issue 15), with the real binary, PostgreSQL, the demo
// generalist and a random specialist in the Hugging Face layout
// (tools/reference/vit_classifier_ref.py): `firstread cases import`, a study
// whose prompt carries the specialist's and the retrieved cases' diagnoses,
// the finding's confidence from the specialist (api.findings, the SR), the
// specialist's own group in the SR (dciodvfy, dsrdump), confirmations over the
// CLI and HTTP (the same one twice changes nothing, a corrected one replaces
// the image's case), a second node that rebuilds the index from the database
// and sees the same neighbours, and the refusals that must write nothing.
#include <gtest/gtest.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <sstream>
#include <thread>

#include "engine/common.h"
#include "engine/test_fixtures.h"
#include "tests/service_harness.h"

using firstread::testing::FirstreadService;
using firstread::testing::query_value;
using firstread::testing::run;
using firstread::testing::wait_until;
using json = nlohmann::json;

namespace {

std::string query1(const FirstreadService& s, const std::string& sql) { return query_value(s, sql); }

std::string specialist_dir() {
  return firstread::engine::testing_support::vit_classifier_fixture(
      "gsco_endo", "--hidden 64 --layers 2 --heads 4 --intermediate 128 --image 64 --patch 16 --problem multi "
                   "--labels polyp,bleeding,ulcer --seed 11");
}

std::string gsco_yaml(const std::string& specialist) {
  const std::string model = std::string(FIRSTREAD_SOURCE_DIR) + "/models/demo";
  return "models:\n  demo: {path: " + model + ", threads: 2, box_scale: 999}\n"
         "specialists:\n  endo-vit: {path: " + specialist + ", threads: 1, threshold: 0.3}\n"
         // Two routes on the same studies: GSCo in the prompt, and the demo generalist's own prompt
         // (it was trained without GSCo's sentences) with the specialist giving its findings' confidence.
         "routes:\n"
         "  - {name: endo-gsco, match: {modality: [ES]}, model: demo, max_new_tokens: 96,"
         " prompt: \"Please locate and describe the findings in this endoscopy image.\","
         " specialists: [endo-vit], gsco: both, retrieval_k: 3}\n"
         "  - {name: endo-plain, match: {modality: [ES]}, model: demo, max_new_tokens: 96,"
         " prompt: \"Please locate and describe the findings in this endoscopy image.\","
         " specialists: [endo-vit], gsco: off}\n"
         "worklist: {stable_seconds: 1, poll_seconds: 0.2, lease_seconds: 30, retry_backoff_seconds: 1, max_attempts: 2}\n";
}

// The expected {moed} of one result: labels with p >= 0.3, highest first, 2 decimals.
std::string expected_moed(const json& probabilities) {
  std::vector<std::pair<double, std::string>> pos;
  for (const auto& [label, p] : probabilities.items())
    if (p.get<double>() >= 0.3) pos.push_back({-p.get<double>(), label});
  std::sort(pos.begin(), pos.end());
  std::string out;
  char buf[32];
  for (const auto& [negp, label] : pos) {
    std::snprintf(buf, sizeof buf, "%.2f", -negp);
    out += (out.empty() ? "" : ", ") + label + " (" + buf + ")";
  }
  return out.empty() ? "none" : out;
}

json latest_report(const FirstreadService& s, const std::string& route) {
  return json::parse(query1(s, "SELECT to_jsonb(r)::text FROM api.reports r WHERE route = '" + route +
                                   "' ORDER BY report_id DESC LIMIT 1"));
}

void expect_valid_sr(const std::string& path, std::string* dump_out) {
  auto v = run("dciodvfy '" + path + "' 2>&1");
  std::istringstream lines(v.output);
  for (std::string line; std::getline(lines, line);) EXPECT_NE(line.rfind("Error", 0), 0u) << "dciodvfy: " << line;
  auto dump = run("dsrdump +Pc '" + path + "'");
  EXPECT_EQ(dump.exit_code, 0) << dump.output;
  EXPECT_EQ(dump.output.find("\nE: "), std::string::npos) << dump.output;
  *dump_out = dump.output;
}

std::string http_post(int port, const std::string& path, const std::string& body) {
  const std::string body_file = "/tmp/gsco_body_" + std::to_string(port);
  std::ofstream(body_file) << body;
  std::string out = run("curl -s -o - -w ' HTTP%{http_code}' -X POST -H 'Content-Type: application/json' --data-binary @" +
                        body_file + " http://127.0.0.1:" + std::to_string(port) + path)
                        .output;
  std::remove(body_file.c_str());
  return out;
}

}  // namespace

TEST(Gsco, ImportPromptConfidenceSrConfirmAndASecondNode) {
  const std::string specialist = specialist_dir();
  FirstreadService s(gsco_yaml(specialist));
  s.start();
  const std::string phantoms = s.dir() + "/phantoms";
  auto made = run("/usr/bin/python3 '" + std::string(FIRSTREAD_SOURCE_DIR) + "/tools/demo_model/make_dicom.py' '" +
                  phantoms + "' --per-modality 4");
  ASSERT_EQ(made.exit_code, 0) << made.output;

  // --- bad input first: each refusal names what was wrong and writes nothing
  std::ofstream(phantoms + "/bad.csv") << "file,labels\nendo/001.dcm,polyp\nendo/404.dcm,normal\nnot-there.png,normal\n";
  auto bad = s.cli("cases import '" + phantoms + "' --labels '" + phantoms + "/bad.csv' --specialist endo-vit");
  EXPECT_EQ(bad.exit_code, 1) << bad.output;
  EXPECT_NE(bad.output.find("endo/404.dcm (line 3)"), std::string::npos) << bad.output;
  EXPECT_NE(bad.output.find("not-there.png (line 4)"), std::string::npos) << bad.output;
  std::ofstream(phantoms + "/nolabel.csv") << "endo/001.dcm,polyp\nendo/002.dcm,\n";
  bad = s.cli("cases import '" + phantoms + "' --labels '" + phantoms + "/nolabel.csv' --specialist endo-vit");
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.output.find("nolabel.csv:2"), std::string::npos) << bad.output;
  bad = s.cli("cases import '" + phantoms + "' --labels '" + phantoms + "/nolabel.csv' --specialist nobody");
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.output.find("no specialist named 'nobody'"), std::string::npos) << bad.output;
  EXPECT_EQ(query1(s, "SELECT count(*) FROM api.cases"), "0");

  // --- import: three endoscopy phantoms (one JPEG-compressed) and a chest one
  std::ofstream(phantoms + "/labels.csv") << "file,labels\nendo/001.dcm,polyp\nendo/002.dcm,polyp;bleeding\n"
                                             "endo/003.dcm,normal\nchest/000.dcm,normal\n";
  auto imported = s.cli("cases import '" + phantoms + "' --labels '" + phantoms + "/labels.csv' --specialist endo-vit --json");
  ASSERT_EQ(imported.exit_code, 0) << imported.output;
  EXPECT_EQ(query1(s, "SELECT count(*) FROM api.cases WHERE specialist = 'endo-vit' AND source = 'import'"), "4");
  EXPECT_EQ(query1(s, "SELECT labels::text FROM api.cases WHERE source_ref = 'endo/002.dcm'"), "{polyp,bleeding}");
  // `normal` is not one of the specialist's labels (polyp, bleeding, ulcer): a library label is the radiologist's,
  // and RAD repeats it as it is (the demo's library marks phantoms without findings so).
  EXPECT_EQ(query1(s, "SELECT labels::text FROM api.cases WHERE source_ref = 'endo/003.dcm'"), "{normal}");

  // --- a study through the route: specialist, retrieval, prompt, confidence, SR
  const std::string port = std::to_string(s.port());
  ASSERT_EQ(run("storescu -aec FIRSTREAD 127.0.0.1 " + port + " '" + phantoms + "/endo/000.dcm'").exit_code, 0);
  ASSERT_TRUE(wait_until([&] { return query1(s, "SELECT count(*) FROM api.reports") == "2"; }, 400)) << s.log();
  const json report = latest_report(s, "endo-gsco"), plain = latest_report(s, "endo-plain");
  const json image = report["gsco"]["images"][0];
  EXPECT_EQ(report["gsco"]["mode"], "both");
  EXPECT_EQ(image["retrieved"], 3) << "retrieval_k 3 of 4 cases";
  const json probs = image["specialists"][0]["probabilities"];

  // The specialist's probabilities are what the independent reference computes on the same 8-bit frame.
  const std::string ref_out = s.dir() + "/ref";
  auto ref = run("/usr/bin/python3 '" + std::string(FIRSTREAD_SOURCE_DIR) + "/tools/reference/vit_classifier_ref.py' run '" +
                 specialist + "' '" + phantoms + "/endo/000.dcm' '" + ref_out + "'");
  ASSERT_EQ(ref.exit_code, 0) << ref.output;
  const json ref_json = json::parse(firstread::engine::read_text_file(ref_out + "/reference.json"));
  for (size_t i = 0; i < ref_json["labels"].size(); ++i)
    EXPECT_NEAR(probs[ref_json["labels"][i].get<std::string>()].get<double>(), ref_json["probs"][i].get<double>(), 1e-4);

  // The prompt: the route's, then GSCo's sentences with {rad} and {moed} filled.
  const std::string prompt = report["prompt"];
  EXPECT_EQ(prompt.rfind("Please locate and describe the findings in this endoscopy image. "
                         "The diagnoses of the most similar cases are ", 0),
            0u)
      << prompt;
  EXPECT_NE(prompt.find(". The diagnoses of the specialist models are " + expected_moed(probs) + "."), std::string::npos)
      << prompt;
  EXPECT_NE(prompt.find("/3)"), std::string::npos) << "counts over the 3 neighbours: " << prompt;

  EXPECT_EQ(plain["prompt"], "Please locate and describe the findings in this endoscopy image.");
  EXPECT_EQ(plain["gsco"]["images"][0]["specialists"][0]["probabilities"], probs) << "same frame, same specialist";
  EXPECT_EQ(plain["gsco"]["images"][0]["retrieved"], 0) << "gsco off: no retrieval";

  // A finding whose label the specialist scored carries its probability (api.findings 0..1, the SR in percent).
  const std::string polyp_conf =
      query1(s, "SELECT confidence FROM api.findings WHERE report_id = " + std::to_string(plain["report_id"].get<int>()) +
                    " AND lower(label) = 'polyp' LIMIT 1");
  ASSERT_FALSE(polyp_conf.empty()) << "the demo model finds the polyp on this phantom; findings: "
                                   << query1(s, "SELECT string_agg(label || '=' || coalesce(confidence::text, 'null'), ', ') FROM api.findings");
  EXPECT_NEAR(std::stod(polyp_conf), probs["polyp"].get<double>(), 1e-5);
  // The SRs: the specialist as its group's device observer, its probabilities and (GSCo) the retrieved count.
  std::string dump;
  expect_valid_sr(s.storage() + "/" + report["sr_file_path"].get<std::string>(), &dump);
  EXPECT_NE(dump.find("\"firstread specialist endo-vit\""), std::string::npos) << dump;
  EXPECT_NE(dump.find("(GSCO-RAD-N,99FIRSTREAD,\"Similar confirmed cases retrieved\")=\"3\""), std::string::npos) << dump;
  EXPECT_NE(dump.find("(121013,DCM,\"Device Observer Name\")=\"endo-vit\""), std::string::npos) << dump;
  expect_valid_sr(s.storage() + "/" + plain["sr_file_path"].get<std::string>(), &dump);
  EXPECT_EQ(dump.find("Similar confirmed cases retrieved"), std::string::npos) << "no retrieval on the plain route";
  const std::string certainty = "(111012,DCM,\"Certainty of Finding\")=\"";
  const size_t at = dump.find(certainty);
  ASSERT_NE(at, std::string::npos) << dump;
  EXPECT_NEAR(std::stod(dump.substr(at + certainty.size(), 20)), probs["polyp"].get<double>() * 100, 1e-3)
      << dump.substr(at, 80);

  // --- confirmations: bad ones write nothing; a good one adds the study's image
  const std::string report_id = std::to_string(report["report_id"].get<int>());
  auto c = s.cli("confirm 999999 polyp");
  EXPECT_EQ(c.exit_code, 1);
  EXPECT_NE(c.output.find("unknown report 999999"), std::string::npos) << c.output;
  c = s.cli("confirm " + report_id + " 'bad;label'");
  EXPECT_EQ(c.exit_code, 1);
  EXPECT_NE(c.output.find("bad;label"), std::string::npos) << c.output;
  const int http_port = firstread::testing::test_port(2);
  std::string answer = http_post(http_port, "/api/v1/reports/999999/confirm", R"({"labels": ["polyp"]})");
  EXPECT_NE(answer.find("HTTP404"), std::string::npos) << answer;
  answer = http_post(http_port, "/api/v1/reports/" + report_id + "/confirm", R"({"labels": []})");
  EXPECT_NE(answer.find("HTTP400"), std::string::npos) << answer;
  answer = http_post(http_port, "/api/v1/reports/" + report_id + "/confirm", "not json");
  EXPECT_NE(answer.find("HTTP400"), std::string::npos) << answer;
  EXPECT_EQ(query1(s, "SELECT count(*) FROM api.cases"), "4");
  answer = http_post(http_port, "/api/v1/reports/" + report_id + "/confirm", R"({"labels": ["polyp"]})");
  ASSERT_NE(answer.find("HTTP200"), std::string::npos) << answer;
  EXPECT_EQ(query1(s, "SELECT count(*) FROM api.cases WHERE source = 'confirmed' AND report_id = " + report_id), "1");
  const std::string study_sop = query1(s, "SELECT source_ref FROM api.cases WHERE source = 'confirmed'");
  EXPECT_EQ(study_sop, query1(s, "SELECT sop_instance_uid FROM api.instances LIMIT 1"));
  const std::string first_case = query1(s, "SELECT case_id FROM api.cases WHERE source = 'confirmed'");
  // The same confirmation again (a second click, a retried request): nothing changes.
  answer = http_post(http_port, "/api/v1/reports/" + report_id + "/confirm", R"({"labels": ["polyp", "polyp"]})");
  ASSERT_NE(answer.find("HTTP200"), std::string::npos) << answer;
  const json same = json::parse(answer.substr(0, answer.rfind(" HTTP")));
  EXPECT_EQ(same["unchanged_cases"], 1) << answer;
  EXPECT_EQ(same["case_ids"][0].dump(), first_case) << answer;
  EXPECT_EQ(query1(s, "SELECT count(*) FROM api.cases"), "5");
  // A correction: the radiologist confirms other labels; the image's case is replaced, not added twice.
  c = s.cli("confirm " + report_id + " polyp bleeding");
  ASSERT_EQ(c.exit_code, 0) << c.output;
  EXPECT_NE(c.output.find("1 cases added to the library, replacing 1 confirmed earlier with other labels"),
            std::string::npos)
      << c.output;
  EXPECT_EQ(query1(s, "SELECT count(*) FROM api.cases WHERE source = 'confirmed'"), "1");
  EXPECT_EQ(query1(s, "SELECT labels::text FROM api.cases WHERE source = 'confirmed'"), "{polyp,bleeding}");
  EXPECT_NE(query1(s, "SELECT case_id FROM api.cases WHERE source = 'confirmed'"), first_case);
  c = s.cli("confirm " + report_id + " bleeding polyp --json");
  ASSERT_EQ(c.exit_code, 0) << c.output;
  EXPECT_EQ(json::parse(c.output)["unchanged_cases"], 1) << c.output;

  // --- a second node, started after the cases were added, rebuilds its index from the
  // database: re-running the study there finds the confirmed copy of this very image first
  // (with the corrected labels), then the imported cases the first node found.
  // (The first node comes back without workers, so the second one runs the job.)
  s.terminate();
  std::string config = firstread::engine::read_text_file(s.config_path());
  config.replace(config.find("worklist: {"), 11, "worklist: {workers: 0, ");
  std::ofstream(s.config_path(), std::ios::trunc) << config;
  s.start();
  FirstreadService second(s, 10);
  std::ofstream(second.config_path(), std::ios::app) << gsco_yaml(specialist);
  second.start();
  auto rerun = second.cli("reprocess " + report["study_uid"].get<std::string>());
  ASSERT_EQ(rerun.exit_code, 0) << rerun.output;
  ASSERT_TRUE(wait_until([&] { return query1(second, "SELECT count(*) FROM api.reports") == "4"; }, 400)) << second.log();
  const json again_report = latest_report(second, "endo-gsco");
  const json again = again_report["gsco"]["images"][0];
  ASSERT_EQ(again["neighbours"].size(), 3u);
  EXPECT_NEAR(again["neighbours"][0]["similarity"].get<double>(), 1.0, 1e-4) << again.dump();
  EXPECT_EQ(again["neighbours"][0]["labels"], json::array({"polyp", "bleeding"})) << again.dump();
  EXPECT_LT(again["neighbours"][1]["similarity"].get<double>(), 0.9999) << "one case per image: " << again.dump();
  EXPECT_EQ(again["specialists"][0]["probabilities"], probs) << "same image, same specialist";
  // Then the two imported cases nearest to it, the ones the first node ranked first.
  EXPECT_EQ(again["neighbours"][1]["case_id"], image["neighbours"][0]["case_id"]);
  EXPECT_EQ(again["neighbours"][2]["case_id"], image["neighbours"][1]["case_id"]);
  EXPECT_NE(again["rad"].get<std::string>().find("bleeding ("), std::string::npos) << again["rad"];
  EXPECT_NE(again_report["prompt"].get<std::string>().find(again["rad"].get<std::string>()), std::string::npos);
}

// A user who runs `cases import` on the same directory twice, or on a copy of it,
// gets each image once in the library; a corrected labels.csv replaces the
// image's case; two names for the same file in one labels.csv are refused.
TEST(Gsco, ImportingTheSameDirectoryTwiceAddsEachImageOnce) {
  FirstreadService s(gsco_yaml(specialist_dir()));
  s.start();
  const std::string files = s.dir() + "/files", copy = s.dir() + "/copy";
  auto made = run("mkdir -p '" + files + "' '" + copy + "' && /usr/bin/python3 -c \"from PIL import Image\n"
                  "for i, c in enumerate([(90, 20, 20), (20, 90, 20), (20, 20, 90)]):\n"
                  "    Image.new('RGB', (48, 48), c).save('" + files + "/%d.png' % i)\" && "
                  "cp '" + files + "/0.png' '" + copy + "/a.png' && cp '" + files + "/1.png' '" + copy + "/b.png'");
  ASSERT_EQ(made.exit_code, 0) << made.output;
  std::ofstream(files + "/labels.csv") << "file,labels\n0.png,polyp\n1.png,normal\n2.png,bleeding;ulcer\n";
  const std::string import = "cases import '" + files + "' --labels '" + files + "/labels.csv' --specialist endo-vit --json";
  auto first = s.cli(import);
  ASSERT_EQ(first.exit_code, 0) << first.output;
  const json ids = json::parse(first.output)["case_ids"];
  ASSERT_EQ(ids.size(), 3u) << first.output;

  auto again = s.cli(import);
  ASSERT_EQ(again.exit_code, 0) << again.output;
  EXPECT_EQ(json::parse(again.output)["case_ids"], ids) << again.output;
  EXPECT_EQ(json::parse(again.output)["unchanged_cases"], 3) << again.output;
  EXPECT_EQ(query1(s, "SELECT count(*) FROM api.cases"), "3");
  again = s.cli("cases import '" + files + "' --labels '" + files + "/labels.csv' --specialist endo-vit");
  EXPECT_NE(again.output.find("imported 0 cases for specialist endo-vit; 3 already in the library with these labels"),
            std::string::npos)
      << again.output;

  // A copy of two of the files under other names, one with a corrected label.
  std::ofstream(copy + "/labels.csv") << "a.png,polyp\nb.png,ulcer\n";
  auto corrected = s.cli("cases import '" + copy + "' --labels '" + copy + "/labels.csv' --specialist endo-vit");
  ASSERT_EQ(corrected.exit_code, 0) << corrected.output;
  EXPECT_NE(corrected.output.find("imported 1 cases for specialist endo-vit, replacing 1 imported earlier"), std::string::npos)
      << corrected.output;
  EXPECT_NE(corrected.output.find("; 1 already in the library"), std::string::npos) << corrected.output;
  EXPECT_EQ(query1(s, "SELECT count(*) FROM api.cases"), "3");
  EXPECT_EQ(query1(s, "SELECT string_agg(source_ref || '=' || array_to_string(labels, ';'), ' ' ORDER BY source_ref)"
                      " FROM api.cases"),
            "0.png=polyp 2.png=bleeding;ulcer b.png=ulcer");
  EXPECT_EQ(query1(s, "SELECT count(DISTINCT image_sha256) FROM api.cases"), "3");

  // The same bytes under two names in one labels.csv: refused, naming both lines, nothing written.
  std::ofstream(copy + "/twice.csv") << "a.png,normal\nb.png,normal\nc.png,normal\n";
  ASSERT_EQ(run("cp '" + copy + "/a.png' '" + copy + "/c.png'").exit_code, 0);
  auto twice = s.cli("cases import '" + copy + "' --labels '" + copy + "/twice.csv' --specialist endo-vit");
  EXPECT_EQ(twice.exit_code, 1) << twice.output;
  EXPECT_NE(twice.output.find("a.png (line 1) and c.png (line 3) are the same image"), std::string::npos) << twice.output;
  EXPECT_EQ(query1(s, "SELECT string_agg(source_ref || '=' || array_to_string(labels, ';'), ' ' ORDER BY source_ref)"
                      " FROM api.cases"),
            "0.png=polyp 2.png=bleeding;ulcer b.png=ulcer");
}

TEST(Gsco, AWrongSpecialistDirectoryIsAClearErrorAndNothingIsImported) {
  const std::string dir = std::string(::testing::TempDir()) + "/not-a-vit-" + std::to_string(::getpid());
  run("rm -rf '" + dir + "' && mkdir -p '" + dir + "' && echo '{\"architectures\": [\"InternVLChatModel\"]}' > '" + dir +
      "/config.json'");
  FirstreadService s(gsco_yaml(dir));
  s.start();
  const std::string files = s.dir() + "/files";
  run("mkdir -p '" + files + "' && /usr/bin/python3 -c \"from PIL import Image; "
      "Image.new('RGB', (32, 32), (90, 20, 20)).save('" + files + "/a.png')\"");
  std::ofstream(files + "/labels.csv") << "a.png,normal\n";
  auto r = s.cli("cases import '" + files + "' --labels '" + files + "/labels.csv' --specialist endo-vit");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find(dir + "/config.json"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("ViTForImageClassification"), std::string::npos) << r.output;
  EXPECT_EQ(query1(s, "SELECT count(*) FROM api.cases"), "0");
  // The service says why it is not ready.
  EXPECT_TRUE(wait_until([&] { return s.log().find("specialist endo-vit") != std::string::npos; }, 60)) << s.log();
}
