// build_presentation_state against real readers: every GSPS/CSPS built here is
// saved and checked with dciodvfy (no errors), read back with pydicom
// (tools/sr_check/read_ps.py) and compared with the input boxes, and rendered
// onto its image with DCMTK's dcmp2pgm.
#include "reports/presentation_state.h"

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
#include <string>

namespace fs = std::filesystem;
using firstread::reports::build_presentation_state;
using firstread::reports::BuiltPs;
using firstread::reports::PsAnnotation;
using firstread::reports::PsInput;
using nlohmann::json;

namespace {

const std::string kTestFiles = "/usr/lib/python3/dist-packages/pydicom/data/test_files/";
const std::string kReadPs = std::string(FIRSTREAD_SOURCE_DIR) + "/tools/sr_check/read_ps.py";

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr
};

CommandResult run(const std::string& command) {
  CommandResult result;
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return result;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof buffer, pipe)) > 0) result.output.append(buffer, n);
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

std::string get(DcmDataset& dataset, const DcmTagKey& tag) {
  OFString value;
  dataset.findAndGetOFString(tag, value);
  return value.c_str();
}

PsAnnotation box_on(DcmDataset& image, const std::string& label, double x1, double y1, double x2, double y2) {
  PsAnnotation a;
  a.label = label;
  a.sop_instance_uid = get(image, DCM_SOPInstanceUID);
  a.x1 = x1;
  a.y1 = y1;
  a.x2 = x2;
  a.y2 = y2;
  return a;
}

json rectangle(const PsAnnotation& a) {
  return json::array({{a.x1, a.y1}, {a.x2, a.y1}, {a.x2, a.y2}, {a.x1, a.y2}, {a.x1, a.y1}});
}

class PresentationStateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/presentation_state_test.XXXXXX";
    ASSERT_NE(mkdtemp(pattern), nullptr);
    dir_ = pattern;
  }
  void TearDown() override {
    if (HasFailure() || std::getenv("FIRSTREAD_KEEP_SR_FILES") != nullptr) {
      std::cout << "presentation states kept in " << dir_ << "\n";
      return;
    }
    fs::remove_all(dir_);
  }
  // Saves, runs dciodvfy (no "Error" line allowed) and read_ps.py; renders with dcmp2pgm.
  json save_and_check(const BuiltPs& built, const std::string& name, const std::string& image_file) {
    const fs::path path = dir_ / (name + ".dcm");
    EXPECT_TRUE(built.file->saveFile(path.c_str(), EXS_LittleEndianExplicit).good());
    const CommandResult dciodvfy = run("dciodvfy '" + path.string() + "'");
    const std::string iod = built.color ? "ColorSoftcopyPresentationState" : "GrayscaleSoftcopyPresentationState";
    EXPECT_NE(dciodvfy.output.find(iod), std::string::npos) << dciodvfy.output;
    std::istringstream lines(dciodvfy.output);
    for (std::string line; std::getline(lines, line);) {
      EXPECT_NE(line.rfind("Error", 0), 0u) << "dciodvfy " << name << ": " << line << "\n" << dciodvfy.output;
      if (line.rfind("Warning", 0) == 0) std::cout << "[dciodvfy " << name << "] " << line << "\n";
    }
    // dcmp2pgm renders grayscale presentation states only.
    if (!built.color) {
    const CommandResult render = run("dcmp2pgm -p '" + path.string() + "' '" + image_file + "' '" +
                                     (dir_ / (name + ".pgm")).string() + "'");
    EXPECT_EQ(render.exit_code, 0) << "dcmp2pgm " << name << ":\n" << render.output;
    }
    const CommandResult reader = run("/usr/bin/python3 '" + kReadPs + "' '" + path.string() + "'");
    EXPECT_EQ(reader.exit_code, 0) << reader.output;
    if (reader.exit_code != 0) return json::object();
    return json::parse(reader.output);
  }
  fs::path dir_;
};

PsInput input_for(const std::vector<const DcmDataset*>& sources) {
  PsInput input;
  input.sources = sources;
  input.frames_read.assign(sources.size(), 0);
  input.creation_datetime = "20261201101500";
  input.model_name = "demo";
  input.model_version = "0.1";
  return input;
}

}  // namespace

TEST_F(PresentationStateTest, CtGspsCarriesBoxesLabelsWindowAndRescale) {
  DcmFileFormat ct;
  ASSERT_TRUE(ct.loadFile((kTestFiles + "CT_small.dcm").c_str()).good());
  DcmDataset& image = *ct.getDataset();
  PsInput input = input_for({&image});
  PsAnnotation nodule = box_on(image, "nodule", 10.5, 20.0, 40.25, 60.0);
  nodule.confidence = 87.5;
  PsAnnotation chinese = box_on(image, "磨玻璃影", 0.0, 0.0, 128.0, 128.0);
  input.annotations = {nodule, chinese};

  const BuiltPs built = build_presentation_state(input);
  EXPECT_FALSE(built.color);
  EXPECT_EQ(built.sop_class_uid, "1.2.840.10008.5.1.4.1.1.11.1");
  const json ps = save_and_check(built, "ct_gsps", kTestFiles + "CT_small.dcm");
  ASSERT_FALSE(ps.empty());
  EXPECT_EQ(ps["modality"], "PR");
  EXPECT_EQ(ps["study_instance_uid"], get(image, DCM_StudyInstanceUID));
  EXPECT_NE(ps["series_instance_uid"], get(image, DCM_SeriesInstanceUID));
  EXPECT_EQ(ps["series_instance_uid"], built.series_instance_uid);
  EXPECT_EQ(ps["patient_id"], get(image, DCM_PatientID));
  EXPECT_EQ(ps["content_label"], "FIRSTREAD_AI");
  EXPECT_NE(ps["content_description"].get<std::string>().find("AI preliminary"), std::string::npos);
  EXPECT_EQ(ps["creation"], "20261201101500");
  EXPECT_EQ(ps["specific_character_set"], "ISO_IR 192");
  ASSERT_EQ(ps["layers"].size(), 1u);
  EXPECT_EQ(ps["layers"][0]["name"], "FIRSTREAD AI");
  ASSERT_EQ(ps["referenced_series"].size(), 1u);
  EXPECT_EQ(ps["referenced_series"][0]["images"][0]["sop_instance_uid"], nodule.sop_instance_uid);
  ASSERT_EQ(ps["annotations"].size(), 1u);
  const json& on_image = ps["annotations"][0];
  EXPECT_EQ(on_image["images"][0]["sop_instance_uid"], nodule.sop_instance_uid);
  EXPECT_TRUE(on_image["images"][0]["frames"].empty());
  EXPECT_EQ(on_image["layer"], "FIRSTREAD AI");
  ASSERT_EQ(on_image["graphics"].size(), 2u);
  EXPECT_EQ(on_image["graphics"][0]["type"], "POLYLINE");
  EXPECT_EQ(on_image["graphics"][0]["units"], "PIXEL");
  EXPECT_EQ(on_image["graphics"][0]["points"], rectangle(nodule));
  EXPECT_EQ(on_image["graphics"][1]["points"], rectangle(chinese));
  ASSERT_EQ(on_image["texts"].size(), 2u);
  EXPECT_EQ(on_image["texts"][0]["text"], "nodule 87.5 %");
  EXPECT_EQ(on_image["texts"][1]["text"], "磨玻璃影");
  // CT_small has no window: the model's input was the frame's min-max of
  // Hounsfield values (dicom/pixels), which pydicom computes here.
  const CommandResult range = run("/usr/bin/python3 -c \"import pydicom; from pydicom.pixel_data_handlers.util import "
                                  "apply_modality_lut as m; d = pydicom.dcmread('" + kTestFiles +
                                  "CT_small.dcm'); a = m(d.pixel_array, d); print(float(a.min()), float(a.max()))\"");
  ASSERT_EQ(range.exit_code, 0) << range.output;
  std::istringstream values(range.output);
  double low = 0, high = 0;
  values >> low >> high;
  ASSERT_EQ(ps["voi"].size(), 1u);
  EXPECT_DOUBLE_EQ(ps["voi"][0]["center"].get<double>(), (low + high) / 2 + 0.5);
  EXPECT_DOUBLE_EQ(ps["voi"][0]["width"].get<double>(), high - low + 1);
  EXPECT_EQ(ps["voi"][0]["images"][0]["sop_instance_uid"], nodule.sop_instance_uid);
  EXPECT_EQ(ps["rescale"], json::array({"-1024", "1", "HU"}));
  EXPECT_EQ(ps["presentation_lut_shape"], "IDENTITY");
}

TEST_F(PresentationStateTest, MrWindowIsTheOneTheModelSaw) {
  DcmFileFormat mr;
  ASSERT_TRUE(mr.loadFile((kTestFiles + "MR_small.dcm").c_str()).good());
  DcmDataset& image = *mr.getDataset();
  PsInput input = input_for({&image});
  input.annotations = {box_on(image, "lesion", 4, 5, 30, 31)};
  const BuiltPs built = build_presentation_state(input);
  EXPECT_TRUE(built.warnings.empty());
  const json ps = save_and_check(built, "mr_gsps", kTestFiles + "MR_small.dcm");
  ASSERT_FALSE(ps.empty());
  ASSERT_EQ(ps["voi"].size(), 1u);  // MR_small's first Window Center / Width
  EXPECT_DOUBLE_EQ(ps["voi"][0]["center"].get<double>(), 600);
  EXPECT_DOUBLE_EQ(ps["voi"][0]["width"].get<double>(), 1600);
  EXPECT_EQ(ps["rescale"], json::array({"", "", ""}));
  EXPECT_EQ(ps["annotations"][0]["graphics"][0]["points"], rectangle(input.annotations[0]));
}

TEST_F(PresentationStateTest, ColourImageGetsACspsWithAnIccProfile) {
  DcmFileFormat rgb;
  ASSERT_TRUE(rgb.loadFile((kTestFiles + "SC_rgb_rle_2frame.dcm").c_str()).good());
  DcmDataset& image = *rgb.getDataset();
  ASSERT_TRUE(image.putAndInsertString(DCM_SOPClassUID, UID_MultiframeTrueColorSecondaryCaptureImageStorage).good());
  const fs::path source = dir_ / "source.dcm";
  ASSERT_TRUE(rgb.saveFile(source.c_str()).good());
  PsInput input = input_for({&image});
  input.frames_read = {1};
  PsAnnotation polyp = box_on(image, "polyp", 25, 30, 75.5, 99);
  polyp.frame = 2;
  input.annotations = {polyp};
  const BuiltPs built = build_presentation_state(input);
  EXPECT_TRUE(built.color);
  EXPECT_EQ(built.sop_class_uid, "1.2.840.10008.5.1.4.1.1.11.2");
  const json ps = save_and_check(built, "rgb_csps", source.string());
  ASSERT_FALSE(ps.empty());
  EXPECT_GT(ps["icc_profile_bytes"].get<int>(), 100);
  EXPECT_TRUE(ps["voi"].empty());
  ASSERT_EQ(ps["annotations"].size(), 1u);
  EXPECT_EQ(ps["annotations"][0]["images"][0]["frames"], json::array({2}));
  EXPECT_EQ(ps["annotations"][0]["graphics"][0]["points"], rectangle(polyp));
  EXPECT_EQ(ps["annotations"][0]["texts"][0]["text"], "polyp");
}

TEST_F(PresentationStateTest, ReRunGoesIntoTheSupersededSeriesWithTheNextNumber) {
  DcmFileFormat ct;
  ASSERT_TRUE(ct.loadFile((kTestFiles + "CT_small.dcm").c_str()).good());
  DcmDataset& image = *ct.getDataset();
  PsInput first = input_for({&image});
  const BuiltPs old = build_presentation_state(first);
  PsInput again = input_for({&image});
  again.series_instance_uid = old.series_instance_uid;
  again.instance_number = 2;
  again.creation_datetime = "20261201111500";
  const BuiltPs rerun = build_presentation_state(again);
  const json ps = save_and_check(rerun, "rerun", kTestFiles + "CT_small.dcm");
  ASSERT_FALSE(ps.empty());
  EXPECT_EQ(ps["series_instance_uid"], old.series_instance_uid);
  EXPECT_NE(ps["sop_instance_uid"], old.sop_instance_uid);
  EXPECT_EQ(ps["instance_number"], 2);
  EXPECT_GT(ps["creation"].get<std::string>(), "20261201101500");
  EXPECT_TRUE(ps["annotations"].empty());  // no findings: the VOI and no boxes
}

TEST(PresentationStateBadInput, EachProblemIsNamed) {
  DcmFileFormat ct;
  ASSERT_TRUE(ct.loadFile((kTestFiles + "CT_small.dcm").c_str()).good());
  DcmDataset& image = *ct.getDataset();
  auto message = [&](PsInput input) {
    try {
      build_presentation_state(input);
    } catch (const std::runtime_error& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  PsInput foreign = input_for({&image});
  foreign.annotations = {box_on(image, "nodule", 1, 1, 2, 2)};
  foreign.annotations[0].sop_instance_uid = "1.2.3.4";
  EXPECT_NE(message(foreign).find("1.2.3.4"), std::string::npos) << message(foreign);
  PsInput outside = input_for({&image});
  outside.annotations = {box_on(image, "nodule", 1, 1, 200, 2)};
  EXPECT_NE(message(outside).find("outside image"), std::string::npos) << message(outside);
  PsInput none = input_for({});
  EXPECT_NE(message(none).find("no source image"), std::string::npos);
}
