// build_sr against real validators: every SR built here is saved and checked
// with dciodvfy (dicom3tools), dsrdump (DCMTK) and tools/sr_check/read_sr.py
// (pydicom), and the values pydicom reads back are compared with the input.
#include "reports/sr_builder.h"

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcdatset.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcuid.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace fs = std::filesystem;
using firstread::reports::BuiltSr;
using firstread::reports::build_sr;
using firstread::reports::SrFinding;
using firstread::reports::SrInput;
using firstread::reports::SrPredecessor;
using nlohmann::json;

namespace {

const std::string kPydicomTestFiles = "/usr/lib/python3/dist-packages/pydicom/data/test_files/";
const std::string kReadSr = std::string(FIRSTREAD_SOURCE_DIR) + "/tools/sr_check/read_sr.py";
const char* kComprehensive3DSr = "1.2.840.10008.5.1.4.1.1.88.34";

struct CommandResult {
  int exit_code = -1;
  std::string out, err;
};

std::string read_whole_file(const fs::path& path) {
  std::ifstream stream(path, std::ios::binary);
  std::ostringstream buffer;
  buffer << stream.rdbuf();
  return buffer.str();
}

// Runs a shell command; stdout through the pipe, stderr through a file.
CommandResult run_command(const std::string& command, const fs::path& stderr_file) {
  CommandResult result;
  const std::string full = command + " 2>'" + stderr_file.string() + "'";
  FILE* pipe = popen(full.c_str(), "r");
  if (pipe == nullptr) throw std::runtime_error("popen failed for: " + command);
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof buffer, pipe)) > 0) result.out.append(buffer, n);
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  result.err = read_whole_file(stderr_file);
  return result;
}

std::vector<std::string> lines_starting_with(const std::string& text, const std::string& prefix) {
  std::vector<std::string> found;
  std::istringstream stream(text);
  std::string line;
  while (std::getline(stream, line))
    if (line.rfind(prefix, 0) == 0) found.push_back(line);
  return found;
}

std::unique_ptr<DcmFileFormat> load(const std::string& name) {
  auto file = std::make_unique<DcmFileFormat>();
  const OFCondition status = file->loadFile((kPydicomTestFiles + name).c_str());
  if (status.bad()) throw std::runtime_error("cannot load " + name + ": " + status.text());
  return file;
}

std::string get_string(DcmDataset& dataset, const DcmTagKey& tag) {
  OFString value;
  dataset.findAndGetOFString(tag, value);
  return value.c_str();
}

std::string new_uid() {
  char uid[100];
  return dcmGenerateUniqueIdentifier(uid, SITE_INSTANCE_UID_ROOT);
}

SrInput base_input(const std::vector<const DcmDataset*>& sources) {
  SrInput input;
  input.sources = sources;
  input.model_name = "demo";
  input.model_version = "0.1";
  input.device_observer_uid = "1.2.826.0.1.3680043.10.1234.7.1";
  input.content_datetime = "20261125231500";
  return input;
}

SrFinding finding_on(DcmDataset& image, const std::string& label, double x1, double y1, double x2, double y2) {
  SrFinding finding;
  finding.label = label;
  finding.sop_class_uid = get_string(image, DCM_SOPClassUID);
  finding.sop_instance_uid = get_string(image, DCM_SOPInstanceUID);
  finding.x1 = x1;
  finding.y1 = y1;
  finding.x2 = x2;
  finding.y2 = y2;
  return finding;
}

// The rectangle build_sr must write: clockwise from top-left, closed.
json closed_rectangle(const SrFinding& f) {
  return json::array({{f.x1, f.y1}, {f.x2, f.y1}, {f.x2, f.y2}, {f.x1, f.y2}, {f.x1, f.y1}});
}

class SrBuilderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/sr_builder_test.XXXXXX";
    const char* made = mkdtemp(pattern);
    ASSERT_NE(made, nullptr) << "mkdtemp failed";
    temp_dir_ = made;
  }
  void TearDown() override {
    // Kept on failure, or on request (FIRSTREAD_KEEP_SR_FILES=1) to look at them with dsrdump.
    if (HasFailure() || std::getenv("FIRSTREAD_KEEP_SR_FILES") != nullptr) {
      std::cout << "SR files kept for inspection in " << temp_dir_ << "\n";
      return;
    }
    std::error_code ignored;
    fs::remove_all(temp_dir_, ignored);
  }

  // Saves the SR, runs the three validators and returns read_sr.py's JSON.
  json save_and_validate(const BuiltSr& built, const std::string& name) {
    const fs::path path = temp_dir_ / (name + ".dcm");
    const OFCondition saved = built.file->saveFile(path.c_str(), EXS_LittleEndianExplicit);
    EXPECT_TRUE(saved.good()) << "saving " << path << ": " << saved.text();

    // dciodvfy writes its findings to stderr; errors fail, warnings are printed.
    const CommandResult dciodvfy = run_command("dciodvfy '" + path.string() + "'", temp_dir_ / "dciodvfy.err");
    const std::string dciodvfy_text = dciodvfy.out + dciodvfy.err;
    EXPECT_NE(dciodvfy_text.find("Comprehensive3DSR"), std::string::npos)
        << "dciodvfy did not recognise a Comprehensive 3D SR (is dicom3tools installed?):\n" << dciodvfy_text;
    EXPECT_TRUE(lines_starting_with(dciodvfy_text, "Error").empty()) << "dciodvfy " << name << ":\n" << dciodvfy_text;
    for (const std::string& warning : lines_starting_with(dciodvfy_text, "Warning"))
      std::cout << "[dciodvfy " << name << "] " << warning << "\n";

    // -Dv: dcmsr's VR checker does not know ISO_IR 192 and would only warn about that.
    const CommandResult dsrdump = run_command("dsrdump -Dv +Pc '" + path.string() + "'", temp_dir_ / "dsrdump.err");
    EXPECT_EQ(dsrdump.exit_code, 0) << "dsrdump " << name << ":\n" << dsrdump.err;
    EXPECT_TRUE(lines_starting_with(dsrdump.out + dsrdump.err, "E:").empty())
        << "dsrdump " << name << ":\n" << dsrdump.err << dsrdump.out;

    const CommandResult reader =
        run_command("/usr/bin/python3 '" + kReadSr + "' '" + path.string() + "'", temp_dir_ / "read_sr.err");
    EXPECT_EQ(reader.exit_code, 0) << "read_sr.py " << name << ":\n" << reader.err;
    if (reader.exit_code != 0) return json::object();
    return json::parse(reader.out);
  }

  fs::path temp_dir_;
};

// Checks every SR must pass, whatever its content.
void expect_common_header(const json& sr, const BuiltSr& built, DcmDataset& first_source) {
  EXPECT_EQ(sr["sop_class_uid"], kComprehensive3DSr);
  EXPECT_EQ(built.sop_class_uid, kComprehensive3DSr);
  EXPECT_EQ(sr["sop_instance_uid"], built.sop_instance_uid);
  EXPECT_EQ(sr["series_instance_uid"], built.series_instance_uid);
  EXPECT_EQ(sr["specific_character_set"], "ISO_IR 192");
  EXPECT_EQ(sr["modality"], "SR");
  EXPECT_EQ(sr["template"], "1500");
  EXPECT_EQ(sr["study_instance_uid"], get_string(first_source, DCM_StudyInstanceUID));
  EXPECT_NE(sr["series_instance_uid"], get_string(first_source, DCM_SeriesInstanceUID));
  EXPECT_EQ(sr["patient_id"], get_string(first_source, DCM_PatientID));
  EXPECT_EQ(sr["series_number"], "9901");
  EXPECT_EQ(sr["series_description"], "firstread AI preliminary report");
  EXPECT_EQ(sr["completion_flag"], "PARTIAL");
  EXPECT_EQ(sr["verification_flag"], "UNVERIFIED");
  EXPECT_EQ(sr["preliminary_flag"], "PRELIMINARY");
  EXPECT_EQ(sr["content_date"], "20261125");
  EXPECT_EQ(sr["content_time"], "231500");
  EXPECT_EQ(sr["device_observer"]["uid"], "1.2.826.0.1.3680043.10.1234.7.1");
  EXPECT_EQ(sr["device_observer"]["name"], "demo");
  EXPECT_EQ(sr["device_observer"]["manufacturer"], "firstread");
  EXPECT_EQ(sr["device_observer"]["type"], "Device");
  ASSERT_EQ(sr["contributing_equipment"].size(), 1u);
  const json& equipment = sr["contributing_equipment"][0];
  EXPECT_EQ(equipment["purpose"]["code"], "Newcode1");
  EXPECT_EQ(equipment["purpose"]["scheme"], "99IHE");
  EXPECT_EQ(equipment["purpose"]["meaning"], "Processing Algorithm");
  EXPECT_EQ(equipment["manufacturer"], "firstread");
  EXPECT_EQ(equipment["model_name"], "demo");
  EXPECT_EQ(equipment["software_versions"], "0.1");
  EXPECT_EQ(equipment["device_uid"], "1.2.826.0.1.3680043.10.1234.7.1");
}

TEST_F(SrBuilderTest, EnglishCtReportWithCodedFindingAndConfidence) {
  auto ct = load("CT_small.dcm");
  DcmDataset& image = *ct->getDataset();
  SrInput input = base_input({&image});
  input.narrative = "Findings: A 9 mm solid nodule in the right upper lobe.\nImpression: Pulmonary nodule, follow-up CT.";
  SrFinding nodule = finding_on(image, "nodule", 10.5, 20.0, 40.25, 60.0);
  nodule.text = "Solid nodule, right upper lobe.";
  nodule.confidence = 87.5;
  input.findings.push_back(nodule);
  SrFinding unknown = finding_on(image, "ground-glass opacity", 0.0, 0.0, 128.0, 128.0);  // the whole image
  input.findings.push_back(unknown);

  const BuiltSr built = build_sr(input);
  const json sr = save_and_validate(built, "ct_en");
  ASSERT_FALSE(sr.empty());
  expect_common_header(sr, built, image);

  EXPECT_EQ(sr["language"]["code"], "en-US");
  EXPECT_EQ(sr["language"]["scheme"], "RFC5646");
  ASSERT_EQ(sr["procedures_reported"].size(), 1u);
  EXPECT_EQ(sr["procedures_reported"][0]["code"], "25045-6");  // CT unspecified body region
  ASSERT_EQ(sr["image_library"].size(), 1u);
  EXPECT_EQ(sr["image_library"][0]["sop_instance_uid"], nodule.sop_instance_uid);
  ASSERT_EQ(sr["evidence"].size(), 1u);
  EXPECT_EQ(sr["evidence"][0]["sop_instance_uid"], nodule.sop_instance_uid);
  EXPECT_TRUE(sr["predecessors"].empty());

  // The narrative is split at "Impression:" into a Finding and an Impression text.
  ASSERT_EQ(sr["narrative"].size(), 2u);
  EXPECT_EQ(sr["narrative"][0]["concept"]["code"], "121071");
  EXPECT_EQ(sr["narrative"][0]["text"], "Findings: A 9 mm solid nodule in the right upper lobe.");
  EXPECT_EQ(sr["narrative"][1]["concept"]["code"], "121073");
  EXPECT_EQ(sr["narrative"][1]["text"], "Pulmonary nodule, follow-up CT.");

  ASSERT_EQ(sr["groups"].size(), 2u);
  const json& first = sr["groups"][0];
  // The layout OHIF's SR display and the cornerstone adapters read (tests/ohif/ checks it with their code).
  EXPECT_EQ(first["template"], "1501");
  EXPECT_EQ(first["tracking_identifier"], "Cornerstone3DTools@^0.1.0:RectangleROI");
  EXPECT_FALSE(first["tracking_uid"].get<std::string>().empty());
  EXPECT_EQ(first["finding"]["code"], "27925004");
  EXPECT_EQ(first["finding"]["scheme"], "SCT");
  EXPECT_EQ(first["direct_scoords"], 0);
  EXPECT_EQ(first["region_relationship"], "INFERRED FROM");
  EXPECT_EQ(first["graphic_type"], "POLYLINE");
  EXPECT_EQ(first["graphic_data"], closed_rectangle(nodule));
  EXPECT_EQ(first["referenced_image"]["sop_instance_uid"], nodule.sop_instance_uid);
  EXPECT_EQ(first["referenced_image"]["sop_class_uid"], nodule.sop_class_uid);
  EXPECT_TRUE(first["referenced_image"]["frames"].empty());
  // CT_small: Pixel Spacing 0.661468\0.661468 mm, box 29.75 x 40 pixels.
  EXPECT_EQ(first["area"]["unit"]["code"], "mm2");
  EXPECT_NEAR(first["area"]["value"].get<double>(), 29.75 * 40 * 0.661468 * 0.661468, 0.01);
  EXPECT_DOUBLE_EQ(first["certainty"]["value"].get<double>(), 87.5);
  EXPECT_EQ(first["certainty"]["unit"]["code"], "%");
  EXPECT_EQ(first["algorithm"]["name"], "demo");
  EXPECT_EQ(first["algorithm"]["version"], "0.1");
  EXPECT_EQ(first["comments"], json::array({"nodule", "Solid nodule, right upper lobe."}));

  const json& second = sr["groups"][1];
  // Not in the table: firstread's own scheme, the label as Code Meaning, the scheme declared.
  EXPECT_EQ(second["finding"]["scheme"], "99FIRSTREAD");
  EXPECT_EQ(second["finding"]["meaning"], "ground-glass opacity");
  EXPECT_EQ(second["finding"]["code"], firstread::reports::finding_code("Ground-glass opacity ").value);
  ASSERT_EQ(sr["coding_schemes"].size(), 1u);
  EXPECT_EQ(sr["coding_schemes"][0]["designator"], "99FIRSTREAD");
  EXPECT_EQ(second["graphic_data"], closed_rectangle(unknown));
  EXPECT_TRUE(second["certainty"].is_null());
  EXPECT_EQ(second["comments"], json::array({"ground-glass opacity"}));
  EXPECT_NE(first["tracking_uid"], second["tracking_uid"]);
}

TEST_F(SrBuilderTest, ChineseReportOnRgbImageKeepsTextUnchanged) {
  auto rgb = load("SC_rgb_small_odd.dcm");  // 3 x 3 RGB secondary capture
  DcmDataset& image = *rgb->getDataset();
  // Photographs have no Pixel Spacing (this sample does): the area is then in pixels.
  ASSERT_TRUE(image.findAndDeleteElement(DCM_PixelSpacing).good());
  SrInput input = base_input({&image});
  input.language = "zh";
  input.narrative = "所见：右肺上叶见一结节，边界清楚。\n印象：右肺上叶结节，建议随访。";
  SrFinding nodule = finding_on(image, "结节", 0.5, 0.5, 2.5, 2.0);
  nodule.text = "右肺上叶结节，直径约9毫米。";
  nodule.confidence = 91.0;
  input.findings.push_back(nodule);
  SrFinding ggo = finding_on(image, "磨玻璃影", 1.0, 1.0, 3.0, 3.0);
  ggo.sop_class_uid.clear();  // taken from the source
  input.findings.push_back(ggo);

  const BuiltSr built = build_sr(input);
  const json sr = save_and_validate(built, "rgb_zh");
  ASSERT_FALSE(sr.empty());
  expect_common_header(sr, built, image);

  EXPECT_EQ(sr["language"]["code"], "zh-CN");
  EXPECT_EQ(sr["procedures_reported"][0]["code"], "363679005");  // generic imaging procedure for OT
  ASSERT_EQ(sr["narrative"].size(), 2u);
  EXPECT_EQ(sr["narrative"][0]["text"], "所见：右肺上叶见一结节，边界清楚。");
  EXPECT_EQ(sr["narrative"][1]["concept"]["code"], "121073");
  EXPECT_EQ(sr["narrative"][1]["text"], "右肺上叶结节，建议随访。");

  ASSERT_EQ(sr["groups"].size(), 2u);
  EXPECT_EQ(sr["groups"][0]["finding"]["code"], "27925004");  // 结节 = nodule
  EXPECT_EQ(sr["groups"][0]["comments"], json::array({"结节", "右肺上叶结节，直径约9毫米。"}));
  EXPECT_EQ(sr["groups"][0]["area"]["unit"]["code"], "{pixels}");
  EXPECT_DOUBLE_EQ(sr["groups"][0]["area"]["value"].get<double>(), 2.0 * 1.5);
  EXPECT_EQ(sr["groups"][0]["graphic_data"], closed_rectangle(nodule));
  EXPECT_EQ(sr["groups"][1]["finding"]["scheme"], "99FIRSTREAD");
  EXPECT_EQ(sr["groups"][1]["finding"]["meaning"], "磨玻璃影");
  EXPECT_EQ(sr["groups"][1]["comments"], json::array({"磨玻璃影"}));
  EXPECT_EQ(sr["groups"][1]["referenced_image"]["sop_class_uid"], get_string(image, DCM_SOPClassUID));
}

TEST_F(SrBuilderTest, MultiFrameRegionReferencesItsFrame) {
  // The two-frame RGB sample is labelled Secondary Capture, a single-frame
  // class; as Multi-frame True Color Secondary Capture it is a conformant
  // multi-frame image (pydicom ships no other multi-frame image class).
  auto sc = load("SC_rgb_rle_2frame.dcm");  // 2 frames, 100 x 100
  DcmDataset& image = *sc->getDataset();
  ASSERT_TRUE(image.putAndInsertString(DCM_SOPClassUID, UID_MultiframeTrueColorSecondaryCaptureImageStorage).good());
  SrInput input = base_input({&image});
  input.narrative = "Lesion on the second frame.";
  SrFinding lesion = finding_on(image, "lesion", 25.0, 30.0, 75.5, 99.0);
  lesion.frame = 2;
  lesion.confidence = 64.25;
  input.findings.push_back(lesion);

  const BuiltSr built = build_sr(input);
  EXPECT_TRUE(built.warnings.empty());
  const json sr = save_and_validate(built, "multiframe");
  ASSERT_FALSE(sr.empty());
  expect_common_header(sr, built, image);

  ASSERT_EQ(sr["narrative"].size(), 1u);
  EXPECT_EQ(sr["narrative"][0]["text"], "Lesion on the second frame.");
  ASSERT_EQ(sr["groups"].size(), 1u);
  EXPECT_EQ(sr["groups"][0]["finding"]["code"], "52988006");
  EXPECT_EQ(sr["groups"][0]["referenced_image"]["frames"], json::array({2}));
  EXPECT_EQ(sr["groups"][0]["referenced_image"]["sop_instance_uid"], lesion.sop_instance_uid);
  EXPECT_EQ(sr["groups"][0]["referenced_image"]["sop_class_uid"], UID_MultiframeTrueColorSecondaryCaptureImageStorage);
  EXPECT_EQ(sr["groups"][0]["graphic_data"], closed_rectangle(lesion));
  EXPECT_DOUBLE_EQ(sr["groups"][0]["certainty"]["value"].get<double>(), 64.25);
}

// Secondary Capture (.7) is a single-frame SOP class, yet this sample has two
// frames: DICOM forbids a frame number in the reference, so it is left out and
// the caller is told.
TEST_F(SrBuilderTest, FrameOfSingleFrameClassIsLeftOutWithWarning) {
  auto sc = load("SC_rgb_rle_2frame.dcm");  // 2 frames, 100 x 100, SOP class Secondary Capture
  DcmDataset& image = *sc->getDataset();
  SrInput input = base_input({&image});
  SrFinding polyp = finding_on(image, "Polyps", 25.0, 30.0, 75.5, 99.0);
  polyp.frame = 2;
  input.findings.push_back(polyp);

  const BuiltSr built = build_sr(input);
  ASSERT_EQ(built.warnings.size(), 1u);
  EXPECT_NE(built.warnings[0].find("single-frame"), std::string::npos) << built.warnings[0];
  const json sr = save_and_validate(built, "sc_two_frames");
  ASSERT_FALSE(sr.empty());
  ASSERT_EQ(sr["groups"].size(), 1u);
  EXPECT_EQ(sr["groups"][0]["finding"]["code"], "41329004");  // "Polyps" -> polyp
  EXPECT_TRUE(sr["groups"][0]["referenced_image"]["frames"].empty());
  EXPECT_EQ(sr["groups"][0]["graphic_data"], closed_rectangle(polyp));
}

TEST_F(SrBuilderTest, TwoImagesOfOneStudyFindingOnTheSecond) {
  auto ct = load("CT_small.dcm");
  DcmDataset& first = *ct->getDataset();
  // A second image of the same study and series: a copy with its own SOP Instance UID.
  DcmDataset second(first);
  ASSERT_TRUE(second.putAndInsertString(DCM_SOPInstanceUID, new_uid().c_str()).good());
  SrInput input = base_input({&first, &second});
  SrFinding mass = finding_on(second, "mass", 64.0, 64.0, 100.0, 90.0);
  input.findings.push_back(mass);

  const BuiltSr built = build_sr(input);
  const json sr = save_and_validate(built, "two_images");
  ASSERT_FALSE(sr.empty());
  expect_common_header(sr, built, first);
  EXPECT_TRUE(sr["narrative"].empty());
  ASSERT_EQ(sr["image_library"].size(), 2u);
  EXPECT_EQ(sr["image_library"][1]["sop_instance_uid"], get_string(second, DCM_SOPInstanceUID));
  ASSERT_EQ(sr["evidence"].size(), 2u);
  ASSERT_EQ(sr["groups"].size(), 1u);
  EXPECT_EQ(sr["groups"][0]["finding"]["code"], "4147007");
  EXPECT_EQ(sr["groups"][0]["referenced_image"]["sop_instance_uid"], get_string(second, DCM_SOPInstanceUID));
}

TEST_F(SrBuilderTest, RerunWithoutFindingsListsPredecessor) {
  auto mr = load("MR_small.dcm");
  DcmDataset& image = *mr->getDataset();
  SrInput input = base_input({&image});
  input.narrative = "No focal abnormality.";
  SrPredecessor predecessor;
  predecessor.study_uid = get_string(image, DCM_StudyInstanceUID);
  predecessor.series_uid = new_uid();
  predecessor.sop_class_uid = kComprehensive3DSr;
  predecessor.sop_instance_uid = new_uid();
  input.predecessor = predecessor;

  const BuiltSr built = build_sr(input);
  const json sr = save_and_validate(built, "mr_predecessor");
  ASSERT_FALSE(sr.empty());
  expect_common_header(sr, built, image);
  EXPECT_TRUE(sr["groups"].empty());
  EXPECT_EQ(sr["procedures_reported"][0]["code"], "25056-3");  // MRI unspecified body region
  ASSERT_EQ(sr["predecessors"].size(), 1u);
  EXPECT_EQ(sr["predecessors"][0]["study"], predecessor.study_uid);
  EXPECT_EQ(sr["predecessors"][0]["series"], predecessor.series_uid);
  EXPECT_EQ(sr["predecessors"][0]["sop_class_uid"], predecessor.sop_class_uid);
  EXPECT_EQ(sr["predecessors"][0]["sop_instance_uid"], predecessor.sop_instance_uid);
  EXPECT_NE(built.sop_instance_uid, predecessor.sop_instance_uid);
}

// A model that said nothing still yields a valid (empty) report.
TEST_F(SrBuilderTest, EmptyReportIsStillValid) {
  auto ct = load("CT_small.dcm");
  DcmDataset& image = *ct->getDataset();
  const SrInput input = base_input({&image});
  const BuiltSr built = build_sr(input);
  const json sr = save_and_validate(built, "empty");
  ASSERT_FALSE(sr.empty());
  expect_common_header(sr, built, image);
  EXPECT_TRUE(sr["narrative"].empty());
  EXPECT_TRUE(sr["groups"].empty());
  EXPECT_EQ(sr["image_library"].size(), 1u);
}

TEST_F(SrBuilderTest, Latin1PatientNameArrivesAsUtf8) {
  auto ct = load("CT_small.dcm");  // Specific Character Set ISO_IR 100
  DcmDataset& image = *ct->getDataset();
  ASSERT_EQ(get_string(image, DCM_SpecificCharacterSet), "ISO_IR 100");
  ASSERT_TRUE(image.putAndInsertString(DCM_PatientName, "M\xFCller^J\xFCrgen").good());  // Latin-1 bytes
  SrInput input = base_input({&image});
  input.narrative = "Normal.";

  const BuiltSr built = build_sr(input);
  const json sr = save_and_validate(built, "latin1_patient");
  ASSERT_FALSE(sr.empty());
  EXPECT_EQ(sr["patient_name"], "Müller^Jürgen");
  // The caller's dataset is untouched.
  EXPECT_EQ(get_string(image, DCM_PatientName), "M\xFCller^J\xFCrgen");
  EXPECT_EQ(get_string(image, DCM_SpecificCharacterSet), "ISO_IR 100");
}

// OHIF v3's own code (its SR extension and the cornerstone adapters, from npm,
// installed into the build tree at test time by tests/ohif/ensure_npm.sh) reads
// every finding: shown on its image and frame with its label among the text
// lines, and hydrated as a RectangleROI measurement with that label and box.
class SrBuilderOhifTest : public SrBuilderTest {
 protected:
  json expected_entry(const SrFinding& f) {
    return {{"label", f.label}, {"sop_instance_uid", f.sop_instance_uid}, {"frame", f.frame},
            {"x1", f.x1}, {"y1", f.y1}, {"x2", f.x2}, {"y2", f.y2}};
  }
  // Runs tests/ohif/check_sr.cjs on the SR; images are the source files.
  void expect_ohif_reads(const BuiltSr& built, const std::string& name, const std::vector<SrFinding>& findings,
                         const std::vector<std::string>& image_files) {
    save_and_validate(built, name);
    const std::string source_dir = FIRSTREAD_SOURCE_DIR;
    const CommandResult npm = run_command("'" + source_dir + "/tests/ohif/ensure_npm.sh' '" + FIRSTREAD_OHIF_NPM_DIR + "'",
                                          temp_dir_ / "npm.err");
    ASSERT_EQ(npm.exit_code, 0) << "installing OHIF's packages from npm failed:\n" << npm.err;
    std::string node_modules = npm.out;
    while (!node_modules.empty() && (node_modules.back() == '\n' || node_modules.back() == '\r')) node_modules.pop_back();
    json expected = json::array();
    for (const SrFinding& f : findings) expected.push_back(expected_entry(f));
    const fs::path expected_path = temp_dir_ / (name + ".expected.json");
    std::ofstream(expected_path) << expected.dump();
    std::string command = "NODE_PATH='" + node_modules + "' node '" + source_dir + "/tests/ohif/check_sr.cjs' '" +
                          (temp_dir_ / (name + ".dcm")).string() + "' '" + expected_path.string() + "'";
    for (const std::string& file : image_files) command += " '" + file + "'";
    const CommandResult check = run_command(command, temp_dir_ / "check_sr.err");
    EXPECT_EQ(check.exit_code, 0) << "OHIF's libraries on " << name << ":\n" << check.out << check.err;
    if (check.exit_code != 0) return;
    const json summary = json::parse(check.out);
    ASSERT_EQ(summary["ohif_display"].size(), findings.size());
    ASSERT_EQ(summary["adapters_hydrated"].size(), findings.size());
    for (size_t i = 0; i < findings.size(); ++i) {
      EXPECT_EQ(summary["adapters_hydrated"][i]["label"], findings[i].label);
      EXPECT_TRUE(summary["ohif_display"][i]["loaded"].get<bool>());
    }
  }
};

TEST_F(SrBuilderOhifTest, CtFindingsKnownOwnCodeAndConfidenceAreShownAndHydrated) {
  const std::string path = kPydicomTestFiles + "CT_small.dcm";
  auto ct = load("CT_small.dcm");
  DcmDataset& image = *ct->getDataset();
  SrInput input = base_input({&image});
  input.narrative = "Findings: nodule.\nImpression: follow-up.";
  SrFinding nodule = finding_on(image, "nodule", 10.5, 20.0, 40.25, 60.0);
  nodule.confidence = 87.5;
  nodule.text = "Solid nodule, right upper lobe.";
  SrFinding opacity = finding_on(image, "ground-glass opacity", 0.0, 0.0, 128.0, 128.0);
  SrFinding chinese = finding_on(image, "磨玻璃影", 64.0, 70.0, 100.0, 127.5);
  chinese.confidence = 40.0;
  input.findings = {nodule, opacity, chinese};
  expect_ohif_reads(build_sr(input), "ohif_ct", input.findings, {path});
}

// GSCo (issue 15): a specialist's group (device observer, label probabilities,
// retrieved case count, no region) beside the findings: OHIF still shows and
// hydrates exactly the findings, and the SR stays valid.
TEST_F(SrBuilderOhifTest, SpecialistGroupsLeaveTheFindingsAsOhifReadsThem) {
  const std::string path = kPydicomTestFiles + "CT_small.dcm";
  auto ct = load("CT_small.dcm");
  DcmDataset& image = *ct->getDataset();
  SrInput input = base_input({&image});
  SrFinding nodule = finding_on(image, "nodule", 10.5, 20.0, 40.25, 60.0);
  nodule.confidence = 93.0;
  input.findings = {nodule};
  firstread::reports::SrSpecialistEvaluation e;
  e.name = "chest-vit";
  e.version = "3f2a";
  e.device_observer_uid = "2.25.1234567890";
  e.sop_instance_uid = nodule.sop_instance_uid;
  e.probabilities = {{"nodule", 0.93}, {"normal", 0.04}, {"zebra sign", 0.5}};
  e.positives = {"nodule", "zebra sign"};
  e.retrieved_cases = 10;
  input.specialist_evaluations = {e};
  const BuiltSr built = build_sr(input);
  const json sr = save_and_validate(built, "specialist");
  ASSERT_EQ(sr["groups"].size(), 1u);
  ASSERT_EQ(sr["specialist_groups"].size(), 1u);
  EXPECT_EQ(sr["specialist_groups"][0]["image"], nodule.sop_instance_uid);
  const json& g = sr["specialist_groups"][0];
  EXPECT_EQ(g["observer"]["type"], "Device");
  EXPECT_EQ(g["observer"]["name"], "chest-vit");
  EXPECT_EQ(g["observer"]["uid"], "2.25.1234567890");
  EXPECT_EQ(g["evaluations"]["Similar confirmed cases retrieved"], "10");
  EXPECT_EQ(g["evaluations"]["zebra sign"], "probability 0.5000, positive");
  expect_ohif_reads(built, "ohif_specialist", input.findings, {path});
  const fs::path saved = temp_dir_ / "ohif_specialist.dcm";
  const CommandResult dump = run_command("dsrdump +Pc '" + saved.string() + "'", temp_dir_ / "dsrdump.err");
  ASSERT_EQ(dump.exit_code, 0) << dump.err;
  for (const std::string want :
       {"(121013,DCM,\"Device Observer Name\")=\"chest-vit\"", "(121012,DCM,\"Device Observer UID\")=\"2.25.1234567890\"",
        "=\"probability 0.9300, positive\"", "=\"probability 0.0400\"", "=\"probability 0.5000, positive\"",
        "(GSCO-RAD-N,99FIRSTREAD,\"Similar confirmed cases retrieved\")=\"10\""})
    EXPECT_NE(dump.out.find(want), std::string::npos) << want << "\n" << dump.out;
  SrInput bad = input;
  bad.specialist_evaluations[0].probabilities = {{"nodule", 1.5}};
  EXPECT_THROW(build_sr(bad), std::runtime_error);
  bad.specialist_evaluations[0].probabilities = {{"nodule", 0.5}};
  bad.specialist_evaluations[0].device_observer_uid = "not a uid";
  EXPECT_THROW(build_sr(bad), std::runtime_error);
}

TEST_F(SrBuilderOhifTest, RegionOnTheSecondFrameOfAMultiFrameImage) {
  auto sc = load("SC_rgb_rle_2frame.dcm");  // 2 frames, 100 x 100
  DcmDataset& image = *sc->getDataset();
  ASSERT_TRUE(image.putAndInsertString(DCM_SOPClassUID, UID_MultiframeTrueColorSecondaryCaptureImageStorage).good());
  const fs::path source = temp_dir_ / "multiframe_source.dcm";
  ASSERT_TRUE(sc->saveFile(source.c_str()).good());
  SrInput input = base_input({&image});
  SrFinding polyp = finding_on(image, "息肉", 25.0, 30.0, 75.5, 99.0);
  polyp.frame = 2;
  input.findings = {polyp};
  expect_ohif_reads(build_sr(input), "ohif_multiframe", input.findings, {source.string()});
}

// Workers build SRs concurrently: each build must succeed with its own UIDs.
TEST(SrBuilderConcurrency, ParallelBuildsSucceedWithDistinctUids) {
  auto ct = load("CT_small.dcm");
  DcmDataset& image = *ct->getDataset();
  constexpr int kThreads = 4, kBuildsPerThread = 5;
  std::vector<std::vector<std::string>> uids(kThreads);
  std::vector<std::string> errors(kThreads);
  // Each thread reads its own dataset, as each worker does: DCMTK's element
  // lists keep an internal cursor, so even reads of one dataset must not overlap.
  std::vector<std::unique_ptr<DcmDataset>> own_copies;
  for (int t = 0; t < kThreads; ++t) own_copies.push_back(std::make_unique<DcmDataset>(image));
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      try {
        DcmDataset& own_copy = *own_copies[t];
        for (int i = 0; i < kBuildsPerThread; ++i) {
          SrInput input = base_input({&own_copy});
          input.narrative = "Thread " + std::to_string(t) + " build " + std::to_string(i);
          input.findings.push_back(finding_on(own_copy, "nodule", 1, 2, 30, 40));
          uids[t].push_back(build_sr(input).sop_instance_uid);
        }
      } catch (const std::exception& error) {
        errors[t] = error.what();
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  std::set<std::string> distinct;
  for (int t = 0; t < kThreads; ++t) {
    EXPECT_EQ(errors[t], "") << "thread " << t;
    distinct.insert(uids[t].begin(), uids[t].end());
  }
  EXPECT_EQ(distinct.size(), static_cast<size_t>(kThreads * kBuildsPerThread));
}

// --- bad input: an exception that names what was wrong

std::string build_error(const SrInput& input) {
  try {
    build_sr(input);
  } catch (const std::runtime_error& error) {
    return error.what();
  }
  return "(no exception)";
}

TEST(SrBuilderBadInput, EachProblemIsNamed) {
  auto ct = load("CT_small.dcm");
  DcmDataset& image = *ct->getDataset();
  auto multi = load("SC_rgb_rle_2frame.dcm");
  DcmDataset& two_frames = *multi->getDataset();
  two_frames.putAndInsertString(DCM_SOPClassUID, UID_MultiframeTrueColorSecondaryCaptureImageStorage);
  auto dose = load("rtdose.dcm");
  DcmDataset& rt_dose = *dose->getDataset();
  const SrInput good = base_input({&image});
  ASSERT_NO_THROW(build_sr(good));

  SrInput no_source = good;
  no_source.sources.clear();
  EXPECT_NE(build_error(no_source).find("no source image"), std::string::npos) << build_error(no_source);

  SrInput foreign = good;
  SrFinding foreign_finding = finding_on(image, "nodule", 1, 1, 5, 5);
  foreign_finding.sop_instance_uid = "1.2.3.4.5";
  foreign.findings = {foreign_finding};
  const std::string foreign_error = build_error(foreign);
  EXPECT_NE(foreign_error.find("finding 1"), std::string::npos) << foreign_error;
  EXPECT_NE(foreign_error.find("1.2.3.4.5"), std::string::npos) << foreign_error;

  SrInput inverted = good;
  inverted.findings = {finding_on(image, "nodule", 1, 1, 5, 5), finding_on(image, "mass", 20, 10, 20, 30)};
  const std::string inverted_error = build_error(inverted);
  EXPECT_NE(inverted_error.find("finding 2 ('mass')"), std::string::npos) << inverted_error;
  EXPECT_NE(inverted_error.find("x1<x2"), std::string::npos) << inverted_error;

  SrInput outside = good;
  outside.findings = {finding_on(image, "nodule", 100, 100, 129, 120)};  // CT_small is 128 x 128
  EXPECT_NE(build_error(outside).find("outside image"), std::string::npos) << build_error(outside);

  SrInput beyond_frames = base_input({&two_frames});
  SrFinding frame_3 = finding_on(two_frames, "polyp", 1, 1, 5, 5);
  frame_3.frame = 3;
  beyond_frames.findings = {frame_3};
  const std::string frame_error = build_error(beyond_frames);
  EXPECT_NE(frame_error.find("frame 3 is beyond"), std::string::npos) << frame_error;

  SrInput no_frame = base_input({&two_frames});
  no_frame.findings = {finding_on(two_frames, "polyp", 1, 1, 5, 5)};
  EXPECT_NE(build_error(no_frame).find("names no frame"), std::string::npos) << build_error(no_frame);

  SrInput no_device = good;
  no_device.device_observer_uid.clear();
  EXPECT_NE(build_error(no_device).find("device_observer_uid is empty"), std::string::npos) << build_error(no_device);

  SrInput bad_device = good;
  bad_device.device_observer_uid = "1.2.abc";
  EXPECT_NE(build_error(bad_device).find("not a valid DICOM UID"), std::string::npos) << build_error(bad_device);

  SrInput wrong_class = good;
  SrFinding wrong_class_finding = finding_on(image, "nodule", 1, 1, 5, 5);
  wrong_class_finding.sop_class_uid = "1.2.840.10008.5.1.4.1.1.4";
  wrong_class.findings = {wrong_class_finding};
  EXPECT_NE(build_error(wrong_class).find("SOP Class UID"), std::string::npos) << build_error(wrong_class);

  SrInput bad_confidence = good;
  SrFinding overconfident = finding_on(image, "nodule", 1, 1, 5, 5);
  overconfident.confidence = 150.0;
  bad_confidence.findings = {overconfident};
  EXPECT_NE(build_error(bad_confidence).find("outside 0..100"), std::string::npos) << build_error(bad_confidence);

  SrInput bad_utf8 = good;
  bad_utf8.narrative = "truncated \xE7\xBB";  // first two bytes of a three-byte character
  EXPECT_NE(build_error(bad_utf8).find("narrative is not valid UTF-8"), std::string::npos) << build_error(bad_utf8);

  SrInput long_form_language = good;
  long_form_language.language = "zh-CN";
  EXPECT_NO_THROW(build_sr(long_form_language));

  SrInput bad_language = good;
  bad_language.language = "fr";
  EXPECT_NE(build_error(bad_language).find("language 'fr'"), std::string::npos) << build_error(bad_language);

  SrInput bad_datetime = good;
  bad_datetime.content_datetime = "2026-11-25";
  EXPECT_NE(build_error(bad_datetime).find("content_datetime"), std::string::npos) << build_error(bad_datetime);

  SrInput other_study_predecessor = good;
  other_study_predecessor.predecessor =
      SrPredecessor{"1.2.3.99", "1.2.3.99.1", kComprehensive3DSr, "1.2.3.99.1.1"};
  EXPECT_NE(build_error(other_study_predecessor).find("predecessor 1.2.3.99.1.1 is in study 1.2.3.99"),
            std::string::npos)
      << build_error(other_study_predecessor);

  SrInput two_studies = base_input({&image, &two_frames});
  EXPECT_NE(build_error(two_studies).find("not in study"), std::string::npos) << build_error(two_studies);

  SrInput duplicate = base_input({&image, &image});
  EXPECT_NE(build_error(duplicate).find("repeats SOP Instance UID"), std::string::npos) << build_error(duplicate);

  SrInput not_an_image = base_input({&rt_dose});
  SrFinding on_dose = finding_on(rt_dose, "lesion", 1, 1, 5, 5);
  on_dose.frame = 1;
  not_an_image.findings = {on_dose};
  EXPECT_NE(build_error(not_an_image).find("is not an image SOP class"), std::string::npos) << build_error(not_an_image);

  SrInput empty_label = good;
  empty_label.findings = {finding_on(image, "  ", 1, 1, 5, 5)};
  EXPECT_NE(build_error(empty_label).find("empty label"), std::string::npos) << build_error(empty_label);
}

}  // namespace
