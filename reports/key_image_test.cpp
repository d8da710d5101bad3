// build_key_image on a real CT decoded as the pipeline decodes it for the
// model: dciodvfy clean, and pydicom reads back the flags, the reference and
// pixels that carry the boxes and the banner.
#include "reports/key_image.h"

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcdatset.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "dicom/pixels.h"

namespace fs = std::filesystem;
using firstread::reports::build_key_image;
using firstread::reports::KeyImageBox;
using firstread::reports::KeyImageInput;
using nlohmann::json;

namespace {

const std::string kCt = "/usr/lib/python3/dist-packages/pydicom/data/test_files/CT_small.dcm";

std::pair<int, std::string> run(const std::string& command) {
  std::string output;
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  char buffer[4096];
  size_t n;
  while (pipe && (n = fread(buffer, 1, sizeof buffer, pipe)) > 0) output.append(buffer, n);
  const int status = pipe ? pclose(pipe) : -1;
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, output};
}

}  // namespace

TEST(KeyImage, CtFrameWithBurnedInBoxesIsAValidSecondaryCapture) {
  char pattern[] = "/tmp/key_image_test.XXXXXX";
  ASSERT_NE(mkdtemp(pattern), nullptr);
  const fs::path dir = pattern;
  DcmFileFormat ct;
  ASSERT_TRUE(ct.loadFile(kCt.c_str()).good());
  const auto pixels = firstread::dicom::decode_dicom_frame(*ct.getDataset(), kCt, 0);
  KeyImageInput input;
  input.source = ct.getDataset();
  input.width = pixels.image.width;
  input.height = pixels.image.height;
  input.rgb = &pixels.image.rgb;
  input.boxes = {{"nodule", 87.5, 30, 40, 90, 100}, {"磨玻璃影", std::nullopt, 0, 0, 50, 30}};
  input.creation_datetime = "20261201101500";
  input.model_name = "demo";
  const auto built = build_key_image(input);
  const fs::path path = dir / "key.dcm";
  ASSERT_TRUE(built.file->saveFile(path.c_str(), EXS_LittleEndianExplicit).good());

  const auto [dciodvfy_rc, dciodvfy] = run("dciodvfy '" + path.string() + "'");
  EXPECT_NE(dciodvfy.find("SCImage"), std::string::npos) << dciodvfy;
  std::istringstream lines(dciodvfy);
  for (std::string line; std::getline(lines, line);) {
    EXPECT_NE(line.rfind("Error", 0), 0u) << line << "\n" << dciodvfy;
    if (line.rfind("Warning", 0) == 0) std::cout << "[dciodvfy key image] " << line << "\n";
  }
  // pydicom: flags, reference, and the pixels: the box's left edge is the
  // burn-in yellow, the banner darkens the top rows and has white text.
  const std::string script =
      "import json, pydicom, numpy as np\n"
      "d = pydicom.dcmread('" + path.string() + "'); s = pydicom.dcmread('" + kCt + "')\n"
      "a = d.pixel_array.astype(int)\n"
      "print(json.dumps({'burned': d.BurnedInAnnotation, 'type': list(d.ImageType), 'sop_class': d.SOPClassUID,\n"
      " 'study': d.StudyInstanceUID == s.StudyInstanceUID, 'patient': d.PatientID == s.PatientID,\n"
      " 'source': d.SourceImageSequence[0].ReferencedSOPInstanceUID == s.SOPInstanceUID,\n"
      " 'shape': list(a.shape), 'edge': a[70, 30].tolist(), 'inside': a[70, 60].tolist(),\n"
      " 'banner_white': int(((a[0:9] > 150).all(axis=2)).sum()), 'comment': d.ImageComments}))\n";
  std::ofstream(dir / "check.py") << script;
  const auto [py_rc, py] = run("/usr/bin/python3 '" + (dir / "check.py").string() + "'");
  ASSERT_EQ(py_rc, 0) << py;
  const json got = json::parse(py.substr(py.find('{')));
  EXPECT_EQ(got["burned"], "YES");
  EXPECT_EQ(got["type"], json::array({"DERIVED", "SECONDARY"}));
  EXPECT_EQ(got["sop_class"], "1.2.840.10008.5.1.4.1.1.7");
  EXPECT_TRUE(got["study"].get<bool>());
  EXPECT_TRUE(got["patient"].get<bool>());
  EXPECT_TRUE(got["source"].get<bool>());
  EXPECT_EQ(got["shape"], json::array({128, 128, 3}));
  EXPECT_EQ(got["edge"], json::array({255, 221, 0}));
  const auto inside = got["inside"].get<std::vector<int>>();
  EXPECT_EQ(inside[0], inside[1]) << "inside the box the grey image is untouched";
  EXPECT_GT(got["banner_white"].get<int>(), 5) << "the banner text is drawn";
  EXPECT_EQ(got["comment"], "AI PRELIMINARY \xE2\x80\x94 NOT FOR DIAGNOSIS");
  if (!HasFailure() && std::getenv("FIRSTREAD_KEEP_SR_FILES") == nullptr) fs::remove_all(dir);
  else std::cout << "key image kept in " << dir << "\n";
}
