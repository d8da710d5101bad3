// DICOMweb (issue 17) against the real firstread binary with real clients:
// dicomweb-client (the library OHIF's DICOMweb data source uses) from npm,
// Orthanc with Debian's orthanc-dicomweb plugin as the reference server and
// as a STOW-RS export destination, pydicom (tests/dicomweb/expect.py) for
// what each Debian sample file should get, raw sockets to cut an upload.
#include <arpa/inet.h>
#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>

#include "engine/test_fixtures.h"
#include "tests/orthanc_server.h"
#include "tests/service_harness.h"
#include "tests/test_pki.h"

namespace fs = std::filesystem;
using firstread::testing::connect_loopback;
using firstread::testing::FirstreadService;
using firstread::testing::OrthancServer;
using firstread::testing::query_value;
using firstread::testing::run;
using firstread::testing::wait_until;
using json = nlohmann::json;

namespace {

const std::string kPydicom = "/usr/lib/python3/dist-packages/pydicom/data/test_files";
const std::string kCtSmall = kPydicom + "/CT_small.dcm";

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

int count_of(const FirstreadService& s, const std::string& sql) {
  const std::string v = query_value(s, sql);
  return v.empty() ? -1 : std::stoi(v);
}

// The npm packages (dicomweb-client, xhr2), installed once per build tree.
std::string node_modules() {
  static std::string dir;
  if (dir.empty()) {
    const auto r = run("'" + std::string(FIRSTREAD_SOURCE_DIR) + "/tests/ohif/ensure_npm.sh' '" +
                       FIRSTREAD_OHIF_NPM_DIR + "'");
    if (r.exit_code != 0) throw std::runtime_error("npm install failed:\n" + r.output);
    std::string out = r.output;
    while (!out.empty() && out.back() == '\n') out.pop_back();
    dir = out.substr(out.rfind('\n') == std::string::npos ? 0 : out.rfind('\n') + 1);
  }
  return dir;
}

// Runs dicomweb-client operations (tests/dicomweb/client.cjs); one result per operation.
json dicomweb_client(const json& ops, const std::string& work) {
  const std::string in = work + "/ops.json", out = work + "/results.json";
  std::ofstream(in) << ops.dump();
  fs::remove(out);
  const auto r = run("NODE_PATH='" + node_modules() + "' node '" + FIRSTREAD_SOURCE_DIR +
                     "/tests/dicomweb/client.cjs' '" + in + "' '" + out + "'");
  if (r.exit_code != 0 || !fs::exists(out)) throw std::runtime_error("client.cjs failed:\n" + r.output);
  return json::parse(read_bytes(out));
}

// Debian's sample files (pydicom, dicom3tools, GDCM).
std::vector<std::string> debian_samples() {
  std::vector<std::string> all;
  for (const std::string dir : {kPydicom, std::string("/usr/share/doc/dicom3tools/examples"),
                                std::string("/usr/share/doc/libgdcm3.0/examples")}) {
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir, ec))
      if (e.path().extension() == ".dcm") all.push_back(e.path().string());
  }
  std::sort(all.begin(), all.end());
  return all;
}

// pydicom's verdict per file (tests/dicomweb/expect.py).
std::map<std::string, json> expectations(const std::vector<std::string>& files, const std::string& dir) {
  std::string cmd = "/usr/bin/python3 '" + std::string(FIRSTREAD_SOURCE_DIR) + "/tests/dicomweb/expect.py' '" + dir + "'";
  for (const auto& f : files) cmd += " '" + f + "'";
  const auto r = run(cmd + " 2>/dev/null");
  std::map<std::string, json> out;
  std::istringstream lines(r.output);
  for (std::string line; std::getline(lines, line);)
    if (!line.empty() && line[0] == '{') {
      json j = json::parse(line);
      out[j["file"]] = j;
    }
  if (out.size() != files.size()) throw std::runtime_error("expect.py answered " + std::to_string(out.size()) +
                                                           " of " + std::to_string(files.size()) + ":\n" + r.output);
  return out;
}

std::string first_value(const json& object, const std::string& tag) {
  if (!object.contains(tag) || !object[tag].contains("Value") || object[tag]["Value"].empty()) return "";
  const json& v = object[tag]["Value"][0];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object()) {
    // A person name's trailing empty components are no part of it (PS3.5 6.2: "^^^^" is an empty name).
    std::string name = v.value("Alphabetic", "");
    while (!name.empty() && (name.back() == '^' || name.back() == '=')) name.pop_back();
    return name;
  }
  return v.dump();
}

std::set<std::string> all_values(const json& object, const std::string& tag) {
  std::set<std::string> out;
  if (object.contains(tag) && object[tag].contains("Value"))
    for (const auto& v : object[tag]["Value"]) out.insert(v.is_string() ? v.get<std::string>() : v.dump());
  return out;
}

// UID -> failure reason (0 = stored) of a STOW-RS answer.
std::map<std::string, int> stow_outcomes(const json& answer) {
  std::map<std::string, int> out;
  if (!answer.is_object()) return out;
  for (const auto& i : answer.value("00081199", json::object()).value("Value", json::array()))
    out[first_value(i, "00081155")] = 0;
  for (const auto& i : answer.value("00081198", json::object()).value("Value", json::array()))
    out[first_value(i, "00081155")] = std::stoi(first_value(i, "00081197"));
  return out;
}

// A sample copy with one attribute changed by dcmodify (meta header UIDs kept with -nmu).
std::string modified_copy(const std::string& dir, const std::string& name, const std::string& args) {
  const std::string path = dir + "/" + name;
  fs::copy_file(kCtSmall, path, fs::copy_options::overwrite_existing);
  const auto r = run("dcmodify -nb " + args + " '" + path + "'");
  if (r.exit_code != 0) throw std::runtime_error("dcmodify: " + r.output);
  return path;
}

// --- a raw HTTP/1.1 client, to cut an upload where the test wants

bool send_all(int fd, const std::string& data) {
  size_t at = 0;
  while (at < data.size()) {
    const ssize_t n = send(fd, data.data() + at, data.size() - at, MSG_NOSIGNAL);
    if (n <= 0) return false;
    at += static_cast<size_t>(n);
  }
  return true;
}

std::string part(const std::string& boundary, const std::string& file) {
  return "\r\n--" + boundary + "\r\nContent-Type: application/dicom\r\n\r\n" + file;
}

std::string stow_header(int port, const std::string& boundary, size_t content_length) {
  return "POST /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1:" + std::to_string(port) +
         "\r\nContent-Type: multipart/related; type=\"application/dicom\"; boundary=" + boundary +
         "\r\nAccept: application/dicom+json\r\nContent-Length: " + std::to_string(content_length) + "\r\n\r\n";
}

std::string read_response(int fd) {
  std::string out;
  char buf[65536];
  for (ssize_t n; (n = recv(fd, buf, sizeof buf, 0)) > 0;) out.append(buf, static_cast<size_t>(n));
  return out;
}

int regular_files_under(const std::string& dir) {
  int n = 0;
  for (const auto& e : fs::recursive_directory_iterator(dir)) n += e.is_regular_file();
  return n;
}

std::string dicomweb_root(int http_port) { return "http://127.0.0.1:" + std::to_string(http_port) + "/dicomweb"; }

}  // namespace

// ---------------------------------------------------------------------------
// Debian's samples into firstread and Orthanc through STOW-RS, then QIDO and
// WADO on both.

class DicomwebSamples : public ::testing::Test {
 protected:
  struct Shared {
    std::string work;
    std::unique_ptr<FirstreadService> service;
    std::unique_ptr<OrthancServer> orthanc;
    std::vector<std::string> files;          // sent in one STOW-RS request
    std::map<std::string, json> expected;    // file -> pydicom's verdict
    json answer;                             // firstread's STOW-RS answer
    json orthanc_answer;
    json store_result;  // the client's whole result of the STOW-RS (for messages)
    std::string root;                        // firstread's DICOMweb root
  };
  static Shared* shared;

  static void SetUpTestSuite() {
    shared = new Shared;
    Shared& s = *shared;
    s.work = fs::temp_directory_path() / ("firstread-dicomweb-" + std::to_string(getpid()));
    fs::create_directories(s.work);
    s.service = std::make_unique<FirstreadService>("worklist: {stable_seconds: 3600}\n");
    s.service->start();
    s.orthanc = std::make_unique<OrthancServer>(s.service->port(), "", true);
    s.orthanc->start();
    s.root = dicomweb_root(firstread::testing::test_port(2));
    // One file per SOP Instance UID as pydicom reads it (several samples are one
    // image in several encodings; a damaged copy would overwrite a good one).
    const auto all = debian_samples();
    const auto verdicts = expectations(all, s.work + "/verdicts");
    std::set<std::string> seen;
    for (const auto& f : all) {
      const std::string sop = verdicts.at(f)["sop"].get<std::string>();
      if (sop.empty() || seen.insert(sop).second) s.files.push_back(f);
    }
    // Refusals a sender can provoke: an invalid UID, a meta header that names
    // another instance, and a part that is not DICOM at all.
    s.files.push_back(modified_copy(s.work, "bad_uid.dcm", "-m '(0008,0018)=1.2.3.abc'"));
    s.files.push_back(modified_copy(s.work, "meta_mismatch.dcm", "-nmu -m '(0008,0018)=1.2.826.0.1.3680043.99.1'"));
    std::ofstream(s.work + "/not_dicom.dcm") << "this is not a DICOM file\n";
    s.files.push_back(s.work + "/not_dicom.dcm");
    s.expected = expectations(s.files, s.work + "/expected");
    const json results = dicomweb_client(
        json::array({{{"op", "store"}, {"url", s.root}, {"files", s.files}}}), s.work);
    s.answer = results[0].value("body", json());
    s.store_result = results[0];
    std::vector<std::string> stored;
    for (const auto& f : s.files)
      if (s.expected[f]["outcome"] == "stored") stored.push_back(f);
    // Orthanc gets the files pydicom calls valid, through its own STOW-RS.
    s.orthanc_answer = dicomweb_client(
        json::array({{{"op", "store"}, {"url", s.orthanc->dicomweb_url()}, {"files", stored}}}), s.work)[0];
  }

  static void TearDownTestSuite() {
    std::error_code ec;
    fs::remove_all(shared->work, ec);
    delete shared;
    shared = nullptr;
  }

  // The studies of which both servers stored the same instances.
  static std::set<std::string> common_studies() {
    std::map<std::string, std::set<std::string>> ours, theirs;
    const auto our_outcomes = stow_outcomes(shared->answer);
    const auto their_outcomes = stow_outcomes(shared->orthanc_answer.value("body", json::object()));
    for (const auto& [f, e] : shared->expected) {
      const std::string sop = e["sop"].get<std::string>(), study = e["study"].get<std::string>();
      if (our_outcomes.count(sop) && our_outcomes.at(sop) == 0) ours[study].insert(sop);
      if (their_outcomes.count(sop) && their_outcomes.at(sop) == 0) theirs[study].insert(sop);
    }
    std::set<std::string> both;
    for (const auto& [study, sops] : ours)
      if (theirs.count(study) && theirs[study] == sops) both.insert(study);
    return both;
  }
};
DicomwebSamples::Shared* DicomwebSamples::shared = nullptr;

TEST_F(DicomwebSamples, EachInstanceStoredOrRefusedWithItsReason) {
  const Shared& s = *shared;
  ASSERT_TRUE(s.answer.is_object()) << s.store_result.dump().substr(0, 3000) << "\n" << s.service->log().substr(0, 5000);
  const auto outcomes = stow_outcomes(s.answer);
  int stored = 0, refused = 0;
  for (const auto& f : s.files) {
    const json& e = s.expected.at(f);
    const std::string sop = e["sop"].get<std::string>();
    if (e["outcome"] == "stored") {
      ++stored;
      ASSERT_TRUE(outcomes.count(sop)) << f << " is in neither sequence of the answer: " << s.answer.dump().substr(0, 3000)
                                       << "\n" << s.service->log().substr(0, 3000);
      EXPECT_EQ(outcomes.at(sop), 0) << f << " was refused, pydicom reads it as valid";
      // Stored byte for byte as sent.
      const std::string path = query_value(*s.service, "SELECT file_path FROM api.instances WHERE sop_instance_uid = '" +
                                                      sop + "'");
      ASSERT_FALSE(path.empty()) << f << " acknowledged without a row";
      EXPECT_TRUE(read_bytes(s.service->storage() + "/" + path) == read_bytes(f)) << f;
    } else {
      ++refused;
      const int code = e["outcome"] == "A900" ? 0xA900 : 0xC000;
      if (!sop.empty() && outcomes.count(sop)) EXPECT_EQ(outcomes.at(sop), code) << f << ": " << e["why"];
      if (!sop.empty())
        EXPECT_EQ(count_of(*s.service, "SELECT count(*) FROM api.instances WHERE sop_instance_uid = '" + sop + "'"), 0)
            << f << " was refused but has a row";
    }
  }
  // Every part got an answer, and the refusals carry the codes pydicom expects.
  std::map<int, int> refusals_by_code;
  for (const auto& i : s.answer.value("00081198", json::object()).value("Value", json::array()))
    ++refusals_by_code[i["00081197"]["Value"][0].get<int>()];
  int expected_c000 = 0, expected_a900 = 0;
  for (const auto& [f, e] : s.expected) {
    expected_c000 += e["outcome"] == "C000";
    expected_a900 += e["outcome"] == "A900";
  }
  EXPECT_EQ(refusals_by_code[0xC000], expected_c000);
  EXPECT_EQ(refusals_by_code[0xA900], expected_a900);
  EXPECT_GE(stored, 25);
  EXPECT_GE(refused, 3);
  EXPECT_EQ(first_value(s.answer, "00081190"), "") << "several studies: no study-level RetrieveURL";
  std::cout << "STOW-RS of " << s.files.size() << " files in one request: " << stored << " stored, " << refused
            << " refused\n";

  // Into one named study, an instance of another is refused with C122 (409: nothing stored).
  const json other = dicomweb_client(
      json::array({{{"op", "store"}, {"url", s.root}, {"study", "1.2.3.4.5.6"}, {"files", {kCtSmall}}}}), s.work)[0];
  EXPECT_FALSE(other["ok"].get<bool>());
  EXPECT_EQ(other.value("status", 0), 409);
  ASSERT_TRUE(other["body"].is_object()) << other.dump();
  EXPECT_EQ(first_value(other["body"]["00081198"]["Value"][0], "00081197"), std::to_string(0xC122));
  EXPECT_TRUE(s.service->echo()) << "the DICOM node stopped answering";
}

TEST_F(DicomwebSamples, QidoAnswersLikeOrthancForTheSameStudies) {
  const Shared& s = *shared;
  const auto studies = common_studies();
  ASSERT_TRUE(s.orthanc_answer.value("ok", false)) << s.orthanc_answer.dump().substr(0, 2000);
  ASSERT_GE(studies.size(), 10u) << s.orthanc_answer.dump().substr(0, 2000);
  std::cout << studies.size() << " studies stored alike by firstread and Orthanc\n";
  json ops = json::array();
  for (const auto& uid : studies)
    for (const std::string& root : {s.root, s.orthanc->dicomweb_url()}) {
      ops.push_back({{"op", "search"}, {"url", root}, {"level", "studies"}, {"params", {{"StudyInstanceUID", uid}}}});
      ops.push_back({{"op", "search"}, {"url", root}, {"level", "series"}, {"study", uid}});
      ops.push_back({{"op", "search"}, {"url", root}, {"level", "instances"}, {"study", uid}});
    }
  const json r = dicomweb_client(ops, s.work);
  size_t k = 0;
  std::map<std::string, std::string> study_dates;
  for (const auto& uid : studies) {
    for (size_t j = k; j < k + 6; ++j)
      ASSERT_TRUE(r[j]["ok"].get<bool>() && r[j]["body"].is_array()) << uid << ": " << r[j].dump().substr(0, 2000);
    const json& ours_study = r[k]["body"];
    const json& series = r[k + 1]["body"];
    const json& instances = r[k + 2]["body"];
    const json& theirs_study = r[k + 3]["body"];
    const json& their_series = r[k + 4]["body"];
    const json& their_instances = r[k + 5]["body"];
    k += 6;
    ASSERT_EQ(ours_study.size(), 1u) << uid << ": " << r[k - 6].dump();
    ASSERT_EQ(theirs_study.size(), 1u) << uid;
    study_dates[uid] = first_value(ours_study[0], "00080020");
    // Every attribute Orthanc answers with among the study-level ones.
    for (const char* tag : {"0020000D", "00100020", "00100010", "00080020", "00080030", "00080050", "00200010",
                            "00081030", "00100030", "00100040", "00201206", "00201208"})
      if (theirs_study[0].contains(tag))
        EXPECT_EQ(first_value(ours_study[0], tag), first_value(theirs_study[0], tag)) << uid << " study " << tag;
    EXPECT_EQ(all_values(ours_study[0], "00080061"), all_values(theirs_study[0], "00080061")) << uid;
    ASSERT_EQ(series.size(), their_series.size()) << uid;
    std::map<std::string, json> theirs_by_uid;
    for (const auto& x : their_series) theirs_by_uid[first_value(x, "0020000E")] = x;
    for (const auto& x : series) {
      const std::string su = first_value(x, "0020000E");
      ASSERT_TRUE(theirs_by_uid.count(su)) << uid << " series " << su;
      for (const char* tag : {"00080060", "00200011", "0008103E", "00201209"})
        if (theirs_by_uid[su].contains(tag))
          EXPECT_EQ(first_value(x, tag), first_value(theirs_by_uid[su], tag)) << su << " " << tag;
    }
    std::map<std::string, json> their_instances_by_uid;
    for (const auto& x : their_instances) their_instances_by_uid[first_value(x, "00080018")] = x;
    ASSERT_EQ(instances.size(), their_instances.size()) << uid;
    for (const auto& x : instances) {
      const std::string iu = first_value(x, "00080018");
      ASSERT_TRUE(their_instances_by_uid.count(iu)) << iu;
      for (const char* tag : {"00080016", "00200013", "0020000E"})
        if (their_instances_by_uid[iu].contains(tag))
          EXPECT_EQ(first_value(x, tag), first_value(their_instances_by_uid[iu], tag)) << iu << " " << tag;
    }
  }

  // Searches on the keys OHIF's study list sends: the same studies from both.
  std::vector<json> searches;
  for (const auto& [f, e] : s.expected) {
    if (e["outcome"] != "stored" || !studies.count(e["study"].get<std::string>())) continue;
    DcmFileFormat file;
    file.loadFile(f.c_str());
    OFString v;
    if (file.getDataset()->findAndGetOFString(DCM_PatientID, v).good() && !v.empty())
      searches.push_back({{"PatientID", v.c_str()}});
    if (file.getDataset()->findAndGetOFString(DCM_StudyDate, v).good() && v.length() == 8) {
      searches.push_back({{"StudyDate", std::string(v.c_str())}});
      searches.push_back({{"StudyDate", std::string(v.c_str()) + "-"}});
      searches.push_back({{"StudyDate", "-" + std::string(v.c_str())}});
    }
    if (file.getDataset()->findAndGetOFString(DCM_AccessionNumber, v).good() && !v.empty())
      searches.push_back({{"AccessionNumber", v.c_str()}});
    if (file.getDataset()->findAndGetOFString(DCM_PatientName, v).good() && v.length() > 2) {
      std::string prefix(v.c_str(), 2);
      for (auto& c : prefix) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      searches.push_back({{"PatientName", prefix + "*"}});
    }
    if (searches.size() > 30) break;
  }
  for (const char* m : {"CT", "MR", "US", "OT"}) searches.push_back({{"ModalitiesInStudy", m}});
  searches.push_back({{"StudyDate", "19000101-20991231"}, {"ModalitiesInStudy", "CT"}});
  json search_ops = json::array();
  for (const auto& params : searches)
    for (const std::string& root : {s.root, s.orthanc->dicomweb_url()}) {
      json p = params;
      p["limit"] = "1000";
      search_ops.push_back({{"op", "search"}, {"url", root}, {"level", "studies"}, {"params", p}});
    }
  const json found = dicomweb_client(search_ops, s.work);
  for (size_t i = 0; i < searches.size(); ++i) {
    // "-DATE": PS3.4 C.2.2.2.5 matches dates up to DATE, and an empty value is no date; Orthanc
    // 1.10's plugin also returns studies without a StudyDate there. Compared on studies with one.
    const bool open_start = searches[i].value("StudyDate", "").rfind("-", 0) == 0;
    auto compared = [&](const std::string& uid) {
      return studies.count(uid) != 0 && (!open_start || !study_dates[uid].empty());
    };
    std::set<std::string> ours, theirs;
    for (const auto& x : found[2 * i]["body"])
      if (compared(first_value(x, "0020000D"))) ours.insert(first_value(x, "0020000D"));
    for (const auto& x : found[2 * i + 1]["body"])
      if (compared(first_value(x, "0020000D"))) theirs.insert(first_value(x, "0020000D"));
    EXPECT_EQ(ours, theirs) << "search " << searches[i].dump();
  }
  // limit / offset page through the same newest-first list.
  const json pages = dicomweb_client(
      json::array({{{"op", "search"}, {"url", s.root}, {"level", "studies"}, {"params", {{"limit", "1000"}}}},
                   {{"op", "search"}, {"url", s.root}, {"level", "studies"}, {"params", {{"limit", "3"}, {"offset", "2"}}}}}),
      s.work);
  ASSERT_GE(pages[0]["body"].size(), 5u);
  ASSERT_EQ(pages[1]["body"].size(), 3u);
  for (int i = 0; i < 3; ++i)
    EXPECT_EQ(first_value(pages[1]["body"][i], "0020000D"), first_value(pages[0]["body"][i + 2], "0020000D"));
}

TEST_F(DicomwebSamples, WadoInstancesAreByteIdenticalAndFramesEqualTheDecodedPixels) {
  const Shared& s = *shared;
  json ops = json::array();
  std::vector<std::string> order;
  for (const auto& f : s.files) {
    const json& e = s.expected.at(f);
    if (e["outcome"] != "stored") continue;
    order.push_back(f);
    const std::string out = s.work + "/wado_" + std::to_string(order.size());
    // dicomweb-client 0.11.3's retrieveInstance accepts no other media types than its default
    // (multipart/related; type="application/dicom"): instances come back as stored.
    ops.push_back({{"op", "retrieve"}, {"url", s.root}, {"study", e["study"]}, {"series", e["series"]},
                   {"sop", e["sop"]}, {"out", out}, {"any_syntax", false}});
    if (!e["frame"].is_null())
      ops.push_back({{"op", "frames"}, {"url", s.root}, {"study", e["study"]}, {"series", e["series"]},
                     {"sop", e["sop"]}, {"frames", {1}}, {"out_prefix", out + ".frame"}, {"any_syntax", true}});
    if (!e["rle_decoded"].is_null())
      ops.push_back({{"op", "frames"}, {"url", s.root}, {"study", e["study"]}, {"series", e["series"]},
                     {"sop", e["sop"]}, {"frames", {1}}, {"out_prefix", out + ".decoded"}, {"any_syntax", false}});
  }
  const json r = dicomweb_client(ops, s.work);
  size_t k = 0;
  int frames_checked = 0, compressed_checked = 0;
  for (size_t i = 0; i < order.size(); ++i) {
    const json& e = s.expected.at(order[i]);
    const std::string out = s.work + "/wado_" + std::to_string(i + 1);
    EXPECT_TRUE(r[k++]["ok"].get<bool>()) << order[i] << ": " << r[k - 1].dump();
    EXPECT_TRUE(read_bytes(out) == read_bytes(order[i])) << order[i] << " differs from what was stored";
    if (!e["frame"].is_null()) {
      EXPECT_TRUE(r[k]["ok"].get<bool>()) << order[i] << ": " << r[k].dump();
      ++k;
      EXPECT_TRUE(read_bytes(out + ".frame1") == read_bytes(e["frame"].get<std::string>())) << order[i] << " frame 1 ("
                                                                          << e["frame_kind"] << ")";
      ++frames_checked;
      compressed_checked += e["frame_kind"] == "encapsulated";
    }
    if (!e["rle_decoded"].is_null()) {
      EXPECT_TRUE(r[k]["ok"].get<bool>()) << order[i] << ": " << r[k].dump();
      ++k;
      EXPECT_TRUE(read_bytes(out + ".decoded1") == read_bytes(e["rle_decoded"].get<std::string>())) << order[i] << " decoded RLE frame";
    }
  }
  EXPECT_GE(frames_checked, 20);
  EXPECT_GE(compressed_checked, 5);
  std::cout << "WADO-RS: " << order.size() << " instances byte for byte, " << frames_checked << " frames ("
            << compressed_checked << " as stored compressed)\n";
}

TEST_F(DicomwebSamples, MetadataAndRenderedAreWhatOhifReads) {
  const Shared& s = *shared;
  const json& e = s.expected.at(kCtSmall);
  ASSERT_EQ(e["outcome"], "stored");
  const std::string png = s.work + "/rendered.png";
  const std::string jpeg = s.work + "/rendered.jpg";
  const json r = dicomweb_client(
      json::array({{{"op", "metadata"}, {"url", s.root}, {"study", e["study"]}, {"series", e["series"]}},
                   {{"op", "rendered"}, {"url", s.root}, {"study", e["study"]}, {"series", e["series"]},
                    {"sop", e["sop"]}, {"out", png}},
                   {{"op", "rendered"}, {"url", s.root}, {"study", e["study"]}, {"series", e["series"]},
                    {"sop", e["sop"]}, {"out", jpeg}, {"media_type", "image/jpeg"}}}),
      s.work);
  ASSERT_TRUE(r[0]["ok"].get<bool>()) << r[0].dump();
  const json& meta = r[0]["body"];
  ASSERT_GE(meta.size(), 1u);
  const json* ct = nullptr;
  for (const auto& m : meta)
    if (first_value(m, "00080018") == e["sop"]) ct = &m;
  ASSERT_NE(ct, nullptr);
  EXPECT_EQ(first_value(*ct, "00280010"), "128");
  EXPECT_EQ((*ct)["7FE00010"].value("BulkDataURI", ""),
            s.root + "/studies/" + e["study"].get<std::string>() + "/series/" + e["series"].get<std::string>() +
                "/instances/" + e["sop"].get<std::string>() + "/bulk/7FE00010");
  EXPECT_FALSE((*ct)["7FE00010"].contains("InlineBinary"));
  // The metadata's values are the file's (DCMTK's dcm2json of the same file, less the bulk data).
  const auto dump = run("dcm2json '" + kCtSmall + "'");
  const json reference = json::parse(dump.output);
  for (const char* tag : {"00100010", "00200032", "00280030", "00281052", "00080060", "00181100"})
    EXPECT_EQ(ct->value(tag, json()), reference.value(tag, json())) << tag;
  ASSERT_TRUE(r[1]["ok"].get<bool>()) << r[1].dump();
  const std::string bytes = read_bytes(png);
  ASSERT_GT(bytes.size(), 24u);
  EXPECT_EQ(bytes.substr(1, 3), "PNG");
  // IHDR width and height (big endian at 16 and 20).
  auto be32 = [&](size_t at) {
    return (unsigned char)bytes[at] << 24 | (unsigned char)bytes[at + 1] << 16 | (unsigned char)bytes[at + 2] << 8 |
           (unsigned char)bytes[at + 3];
  };
  EXPECT_EQ(be32(16), 128);
  EXPECT_EQ(be32(20), 128);
  // The JPEG is the same picture: PIL reads it as a 128x128 JPEG within a few grey levels of the PNG.
  ASSERT_TRUE(r[2]["ok"].get<bool>()) << r[2].dump();
  const auto compared = run("/usr/bin/python3 -c \"import sys, numpy as np; from PIL import Image; j = Image.open(sys.argv[2]); "
                            "a = np.asarray(Image.open(sys.argv[1]).convert('RGB'), float); "
                            "b = np.asarray(j.convert('RGB'), float); "
                            "print(j.format, b.shape[1], b.shape[0], round(float(abs(a - b).mean()), 2))\" '" +
                            png + "' '" + jpeg + "'");
  ASSERT_EQ(compared.exit_code, 0) << compared.output;
  std::istringstream words(compared.output);
  std::string format;
  int width = 0, height = 0;
  double mean_difference = 1e9;
  words >> format >> width >> height >> mean_difference;
  EXPECT_EQ(format, "JPEG") << compared.output;
  EXPECT_EQ(width, 128);
  EXPECT_EQ(height, 128);
  EXPECT_LT(mean_difference, 3.0) << compared.output;
  // A rendered type firstread does not make is refused with 406 and what it makes.
  const std::string url = s.root + "/studies/" + e["study"].get<std::string>() + "/series/" +
                          e["series"].get<std::string>() + "/instances/" + e["sop"].get<std::string>() + "/rendered";
  const auto gif = run("curl -s -w '\\n%{http_code}' -H 'Accept: image/gif' '" + url + "'");
  EXPECT_NE(gif.output.find("image/jpeg or image/png"), std::string::npos) << gif.output;
  EXPECT_EQ(gif.output.substr(gif.output.rfind('\n') + 1), "406") << gif.output;
  // ?quality= (PS3.18 8.3.5.1.2): quality 10 is a smaller JPEG of the same
  // picture, further from the PNG than the default's; 0 and 101 are refused.
  const std::string low = s.work + "/rendered-q10.jpg";
  const auto q10 = run("curl -s -o '" + low + "' -w '%{http_code}' '" + url + "?quality=10'");
  EXPECT_EQ(q10.output, "200");
  EXPECT_LT(fs::file_size(low), fs::file_size(jpeg));
  const auto lossier = run("/usr/bin/python3 -c \"import sys, numpy as np; from PIL import Image; "
                           "a = np.asarray(Image.open(sys.argv[1]).convert('RGB'), float); "
                           "d = [abs(a - np.asarray(Image.open(f).convert('RGB'), float)).mean() for f in sys.argv[2:]]; "
                           "print(Image.open(sys.argv[3]).format, round(d[0], 2), round(d[1], 2))\" '" +
                           png + "' '" + jpeg + "' '" + low + "'");
  ASSERT_EQ(lossier.exit_code, 0) << lossier.output;
  std::istringstream lossier_words(lossier.output);
  std::string low_format;
  double at_90 = 0, at_10 = 0;
  lossier_words >> low_format >> at_90 >> at_10;
  EXPECT_EQ(low_format, "JPEG") << lossier.output;
  EXPECT_GT(at_10, at_90) << lossier.output;
  EXPECT_LT(at_10, 20.0) << lossier.output << ": still the same picture";
  for (const char* bad : {"0", "101", "high"}) {
    const auto refused = run("curl -s -w '\\n%{http_code}' '" + url + "?quality=" + bad + "'");
    EXPECT_EQ(refused.output.substr(refused.output.rfind('\n') + 1), "400") << bad << ": " << refused.output;
    EXPECT_NE(refused.output.find("quality"), std::string::npos) << refused.output;
  }
}

// ---------------------------------------------------------------------------
// A STOW-RS upload cut by kill -9.

TEST(DicomwebDurability, KillDuringUploadKeepsTheCompletedPartsAndNothingElse) {
  FirstreadService s("worklist: {stable_seconds: 3600}\n");
  s.start();
  const int http_port = firstread::testing::test_port(2);
  const auto made = firstread::testing::make_instances(kCtSmall, s.dir() + "/data", 6, 512);
  const std::string boundary = "cut-boundary-7";
  // The whole body would be 6 parts; the stream stops inside the 5th.
  std::string body;
  for (const auto& [path, sop] : made) body += part(boundary, read_bytes(path));
  body += "\r\n--" + boundary + "--";
  const int fd = connect_loopback(http_port);
  ASSERT_GE(fd, 0);
  std::string sent = stow_header(http_port, boundary, body.size());
  for (int i = 0; i < 4; ++i) sent += part(boundary, read_bytes(made[i].first));
  const std::string fifth = part(boundary, read_bytes(made[4].first));
  sent += fifth.substr(0, fifth.size() / 2);  // ends the 4th part (its delimiter) and half of the 5th
  ASSERT_TRUE(send_all(fd, sent));
  // The 4 complete parts become durable while the request is still open.
  ASSERT_TRUE(wait_until([&] { return count_of(s, "SELECT count(*) FROM api.instances") == 4; }, 30)) << s.log();
  s.kill9();
  close(fd);
  const std::string node_tmp = s.storage() + "/tmp";

  s.start();
  EXPECT_EQ(count_of(s, "SELECT count(*) FROM api.instances"), 4);
  for (int i = 0; i < 6; ++i) {
    const std::string path =
        query_value(s, "SELECT file_path FROM api.instances WHERE sop_instance_uid = '" + made[i].second + "'");
    if (i < 4) {
      ASSERT_FALSE(path.empty()) << "complete part " << i << " was lost";
      EXPECT_TRUE(read_bytes(s.storage() + "/" + path) == read_bytes(made[i].first)) << "part " << i;
    } else {
      EXPECT_TRUE(path.empty()) << "part " << i << " was never complete but is stored";
    }
  }
  // Nothing of the half part is on disk: it was streaming into an unnamed file
  // (a named temporary where the file system has no O_TMPFILE: removed at start-up).
  EXPECT_EQ(regular_files_under(s.storage() + "/instances"), 4);
  EXPECT_TRUE(wait_until([&] {
    int parts = 0;
    for (const auto& e : fs::directory_iterator(node_tmp)) parts += e.path().extension() == ".part";
    return parts == 0;
  }, 20));

  // The rest sent again (idempotent for the 4 already stored): all 6 acknowledged.
  const int fd2 = connect_loopback(http_port);
  ASSERT_TRUE(send_all(fd2, stow_header(http_port, boundary, body.size()) + body));
  shutdown(fd2, SHUT_WR);
  const std::string response = read_response(fd2);
  close(fd2);
  ASSERT_NE(response.find("HTTP/1.1 200"), std::string::npos) << response;
  const json answer = json::parse(response.substr(response.find("\r\n\r\n") + 4));
  EXPECT_EQ(answer["00081199"]["Value"].size(), 6u);
  EXPECT_EQ(count_of(s, "SELECT count(*) FROM api.instances"), 6);
}

// A STOW-RS client that stops sending right after its second part's closing
// delimiter (before the third part's headers: the second part is complete,
// and no part follows it yet): other clients' uploads are answered meanwhile;
// after the read timeout (30 s) it gets 400 naming the stall and the
// connection is closed; its two complete parts are stored (it sends them
// again: idempotent), nothing of the third.
TEST(DicomwebDurability, AStalledUploadTimesOutKeepingItsCompletePartsWhileOthersAreServed) {
  FirstreadService s("worklist: {stable_seconds: 3600}\n");
  s.start();
  const int http_port = firstread::testing::test_port(2);
  const auto made = firstread::testing::make_instances(kCtSmall, s.dir() + "/data", 4, 512);
  const std::string boundary = "stall-boundary-3";
  std::string body;
  for (int i = 0; i < 3; ++i) body += part(boundary, read_bytes(made[i].first));
  body += "\r\n--" + boundary + "--";
  const int stalled = connect_loopback(http_port);
  ASSERT_GE(stalled, 0);
  const std::string third = part(boundary, read_bytes(made[2].first));
  ASSERT_TRUE(send_all(stalled, stow_header(http_port, boundary, body.size()) + part(boundary, read_bytes(made[0].first)) +
                                    part(boundary, read_bytes(made[1].first)) + third.substr(0, 4 + boundary.size())));
  const auto stalled_at = std::chrono::steady_clock::now();

  // Another client's upload while the first one hangs.
  const int other = connect_loopback(http_port);
  const std::string other_body = part(boundary, read_bytes(made[3].first)) + "\r\n--" + boundary + "--";
  ASSERT_TRUE(send_all(other, stow_header(http_port, boundary, other_body.size()) + other_body));
  shutdown(other, SHUT_WR);
  const std::string other_answer = read_response(other);
  close(other);
  EXPECT_NE(other_answer.find("HTTP/1.1 200"), std::string::npos) << other_answer;
  EXPECT_LT(std::chrono::steady_clock::now() - stalled_at, std::chrono::seconds(20));

  const std::string answer = read_response(stalled);  // until the server closes
  close(stalled);
  const auto waited = std::chrono::steady_clock::now() - stalled_at;
  EXPECT_GE(waited, std::chrono::seconds(29));
  EXPECT_LT(waited, std::chrono::seconds(60));
  EXPECT_EQ(answer.rfind("HTTP/1.1 400", 0), 0u) << answer;
  EXPECT_NE(answer.find("the request body stopped: no data for 30 s"), std::string::npos) << answer;
  for (int i = 0; i < 4; ++i)
    EXPECT_EQ(count_of(s, "SELECT count(*) FROM api.instances WHERE sop_instance_uid = '" + made[i].second + "'"),
              i == 2 ? 0 : 1)
        << "instance " << i;
  EXPECT_EQ(regular_files_under(s.storage() + "/instances"), 3);
  s.terminate();
}

TEST(DicomwebDurability, AcknowledgedInstancesSurviveAKillRightAfterTheAnswer) {
  FirstreadService s("worklist: {stable_seconds: 3600}\n");
  s.start();
  const int http_port = firstread::testing::test_port(2);
  const auto made = firstread::testing::make_instances(kCtSmall, s.dir() + "/data", 20, 512);
  const std::string boundary = "ack-boundary";
  std::string body;
  for (const auto& [path, sop] : made) body += part(boundary, read_bytes(path));
  body += "\r\n--" + boundary + "--\r\n";
  const int fd = connect_loopback(http_port);
  ASSERT_TRUE(send_all(fd, stow_header(http_port, boundary, body.size()) + body));
  // Read until the whole answer is there, then kill at once.
  std::string response;
  char buf[65536];
  while (response.find("\r\n\r\n") == std::string::npos ||
         response.size() < response.find("\r\n\r\n") + 4 +
                               std::stoul(response.substr(response.find("Content-Length: ") + 16))) {
    const ssize_t n = recv(fd, buf, sizeof buf, 0);
    ASSERT_GT(n, 0) << response;
    response.append(buf, static_cast<size_t>(n));
  }
  s.kill9();
  close(fd);
  const json answer = json::parse(response.substr(response.find("\r\n\r\n") + 4));
  const auto outcomes = stow_outcomes(answer);
  ASSERT_EQ(outcomes.size(), 20u);
  s.start();
  for (const auto& [path, sop] : made) {
    ASSERT_EQ(outcomes.at(sop), 0);
    const std::string stored = query_value(s, "SELECT file_path FROM api.instances WHERE sop_instance_uid = '" + sop + "'");
    ASSERT_FALSE(stored.empty()) << sop << " was acknowledged and is lost";
    EXPECT_TRUE(read_bytes(s.storage() + "/" + stored) == read_bytes(path));
  }
}

TEST(DicomwebDurability, DiskFillingDuringAnUploadAnswersA700PerInstanceAndLeavesNoPartialFile) {
  if (geteuid() != 0) GTEST_SKIP() << "mounting a small tmpfs as the full disk needs root";
  FirstreadService a("worklist: {stable_seconds: 3600}\n");  // provides the database
  a.start();
  const firstread::testing::SmallDisk disk("12m");
  ASSERT_EQ(disk.error(), "");
  const std::string& mount_dir = disk.dir();
  FirstreadService b(a, 4, "  min_free_bytes: 2MiB\n", mount_dir);
  b.start();
  const int http_port = firstread::testing::test_port(5);
  // 40 instances of 512 KB into 12 MB in one request: the disk fills in the middle.
  const auto made = firstread::testing::make_instances(kCtSmall, a.dir() + "/big", 40, 512);
  const std::string boundary = "full-disk";
  std::string body;
  for (const auto& [path, sop] : made) body += part(boundary, read_bytes(path));
  body += "\r\n--" + boundary + "--\r\n";
  const int fd = connect_loopback(http_port);
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(send_all(fd, stow_header(http_port, boundary, body.size()) + body));
  shutdown(fd, SHUT_WR);
  const std::string response = read_response(fd);
  close(fd);
  ASSERT_NE(response.find("HTTP/1.1 202"), std::string::npos) << response.substr(0, 2000);
  const json answer = json::parse(response.substr(response.find("\r\n\r\n") + 4));
  const auto outcomes = stow_outcomes(answer);
  int stored = 0, out_of_resources = 0;
  for (const auto& [uid, code] : outcomes) {
    EXPECT_FALSE(uid.empty()) << "a failure item without its SOP Instance UID";
    stored += code == 0;
    out_of_resources += code == 0xA700;
  }
  std::cout << stored << " of 40 stored before the disk was full, " << out_of_resources << " answered A700\n";
  EXPECT_GE(stored, 5);
  EXPECT_EQ(stored + out_of_resources, 40) << response.substr(0, 2000);
  // No partial file; every stored file complete and indexed, every acknowledged one among them.
  for (const auto& e : fs::directory_iterator(mount_dir + "/tmp")) ADD_FAILURE() << "partial file left: " << e.path();
  int files_on_disk = 0;
  for (const auto& e : fs::recursive_directory_iterator(mount_dir + "/instances")) files_on_disk += e.is_regular_file();
  EXPECT_EQ(count_of(a, "SELECT count(*) FROM api.instances"), files_on_disk);
  for (const auto& [path, sop] : made)
    if (outcomes.count(sop) && outcomes.at(sop) == 0) {
      const std::string stored_path =
          query_value(a, "SELECT file_path FROM api.instances WHERE sop_instance_uid = '" + sop + "'");
      ASSERT_FALSE(stored_path.empty()) << sop;
      EXPECT_TRUE(read_bytes(mount_dir + "/" + stored_path) == read_bytes(path)) << sop;
    }
  // A new upload is refused at once with the reason, and the node still answers.
  const int fd2 = connect_loopback(http_port);
  ASSERT_TRUE(send_all(fd2, stow_header(http_port, boundary, body.size())));
  shutdown(fd2, SHUT_WR);
  const std::string refused = read_response(fd2);
  close(fd2);
  EXPECT_NE(refused.find("HTTP/1.1 503"), std::string::npos) << refused;
  EXPECT_NE(refused.find("below storage.min_free_bytes"), std::string::npos) << refused;
}

// ---------------------------------------------------------------------------
// A study in over STOW-RS, its SR and presentation state out over STOW-RS to
// Orthanc's DICOMweb, and firstread's own objects as their own series.

TEST(DicomwebExport, SrAndGspsGoToOrthancOverStowAndShowAsTheirOwnSeries) {
  OrthancServer pacs(firstread::testing::test_port(0), "", true);
  pacs.start();
  const std::string model = firstread::engine::testing_support::fixture_root() + "/v12";
  FirstreadService s("models:\n  tiny: {path: " + model + ", threads: 2}\n"
                     "routes:\n  - {name: default, model: tiny, prompt: \"Describe the image.\", max_new_tokens: 12}\n"
                     "worklist: {stable_seconds: 1, poll_seconds: 0.2}\n"
                     "export:\n  retry_backoff_seconds: 1\n  destinations:\n"
                     "    - {name: web-pacs, type: stowrs, url: \"" + pacs.dicomweb_url() + "\"}\n");
  s.start();
  const std::string root = dicomweb_root(firstread::testing::test_port(2));
  const std::string work = s.dir();
  const json in = dicomweb_client(json::array({{{"op", "store"}, {"url", root}, {"files", {kCtSmall}}}}), work)[0];
  ASSERT_TRUE(in["ok"].get<bool>()) << in.dump();
  ASSERT_TRUE(wait_until([&] { return query_value(s, "SELECT string_agg(object || ':' || state, ',' ORDER BY object)"
                                                " FROM api.exports") == "gsps:sent,sr:sent"; }, 180))
      << query_value(s, "SELECT string_agg(last_error, '; ') FROM api.exports") << "\n" << s.log();
  const std::string sr_uid = query_value(s, "SELECT sr_sop_instance_uid FROM api.reports");
  const std::string study = query_value(s, "SELECT study_uid FROM api.reports");
  // Orthanc has the SR, through its DICOMweb.
  const json theirs = dicomweb_client(
      json::array({{{"op", "search"}, {"url", pacs.dicomweb_url()}, {"level", "instances"}, {"study", study}}}), work)[0];
  std::set<std::string> their_uids;
  for (const auto& x : theirs["body"]) their_uids.insert(first_value(x, "00080018"));
  EXPECT_TRUE(their_uids.count(sr_uid)) << theirs.dump();
  // firstread's QIDO shows the CT, the SR and the presentation state, each its own series.
  const json ours = dicomweb_client(
      json::array({{{"op", "search"}, {"url", root}, {"level", "series"}, {"study", study}},
                   {{"op", "search"}, {"url", root}, {"level", "studies"}, {"params", {{"ModalitiesInStudy", "SR"}}}}}),
      work);
  std::set<std::string> modalities;
  for (const auto& x : ours[0]["body"]) modalities.insert(first_value(x, "00080060"));
  EXPECT_EQ(modalities, (std::set<std::string>{"CT", "PR", "SR"})) << ours[0].dump();
  ASSERT_EQ(ours[1]["body"].size(), 1u);
  EXPECT_EQ(all_values(ours[1]["body"][0], "00080061"), (std::set<std::string>{"CT", "PR", "SR"}));
  EXPECT_EQ(first_value(ours[1]["body"][0], "00201208"), "3");
}

// STOW-RS export over HTTPS: Orthanc's DICOMweb behind a TLS terminator
// (stunnel, see OrthancServer::serve_https) with a certificate from the test
// CA that names "localhost" only. The destination that trusts that CA gets
// the SR; one that trusts another CA, and one that reaches the server as
// 127.0.0.1 (a name the certificate does not carry), are refused with that
// reason in api.exports while their SR waits in the outbox, and the service
// keeps serving.
TEST(DicomwebExport, StowrsOverHttpsSendsOnlyToAServerItVerified) {
  const firstread::testing::TempDir dir("stow-https");
  firstread::testing::TestPki pki(dir.path());
  const firstread::testing::TestCert cert = pki.issue("orthanc-https", "localhost", "DNS:localhost");
  OrthancServer pacs(firstread::testing::test_port(0), "", true);
  pacs.serve_https(cert.cert, cert.key, pki.ca(), "localhost");
  pacs.start();
  ASSERT_EQ(pacs.dicomweb_url().rfind("https://localhost:", 0), 0u) << pacs.dicomweb_url();
  std::string by_ip = pacs.dicomweb_url();
  by_ip.replace(0, std::string("https://localhost").size(), "https://127.0.0.1");
  auto destination = [](const std::string& name, const std::string& url, const std::string& ca) {
    return "    - {name: " + name + ", type: stowrs, url: \"" + url + "\", ca_file: " + ca + ", objects: [sr]}\n";
  };
  const std::string model = firstread::engine::testing_support::fixture_root() + "/v12";
  FirstreadService s("models:\n  tiny: {path: " + model + ", threads: 2}\n"
                     "routes:\n  - {name: default, model: tiny, prompt: \"Describe the image.\", max_new_tokens: 8}\n"
                     "worklist: {stable_seconds: 1, poll_seconds: 0.2}\n"
                     "export:\n  retry_backoff_seconds: 1\n  max_attempts: 100\n  destinations:\n" +
                     destination("pacs", pacs.dicomweb_url(), pki.ca()) +
                     destination("pacs-untrusted", pacs.dicomweb_url(), pki.other_ca()) +
                     destination("pacs-by-ip", by_ip, pki.ca()));
  s.start();
  const auto store = run("storescu -to 10 -aec FIRSTREAD 127.0.0.1 " + std::to_string(s.port()) + " " + kCtSmall);
  ASSERT_EQ(store.exit_code, 0) << store.output;
  auto export_of = [&](const std::string& name, const std::string& column) {
    return query_value(s, "SELECT coalesce(" + column + ", '') FROM api.exports WHERE destination = '" + name + "'");
  };
  ASSERT_TRUE(wait_until([&] { return export_of("pacs", "state") == "sent"; }, 180))
      << export_of("pacs", "last_error") << "\n" << s.log();
  // Orthanc has the SR (asked through the same HTTPS front).
  const std::string sr_uid = query_value(s, "SELECT sr_sop_instance_uid FROM api.reports");
  int code = 0;
  const json hits = json::parse(pacs.rest("POST", "/tools/lookup", sr_uid, &code));
  ASSERT_EQ(code, 200);
  ASSERT_EQ(hits.size(), 1u) << hits.dump();
  EXPECT_EQ(hits[0].value("Type", ""), "Instance");

  ASSERT_TRUE(wait_until([&] {
    return !export_of("pacs-untrusted", "last_error").empty() && !export_of("pacs-by-ip", "last_error").empty();
  }, 60)) << s.log();
  const std::string untrusted = export_of("pacs-untrusted", "last_error");
  EXPECT_NE(untrusted.find("the server's certificate is not trusted"), std::string::npos) << untrusted;
  EXPECT_NE(untrusted.find("ca_file = " + pki.other_ca()), std::string::npos) << untrusted;
  const std::string misnamed = export_of("pacs-by-ip", "last_error");
  EXPECT_NE(misnamed.find("does not name the host '127.0.0.1'"), std::string::npos) << misnamed;
  for (const char* name : {"pacs-untrusted", "pacs-by-ip"})
    EXPECT_EQ(export_of(name, "state"), "pending") << name << ": the SR waits in the outbox to be retried";
  // Orthanc holds one SR only (the refused destinations sent nothing), and firstread still serves.
  code = 0;
  const json instances = json::parse(pacs.rest("GET", "/instances", "", &code));
  EXPECT_EQ(code, 200);
  EXPECT_EQ(instances.size(), 1u) << instances.dump();
  const auto echo = run("echoscu -to 10 -aec FIRSTREAD 127.0.0.1 " + std::to_string(s.port()));
  EXPECT_EQ(echo.exit_code, 0) << echo.output;
  s.terminate();
  pacs.stop();
}

// OHIF served from another origin than firstread: the browser sends a
// preflight (no token) before each request with Authorization or Accept, and
// reads an answer only when it names the page's origin (http.cors_origins).
TEST(DicomwebCors, ABrowserPageOfAnAllowedOriginMayReadTheAnswersAndNoOtherMay) {
  FirstreadService s("", "", "", "  token: cors-test-token\n  cors_origins: [\"http://viewer.example:3000\"]\n");
  s.start();
  const std::string studies = dicomweb_root(firstread::testing::test_port(2)) + "/studies";
  // curl -i: status line and headers, lower-cased for the comparison.
  auto call = [&](const std::string& args) {
    std::string out = run("curl -s -i " + args + " '" + studies + "'").output;
    std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return std::tolower(c); });
    return out;
  };
  const std::string preflight = call("-X OPTIONS -H 'Origin: http://viewer.example:3000' "
                                     "-H 'Access-Control-Request-Method: GET' "
                                     "-H 'Access-Control-Request-Headers: authorization, accept'");
  EXPECT_NE(preflight.find("http/1.1 200"), std::string::npos) << preflight;
  EXPECT_NE(preflight.find("access-control-allow-origin: http://viewer.example:3000\r\n"), std::string::npos)
      << preflight;
  EXPECT_NE(preflight.find("access-control-allow-headers: authorization, accept, content-type"), std::string::npos)
      << preflight;
  EXPECT_NE(preflight.find("access-control-allow-methods: get, head, post"), std::string::npos) << preflight;

  const std::string read = call("-H 'Origin: http://viewer.example:3000' -H 'Authorization: Bearer cors-test-token' "
                                "-H 'Accept: application/dicom+json'");
  EXPECT_NE(read.find("http/1.1 200"), std::string::npos) << read;
  EXPECT_NE(read.find("access-control-allow-origin: http://viewer.example:3000\r\n"), std::string::npos) << read;
  EXPECT_NE(read.find("access-control-expose-headers: warning"), std::string::npos) << read;
  // Without the token: still 401, and the page may read that it was refused.
  const std::string refused = call("-H 'Origin: http://viewer.example:3000'");
  EXPECT_NE(refused.find("http/1.1 401"), std::string::npos) << refused;
  EXPECT_NE(refused.find("access-control-allow-origin: http://viewer.example:3000\r\n"), std::string::npos) << refused;

  // Another origin: its preflight is refused and no answer names it.
  const std::string other = call("-X OPTIONS -H 'Origin: http://elsewhere.example' "
                                 "-H 'Access-Control-Request-Method: GET'");
  EXPECT_NE(other.find("http/1.1 403"), std::string::npos) << other;
  EXPECT_NE(other.find("not one of http.cors_origins"), std::string::npos) << other;
  EXPECT_EQ(other.find("access-control-allow-origin"), std::string::npos) << other;
  const std::string other_read =
      call("-H 'Origin: http://elsewhere.example' -H 'Authorization: Bearer cors-test-token'");
  EXPECT_NE(other_read.find("http/1.1 200"), std::string::npos) << other_read;
  EXPECT_EQ(other_read.find("access-control-allow-origin"), std::string::npos) << other_read;
}
