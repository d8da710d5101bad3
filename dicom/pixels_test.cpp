// dicom/pixels: every sample DICOM file Debian ships either decodes to
// the same 8-bit RGB as tools/pixel_reference/decode.py (pydicom) within one
// grey level, or fails with a named reason; plus targeted cases built with
// DCMTK (truncated pixel data, absurd sizes, MONOCHROME1, multi-frame, signed
// 16-bit with rescale, palette colour, planar configuration 1).
#include "dicom/pixels.h"

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcdatset.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcpixel.h>
#include <dcmtk/dcmdata/dcpixseq.h>
#include <dcmtk/dcmdata/dcpxitem.h>
#include <dcmtk/dcmdata/dcuid.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstdio>
#include <algorithm>
#include <filesystem>
#include <functional>
#include <iterator>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using firstread::dicom::decode_dicom_frame;
using firstread::dicom::DicomImageError;
using firstread::dicom::DicomPixels;
using RgbImage = firstread::dicom::Rgb8Image;

namespace {

const char* kPydicomSamples = "/usr/lib/python3/dist-packages/pydicom/data/test_files";
const char* kDicom3toolsSamples = "/usr/share/doc/dicom3tools/examples";
const char* kGdcmSamples = "/usr/share/doc/libgdcm3.0/examples";

std::string python() {
  const char* override_python = std::getenv("FIRSTREAD_REF_PYTHON");
  return override_python ? override_python : "/usr/bin/python3";
}

// The reference sits beside the sources: dicom/../tools/pixel_reference.
std::string reference_script() {
  return (fs::path(__FILE__).parent_path().parent_path() / "tools" / "pixel_reference" / "decode.py").string();
}

bool reference_available() { return fs::exists(python()) && fs::exists(reference_script()); }

// A scratch directory for written DICOM files and reference output.
const fs::path& scratch_dir() {
  static fs::path dir = [] {
    std::string pattern = (fs::temp_directory_path() / "firstread_dicom_image_XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    return fs::path(pattern);
  }();
  return dir;
}

// Removes the scratch directory when the test program ends.
class ScratchCleanup : public ::testing::Environment {
 public:
  void TearDown() override {
    std::error_code ignored;
    fs::remove_all(scratch_dir(), ignored);
  }
};
const ::testing::Environment* const kScratchCleanup = ::testing::AddGlobalTestEnvironment(new ScratchCleanup);

struct ReferenceResult {
  bool ok = false;
  std::string reason;
  std::string window, decoder;
  int frame = 0, frames = 0;
  RgbImage image;
};

RgbImage read_ppm(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::string magic;
  int width = 0, height = 0, max_value = 0;
  in >> magic >> width >> height >> max_value;
  in.get();
  if (magic != "P6" || max_value != 255 || width <= 0 || height <= 0) throw std::runtime_error("bad PPM " + path.string());
  RgbImage image;
  image.width = width;
  image.height = height;
  image.rgb.resize(size_t(width) * height * 3);
  in.read(reinterpret_cast<char*>(image.rgb.data()), std::streamsize(image.rgb.size()));
  if (!in) throw std::runtime_error("short PPM " + path.string());
  return image;
}

// Runs the reference once for many (file, frame) pairs (one Python start).
std::vector<ReferenceResult> run_reference(const std::vector<std::pair<std::string, int>>& jobs) {
  static int batch = 0;
  const fs::path manifest = scratch_dir() / ("manifest" + std::to_string(++batch) + ".txt");
  std::vector<fs::path> outputs;
  {
    std::ofstream out(manifest);
    for (size_t i = 0; i < jobs.size(); ++i) {
      outputs.push_back(scratch_dir() / ("ref" + std::to_string(batch) + "_" + std::to_string(i) + ".ppm"));
      out << jobs[i].first << '\t' << jobs[i].second << '\t' << outputs.back().string() << '\n';
    }
  }
  std::string command = python() + " " + reference_script() + " --batch " + manifest.string();
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) throw std::runtime_error("cannot run " + command);
  std::string text;
  char chunk[4096];
  size_t n;
  while ((n = fread(chunk, 1, sizeof chunk, pipe)) > 0) text.append(chunk, n);
  int status = pclose(pipe);
  if (status != 0) throw std::runtime_error("reference exited with " + std::to_string(status) + ": " + command);

  std::vector<ReferenceResult> results;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.empty()) continue;
    nlohmann::json j = nlohmann::json::parse(line);
    ReferenceResult r;
    r.ok = j.at("ok").get<bool>();
    if (r.ok) {
      r.window = j.at("window").get<std::string>();
      r.decoder = j.at("decoder").get<std::string>();
      r.frame = j.at("frame").get<int>();
      r.frames = j.at("frames").get<int>();
      r.image = read_ppm(outputs[results.size()]);
    } else {
      r.reason = j.at("reason").get<std::string>();
    }
    results.push_back(std::move(r));
  }
  if (results.size() != jobs.size()) throw std::runtime_error("reference gave " + std::to_string(results.size()) + " results");
  return results;
}

// Largest per-channel difference, or -1 when the sizes differ.
int max_difference(const RgbImage& a, const RgbImage& b) {
  if (a.width != b.width || a.height != b.height || a.rgb.size() != b.rgb.size()) return -1;
  int worst = 0;
  for (size_t i = 0; i < a.rgb.size(); ++i) worst = std::max(worst, std::abs(int(a.rgb[i]) - int(b.rgb[i])));
  return worst;
}

// Decodes with the engine and with the reference; expects agreement within 1.
DicomPixels expect_matches_reference(const std::string& path, int frame) {
  DicomPixels ours = decode_dicom_frame(path, frame);
  if (!reference_available()) return ours;
  ReferenceResult ref = run_reference({{path, frame}}).at(0);
  EXPECT_TRUE(ref.ok) << path << ": reference failed: " << ref.reason;
  if (ref.ok) {
    EXPECT_EQ(ours.frame, ref.frame) << path;
    EXPECT_EQ(ours.window, ref.window) << path;
    int diff = max_difference(ours.image, ref.image);
    EXPECT_GE(diff, 0) << path << ": size " << ours.image.width << "x" << ours.image.height << " vs reference "
                       << ref.image.width << "x" << ref.image.height;
    EXPECT_LE(diff, 1) << path;
  }
  return ours;
}

std::vector<std::string> sample_files() {
  std::vector<std::string> files;
  for (const char* dir : {kPydicomSamples, kDicom3toolsSamples, kGdcmSamples}) {
    if (!fs::is_directory(dir)) continue;
    for (const auto& entry : fs::directory_iterator(dir))
      if (entry.path().extension() == ".dcm") files.push_back(entry.path().string());
  }
  std::sort(files.begin(), files.end());
  return files;
}

std::string ct_small() { return std::string(kPydicomSamples) + "/CT_small.dcm"; }

// A dataset with the image pixel attributes set (8 or 16 bits, native).
void set_image_attributes(DcmDataset& ds, int rows, int columns, int samples, int bits, bool is_signed,
                          const char* photometric, int frames = 1) {
  char uid[100];
  ds.putAndInsertString(DCM_SOPClassUID, UID_SecondaryCaptureImageStorage);
  ds.putAndInsertString(DCM_SOPInstanceUID, dcmGenerateUniqueIdentifier(uid, SITE_INSTANCE_UID_ROOT));
  ds.putAndInsertUint16(DCM_Rows, Uint16(rows));
  ds.putAndInsertUint16(DCM_Columns, Uint16(columns));
  ds.putAndInsertUint16(DCM_SamplesPerPixel, Uint16(samples));
  ds.putAndInsertUint16(DCM_BitsAllocated, Uint16(bits));
  ds.putAndInsertUint16(DCM_BitsStored, Uint16(bits));
  ds.putAndInsertUint16(DCM_HighBit, Uint16(bits - 1));
  ds.putAndInsertUint16(DCM_PixelRepresentation, is_signed ? 1 : 0);
  ds.putAndInsertString(DCM_PhotometricInterpretation, photometric);
  if (samples > 1) ds.putAndInsertUint16(DCM_PlanarConfiguration, 0);
  if (frames > 1) ds.putAndInsertString(DCM_NumberOfFrames, std::to_string(frames).c_str());
}

std::string save(DcmDataset& ds, const std::string& file_name) {
  std::string path = (scratch_dir() / file_name).string();
  DcmFileFormat file(&ds);
  OFCondition status = file.saveFile(path.c_str(), EXS_LittleEndianExplicit);
  if (status.bad()) throw std::runtime_error("cannot write " + path + ": " + status.text());
  return path;
}

std::string load_modify_save(const std::string& source, const std::string& file_name,
                             const std::function<void(DcmDataset&)>& modify) {
  DcmFileFormat file;
  if (file.loadFile(source.c_str()).bad()) throw std::runtime_error("cannot read " + source);
  file.loadAllDataIntoMemory();
  modify(*file.getDataset());
  return save(*file.getDataset(), file_name);
}

// Expects a DicomImageError whose message contains every given fragment.
void expect_error(const std::function<void()>& action, std::vector<std::string> fragments) {
  try {
    action();
    ADD_FAILURE() << "expected DicomImageError";
  } catch (const DicomImageError& error) {
    std::string message = error.what();
    for (const auto& fragment : fragments) EXPECT_NE(message.find(fragment), std::string::npos) << message;
  }
}

}  // namespace

// Every shipped sample: match the reference or fail with a reason. Prints the table.
TEST(DicomImage, SampleFilesMatchReferenceOrFailWithReason) {
  std::vector<std::string> files = sample_files();
  if (files.empty()) GTEST_SKIP() << "no sample DICOM files installed";

  std::vector<std::pair<std::string, int>> jobs;
  for (const auto& file : files) jobs.push_back({file, -1});  // the middle frame, as routing picks
  std::vector<ReferenceResult> references;
  if (reference_available()) references = run_reference(jobs);

  int matches = 0, engine_failures = 0, no_pixel_data = 0, unverified = 0, mismatches = 0;
  std::ostringstream table;
  for (size_t i = 0; i < files.size(); ++i) {
    const std::string name = fs::path(files[i]).filename().string();
    std::string result, detail;
    try {
      DicomPixels ours = decode_dicom_frame(files[i], -1);
      std::string what = std::to_string(ours.image.width) + "x" + std::to_string(ours.image.height) + " frame " +
                         std::to_string(ours.frame) + "/" + std::to_string(ours.frames) + " " + ours.photometric +
                         ", " + ours.window;
      if (references.empty()) {
        result = "decoded";
        detail = what;
        ++unverified;
      } else if (!references[i].ok) {
        result = "UNVERIFIED";
        detail = what + "; reference failed: " + references[i].reason;
        ++unverified;
      } else {
        int diff = max_difference(ours.image, references[i].image);
        if (diff >= 0 && diff <= 1) {
          result = "match";
          detail = what + " (max diff " + std::to_string(diff) + ", " + references[i].decoder + ")";
          ++matches;
        } else {
          result = "MISMATCH";
          detail = what + (diff < 0 ? std::string(" size differs") : " max diff " + std::to_string(diff)) +
                   " vs reference " + references[i].window;
          ++mismatches;
        }
      }
    } catch (const DicomImageError& error) {
      std::string message = error.what();
      // The message starts with the path; the table already names the file.
      detail = message.rfind(files[i], 0) == 0 ? message.substr(files[i].size()) : message;
      if (detail.rfind(": ", 0) == 0) detail = detail.substr(2);
      if (detail.rfind(" ", 0) == 0) detail = detail.substr(1);
      if (detail == "no pixel data") {
        result = "no pixel data";
        ++no_pixel_data;
      } else {
        result = "failed";
        ++engine_failures;
      }
    }
    // Anything other than DicomImageError propagates and fails the test:
    // bad input must surface as a named reason, never another exception.
    char line[64];
    std::snprintf(line, sizeof line, "%-44s %-14s ", name.c_str(), result.c_str());
    table << line << detail << '\n';
  }
  std::printf("%s", table.str().c_str());
  std::printf("match %d, failed with reason %d, no pixel data %d, unverified %d, mismatch %d (of %zu)\n", matches,
              engine_failures, no_pixel_data, unverified, mismatches, files.size());
  EXPECT_EQ(mismatches, 0);
  if (reference_available() && fs::is_directory(kPydicomSamples)) {
    // Every file the engine decodes must be checked against the reference.
    EXPECT_EQ(unverified, 0);
    // Debian 12 (python3-pydicom 2.3.1 samples, dicom3tools and libgdcm3.0
    // examples) gives 50; fewer means a regression.
    EXPECT_GE(matches, 50);
  }
}

TEST(DicomImage, TruncatedPixelDataFailsWithReason) {
  std::string path = load_modify_save(ct_small(), "truncated.dcm", [](DcmDataset& ds) {
    const Uint8* bytes = nullptr;
    unsigned long length = 0;
    ASSERT_TRUE(ds.findAndGetUint8Array(DCM_PixelData, bytes, &length).good());
    std::vector<Uint8> half(bytes, bytes + length / 2);
    ds.putAndInsertUint8Array(DCM_PixelData, half.data(), half.size());
  });
  expect_error([&] { decode_dicom_frame(path); }, {path, "shorter than", "16384 bytes", "32768"});
}

TEST(DicomImage, AbsurdRowsAndColumnsFailWithReason) {
  std::string zero = load_modify_save(ct_small(), "zero_rows.dcm", [](DcmDataset& ds) {
    ds.putAndInsertUint16(DCM_Rows, 0);
  });
  expect_error([&] { decode_dicom_frame(zero); }, {zero, "Rows=0"});
  std::string huge = load_modify_save(ct_small(), "huge_columns.dcm", [](DcmDataset& ds) {
    ds.putAndInsertUint16(DCM_Columns, 40000);
  });
  expect_error([&] { decode_dicom_frame(huge); }, {huge, "Columns=40000"});
  // Each side allowed, but the pixel count is beyond kMaxFramePixels; the
  // pixel data is tiny, so nothing may be allocated for the promise.
  std::string bomb = load_modify_save(ct_small(), "bomb.dcm", [](DcmDataset& ds) {
    ds.putAndInsertUint16(DCM_Rows, 32768);
    ds.putAndInsertUint16(DCM_Columns, 32768);
  });
  expect_error([&] { decode_dicom_frame(bomb); }, {bomb, "exceeds"});
  // Within limits but far more than the file holds.
  std::string promise = load_modify_save(ct_small(), "promise.dcm", [](DcmDataset& ds) {
    ds.putAndInsertUint16(DCM_Rows, 16000);
    ds.putAndInsertUint16(DCM_Columns, 16000);
  });
  expect_error([&] { decode_dicom_frame(promise); }, {promise, "shorter than"});
}

TEST(DicomImage, OtherBadInputFailsWithReason) {
  std::string no_pixels = load_modify_save(ct_small(), "no_pixels.dcm", [](DcmDataset& ds) {
    delete ds.remove(DCM_PixelData);
  });
  expect_error([&] { decode_dicom_frame(no_pixels); }, {no_pixels, "no pixel data"});
  std::string hsv = load_modify_save(ct_small(), "hsv.dcm", [](DcmDataset& ds) {
    ds.putAndInsertString(DCM_PhotometricInterpretation, "HSV");
  });
  expect_error([&] { decode_dicom_frame(hsv); }, {hsv, "unsupported Photometric Interpretation 'HSV'"});
  expect_error([&] { decode_dicom_frame(ct_small(), 1); }, {"frame 1 out of range (1 frames)"});
  expect_error([&] { decode_dicom_frame(ct_small(), -2); }, {"frame -2 out of range"});
  std::string bad_frames = load_modify_save(ct_small(), "bad_frames.dcm", [](DcmDataset& ds) {
    ds.putAndInsertString(DCM_NumberOfFrames, "1A");
  });
  expect_error([&] { decode_dicom_frame(bad_frames); }, {"Number of Frames '1A'"});
  std::string missing = (scratch_dir() / "does_not_exist.dcm").string();
  expect_error([&] { decode_dicom_frame(missing); }, {missing, "cannot read DICOM file"});
}

TEST(DicomImage, Monochrome1IsInverted) {
  std::string mono1 = load_modify_save(ct_small(), "mono1.dcm", [](DcmDataset& ds) {
    ds.putAndInsertString(DCM_PhotometricInterpretation, "MONOCHROME1");
  });
  DicomPixels inverted = expect_matches_reference(mono1, 0);
  DicomPixels normal = decode_dicom_frame(ct_small());
  ASSERT_EQ(inverted.image.rgb.size(), normal.image.rgb.size());
  EXPECT_EQ(inverted.photometric, "MONOCHROME1");
  for (size_t i = 0; i < normal.image.rgb.size(); ++i) ASSERT_EQ(inverted.image.rgb[i], 255 - normal.image.rgb[i]) << i;
}

TEST(DicomImage, MultiFrameMiddleFrame) {
  // 5 frames of 8-bit grey; frame f holds the values f*40 + column, so each
  // frame is recognisable after min-max (which keeps the column ramp).
  const int rows = 6, columns = 7, frames = 5;
  DcmDataset ds;
  set_image_attributes(ds, rows, columns, 1, 8, false, "MONOCHROME2", frames);
  // An identity window (PS3.3 C.11.2.1.2.1 with c=128, w=256 maps v to v).
  ds.putAndInsertString(DCM_WindowCenter, "128");
  ds.putAndInsertString(DCM_WindowWidth, "256");
  std::vector<Uint8> pixels;
  for (int f = 0; f < frames; ++f)
    for (int y = 0; y < rows; ++y)
      for (int x = 0; x < columns; ++x) pixels.push_back(Uint8(f * 40 + x));
  ds.putAndInsertUint8Array(DCM_PixelData, pixels.data(), pixels.size());
  std::string path = save(ds, "multiframe.dcm");

  DicomPixels middle = expect_matches_reference(path, -1);
  EXPECT_EQ(middle.frame, 2);
  EXPECT_EQ(middle.frames, 5);
  EXPECT_EQ(middle.image.rgb[0], 80);                   // frame 2, column 0
  EXPECT_EQ(middle.image.rgb[3 * (columns - 1)], 86);   // frame 2, last column
  DicomPixels last = decode_dicom_frame(path, 4);
  EXPECT_EQ(last.image.rgb[0], 160);
  expect_error([&] { decode_dicom_frame(path, 5); }, {"frame 5 out of range (5 frames)"});
}

TEST(DicomImage, Signed16BitWithRescaleAndWindow) {
  const int rows = 16, columns = 16;
  DcmDataset ds;
  set_image_attributes(ds, rows, columns, 1, 16, true, "MONOCHROME2");
  ds.putAndInsertString(DCM_RescaleSlope, "2");
  ds.putAndInsertString(DCM_RescaleIntercept, "-100");
  ds.putAndInsertString(DCM_WindowCenter, "40\\300");  // the first window is used
  ds.putAndInsertString(DCM_WindowWidth, "400\\1500");
  std::vector<Uint16> pixels;
  for (int i = 0; i < rows * columns; ++i) pixels.push_back(Uint16(Sint16(i * 8 - 1000)));
  ds.putAndInsertUint16Array(DCM_PixelData, pixels.data(), pixels.size());
  std::string path = save(ds, "signed16.dcm");

  DicomPixels out = expect_matches_reference(path, 0);
  EXPECT_EQ(out.window, "window 40/400");
  // Hand-computed: stored -1000 -> HU -2100 -> below the window -> 0;
  // stored 70 (i = 133.75, use i = 134: 72) -> HU 44 -> ((44-39.5)/399+0.5)*255 = 130.4 -> 130.
  EXPECT_EQ(out.image.rgb[0], 0);
  EXPECT_EQ(out.image.rgb[3 * 134], 130);
  EXPECT_EQ(out.image.rgb[3 * (rows * columns - 1)], 255);  // stored 1040 -> HU 1980 -> above
}

TEST(DicomImage, PaletteColourAndPlanarRgb) {
  const int rows = 4, columns = 8;
  DcmDataset palette;
  set_image_attributes(palette, rows, columns, 1, 8, false, "PALETTE COLOR");
  const Uint16 descriptor[3] = {256, 0, 16};
  std::vector<Uint16> red(256), green(256), blue(256);
  for (int i = 0; i < 256; ++i) {
    red[i] = Uint16(i * 257);
    green[i] = Uint16((255 - i) * 257);
    blue[i] = Uint16((i * 7 % 256) * 257);
  }
  for (const auto& tag : {DCM_RedPaletteColorLookupTableDescriptor, DCM_GreenPaletteColorLookupTableDescriptor,
                          DCM_BluePaletteColorLookupTableDescriptor})
    palette.putAndInsertUint16Array(tag, descriptor, 3);
  palette.putAndInsertUint16Array(DCM_RedPaletteColorLookupTableData, red.data(), 256);
  palette.putAndInsertUint16Array(DCM_GreenPaletteColorLookupTableData, green.data(), 256);
  palette.putAndInsertUint16Array(DCM_BluePaletteColorLookupTableData, blue.data(), 256);
  std::vector<Uint8> indices;
  for (int i = 0; i < rows * columns; ++i) indices.push_back(Uint8(i * 8));
  palette.putAndInsertUint8Array(DCM_PixelData, indices.data(), indices.size());
  DicomPixels colour = expect_matches_reference(save(palette, "palette.dcm"), 0);
  EXPECT_EQ(colour.window, "palette");
  EXPECT_EQ(colour.image.rgb[3 * 5 + 0], 40);        // index 40 -> red 40
  EXPECT_EQ(colour.image.rgb[3 * 5 + 1], 255 - 40);  // green reversed
  EXPECT_EQ(colour.image.rgb[3 * 5 + 2], 40 * 7 % 256);

  // RGB with Planar Configuration 1: all reds, then greens, then blues.
  DcmDataset planar;
  set_image_attributes(planar, rows, columns, 3, 8, false, "RGB");
  planar.putAndInsertUint16(DCM_PlanarConfiguration, 1);
  std::vector<Uint8> planes;
  for (int c = 0; c < 3; ++c)
    for (int i = 0; i < rows * columns; ++i) planes.push_back(Uint8(c * 80 + i));
  planar.putAndInsertUint8Array(DCM_PixelData, planes.data(), planes.size());
  DicomPixels rgb = expect_matches_reference(save(planar, "planar.dcm"), 0);
  EXPECT_EQ(rgb.image.rgb[3 * 9 + 0], 9);
  EXPECT_EQ(rgb.image.rgb[3 * 9 + 1], 89);
  EXPECT_EQ(rgb.image.rgb[3 * 9 + 2], 169);
}

TEST(DicomImage, DatasetOverloadAndFrameCount) {
  DcmFileFormat file;
  ASSERT_TRUE(file.loadFile((std::string(kPydicomSamples) + "/rtdose.dcm").c_str()).good());
  EXPECT_EQ(firstread::dicom::dicom_frame_count(*file.getDataset()), 15);
  DicomPixels out = decode_dicom_frame(*file.getDataset(), "rtdose from memory", 14);
  EXPECT_EQ(out.frame, 14);
  EXPECT_EQ(out.image.width, 10);
  expect_error([&] { decode_dicom_frame(*file.getDataset(), "rtdose from memory", 15); },
               {"rtdose from memory", "frame 15 out of range (15 frames)"});
}

TEST(DicomImage, ModalityAndVoiLutSequences) {
  const int rows = 8, columns = 8;
  std::vector<Uint16> pixels;
  for (int i = 0; i < rows * columns; ++i) pixels.push_back(Uint16(i * 60));  // 0..3780, 12 bits stored

  // A Modality LUT that reverses the 12-bit range (entries 16-bit), then min-max.
  DcmDataset modality;
  set_image_attributes(modality, rows, columns, 1, 16, false, "MONOCHROME2");
  modality.putAndInsertUint16(DCM_BitsStored, 12);
  modality.putAndInsertUint16(DCM_HighBit, 11);
  DcmItem* modality_item = nullptr;
  ASSERT_TRUE(modality.findOrCreateSequenceItem(DCM_ModalityLUTSequence, modality_item, -2).good());
  const Uint16 modality_descriptor[3] = {4096, 0, 16};
  std::vector<Uint16> reverse(4096);
  for (int k = 0; k < 4096; ++k) reverse[k] = Uint16((4095 - k) * 16);
  modality_item->putAndInsertUint16Array(DCM_LUTDescriptor, modality_descriptor, 3);
  modality_item->putAndInsertUint16Array(DCM_LUTData, reverse.data(), reverse.size());
  modality.putAndInsertUint16Array(DCM_PixelData, pixels.data(), pixels.size());
  DicomPixels reversed = expect_matches_reference(save(modality, "modality_lut.dcm"), 0);
  EXPECT_EQ(reversed.window, "minmax");
  EXPECT_EQ(reversed.image.rgb[0], 255);
  EXPECT_EQ(reversed.image.rgb[3 * (rows * columns - 1)], 0);

  // A VOI LUT (8-bit entries in 16-bit words) mapping 1000..1255 to 0..255;
  // it wins over the window that is also present.
  DcmDataset voi;
  set_image_attributes(voi, rows, columns, 1, 16, false, "MONOCHROME2");
  voi.putAndInsertString(DCM_WindowCenter, "2000");
  voi.putAndInsertString(DCM_WindowWidth, "4000");
  DcmItem* voi_item = nullptr;
  ASSERT_TRUE(voi.findOrCreateSequenceItem(DCM_VOILUTSequence, voi_item, -2).good());
  const Uint16 voi_descriptor[3] = {256, 1000, 8};
  std::vector<Uint16> ramp(256);
  for (int k = 0; k < 256; ++k) ramp[k] = Uint16(k);
  voi_item->putAndInsertUint16Array(DCM_LUTDescriptor, voi_descriptor, 3);
  voi_item->putAndInsertUint16Array(DCM_LUTData, ramp.data(), ramp.size());
  voi.putAndInsertUint16Array(DCM_PixelData, pixels.data(), pixels.size());
  DicomPixels windowed = expect_matches_reference(save(voi, "voi_lut.dcm"), 0);
  EXPECT_EQ(windowed.window, "voi-lut");
  EXPECT_EQ(windowed.image.rgb[3 * 16], 0);    // 960: below the first mapped value
  EXPECT_EQ(windowed.image.rgb[3 * 17], 20);   // 1020 -> entry 20
  EXPECT_EQ(windowed.image.rgb[3 * 21], 255);  // 1260: above the last entry
}

TEST(DicomImage, EightBitJpegInSixteenBitContainer) {
  // DCMTK's JPEG decoder writes 8-bit samples for 8-bit JPEG data even when
  // Bits Allocated is 16; the frame must come out the same.
  const std::string source = std::string(kPydicomSamples) + "/SC_rgb_jpeg_dcmtk.dcm";
  DcmFileFormat file;
  ASSERT_TRUE(file.loadFile(source.c_str()).good());
  DicomPixels plain = decode_dicom_frame(*file.getDataset(), "plain");
  file.getDataset()->putAndInsertUint16(DCM_BitsAllocated, 16);
  DicomPixels wide = decode_dicom_frame(*file.getDataset(), "16-bit container");
  EXPECT_EQ(max_difference(plain.image, wide.image), 0);
}

// Damaged compressed data (bytes flipped, fragments cut short) must decode to
// something or fail with DicomImageError: never crash, never another exception.
TEST(DicomImage, DamagedCompressedDataNeverCrashes) {
  const std::vector<std::string> compressed = {
      "SC_rgb_jpeg_dcmtk.dcm",        // JPEG baseline, YBR_FULL
      "JPGExtended.dcm",              // JPEG extended 12-bit
      "SC_rgb_jpeg_gdcm.dcm",         // JPEG lossless
      "MR_small_jpeg_ls_lossless.dcm",// JPEG-LS
      "MR_small_RLE.dcm",             // RLE grey 16-bit
      "SC_rgb_rle_2frame.dcm",        // RLE colour, 2 frames
      "MR_small_jp2klossless.dcm",    // JPEG 2000 lossless
      "693_J2KI.dcm",                 // JPEG 2000 lossy
  };
  uint64_t state = 0x9E3779B97F4A7C15ull;  // fixed seed: failures reproduce
  auto next = [&state] {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
  };
  // FIRSTREAD_DAMAGE_VARIANTS raises the count for a longer local run.
  const char* variants_text = std::getenv("FIRSTREAD_DAMAGE_VARIANTS");
  const int variants = variants_text ? std::max(1, std::atoi(variants_text)) : 24;
  int decoded = 0, refused = 0;
  for (const auto& name : compressed) {
    const std::string path = std::string(kPydicomSamples) + "/" + name;
    if (!fs::exists(path)) continue;
    for (int variant = 0; variant < variants; ++variant) {
      DcmFileFormat file;
      ASSERT_TRUE(file.loadFile(path.c_str()).good()) << path;
      DcmDataset& ds = *file.getDataset();
      ds.loadAllDataIntoMemory();
      DcmElement* element = nullptr;
      ASSERT_TRUE(ds.findAndGetElement(DCM_PixelData, element).good());
      DcmPixelSequence* sequence = nullptr;
      ASSERT_TRUE(static_cast<DcmPixelData*>(element)
                      ->getEncapsulatedRepresentation(ds.getOriginalXfer(), nullptr, sequence)
                      .good());
      DcmPixelItem* fragment = nullptr;
      ASSERT_TRUE(sequence->getItem(fragment, 1).good());
      Uint8* bytes = nullptr;
      ASSERT_TRUE(fragment->getUint8Array(bytes).good());
      const Uint32 length = fragment->getLength();
      if (variant % 4 == 3) {
        // Cut the fragment short (keeping an even length).
        Uint32 kept = Uint32(next() % length) & ~1u;
        std::vector<Uint8> head(bytes, bytes + kept);
        fragment->putUint8Array(head.data(), kept);
      } else {
        for (int flip = 0; flip < 1 + variant % 24; ++flip) bytes[next() % length] ^= Uint8(1 + next() % 255);
      }
      try {
        DicomPixels out = decode_dicom_frame(ds, name + " variant " + std::to_string(variant), -1);
        EXPECT_EQ(out.image.rgb.size(), size_t(out.image.width) * out.image.height * 3);
        ++decoded;
      } catch (const DicomImageError&) {
        ++refused;
      }
    }
  }
  std::printf("damaged frames: %d decoded, %d refused with a reason\n", decoded, refused);
}

// Rewrites an encapsulated file with every fragment cut in two and an empty
// Basic Offset Table, as some writers do; JPEG 2000 frames must then be found
// by their SOC+SIZ start.
std::string split_fragments(const std::string& path) {
  DcmFileFormat file;
  if (file.loadFile(path.c_str()).bad()) throw std::runtime_error("cannot read " + path);
  DcmDataset& ds = *file.getDataset();
  ds.loadAllDataIntoMemory();
  const E_TransferSyntax xfer = ds.getOriginalXfer();
  DcmElement* element = nullptr;
  DcmPixelSequence* original = nullptr;
  if (ds.findAndGetElement(DCM_PixelData, element).bad() ||
      static_cast<DcmPixelData*>(element)->getEncapsulatedRepresentation(xfer, nullptr, original).bad())
    throw std::runtime_error("not encapsulated: " + path);
  auto* split = new DcmPixelSequence(DCM_PixelSequenceTag);
  split->insert(new DcmPixelItem(DCM_PixelItemTag));  // empty Basic Offset Table
  for (unsigned long i = 1; i < original->card(); ++i) {
    DcmPixelItem* fragment = nullptr;
    Uint8* bytes = nullptr;
    original->getItem(fragment, i);
    fragment->getUint8Array(bytes);
    const Uint32 length = fragment->getLength();
    const Uint32 half = (length / 2) & ~1u;
    for (auto [start, size] : {std::pair<Uint32, Uint32>{0, half}, {half, length - half}}) {
      auto* piece = new DcmPixelItem(DCM_PixelItemTag);
      piece->putUint8Array(bytes + start, size);
      split->insert(piece);
    }
  }
  static_cast<DcmPixelData*>(element)->putOriginalRepresentation(xfer, nullptr, split);
  const std::string target = path + ".split.dcm";
  if (file.saveFile(target.c_str(), xfer).bad()) throw std::runtime_error("cannot write " + target);
  return target;
}

// Lossless codecs must give exactly the frames the native file gives: the
// same source compressed by DCMTK's dcmcrle / dcmcjpls / dcmcjpeg and by
// GDCM's gdcmconv --j2k (multi-frame JPEG 2000 exercises the fragment split).
TEST(DicomImage, LosslessCodecsMatchNativeFrames) {
  const int rows = 12, columns = 16, frames = 3;
  DcmDataset colour;
  set_image_attributes(colour, rows, columns, 3, 8, false, "RGB", frames);
  std::vector<Uint8> rgb;
  for (int f = 0; f < frames; ++f)
    for (int i = 0; i < rows * columns; ++i)
      for (int c = 0; c < 3; ++c) rgb.push_back(Uint8((i * (3 + c) + f * 50 + c * 70) % 256));
  colour.putAndInsertUint8Array(DCM_PixelData, rgb.data(), rgb.size());
  const std::string colour_path = save(colour, "codec_rgb.dcm");

  DcmDataset grey;
  // Unsigned: gdcmconv --j2k (GDCM 3.0.21) fails on signed multi-frame data.
  set_image_attributes(grey, rows, columns, 1, 16, false, "MONOCHROME2", frames);
  grey.putAndInsertUint16(DCM_BitsStored, 12);
  grey.putAndInsertUint16(DCM_HighBit, 11);
  grey.putAndInsertString(DCM_RescaleSlope, "1");
  grey.putAndInsertString(DCM_RescaleIntercept, "-3072");
  grey.putAndInsertString(DCM_WindowCenter, "-500");
  grey.putAndInsertString(DCM_WindowWidth, "1500");
  std::vector<Uint16> values;
  for (int f = 0; f < frames; ++f)
    for (int i = 0; i < rows * columns; ++i) values.push_back(Uint16((i * 37 + f * 400) % 4096));
  grey.putAndInsertUint16Array(DCM_PixelData, values.data(), values.size());
  const std::string grey_path = save(grey, "codec_grey.dcm");

  struct Tool {
    const char* program;
    const char* options;
  };
  const std::vector<Tool> tools = {{"dcmcrle", ""},         {"dcmcjpls", ""},       {"dcmcjpls", "+in"},
                                   {"dcmcjpeg", "+e1"},     {"gdcmconv", "--j2k"},  {"gdcmconv", "--rle"}};
  int compared = 0;
  for (const std::string& source : {colour_path, grey_path}) {
    for (size_t t = 0; t < tools.size(); ++t) {
      const Tool& tool = tools[t];
      const std::string program = std::string("/usr/bin/") + tool.program;
      if (!fs::exists(program)) continue;
      const std::string target = source + "." + std::to_string(t) + "_" + tool.program + ".dcm";
      const std::string command = program + " " + tool.options + " " + source + " " + target + " >/dev/null 2>&1";
      ASSERT_EQ(std::system(command.c_str()), 0) << command;
      std::vector<std::string> encoded = {target};
      if (std::string(tool.options) == "--j2k") encoded.push_back(split_fragments(target));
      for (const std::string& file : encoded) {
        for (int f = 0; f < frames; ++f) {
          DicomPixels native = decode_dicom_frame(source, f);
          DicomPixels compressed = decode_dicom_frame(file, f);
          EXPECT_EQ(max_difference(native.image, compressed.image), 0) << file << " frame " << f;
          EXPECT_EQ(native.window, compressed.window) << file;
          EXPECT_EQ(compressed.frames, frames) << file;
          ++compared;
        }
      }
    }
  }
  if (compared == 0) GTEST_SKIP() << "no DCMTK or GDCM command-line codecs installed";
}

TEST(DicomImage, EncapsulatedInconsistenciesFailWithReason) {
  const std::string j2k = std::string(kPydicomSamples) + "/MR_small_jp2klossless.dcm";
  // The codestream says 64x64; the attributes say less. Refused before decoding.
  {
    DcmFileFormat file;
    ASSERT_TRUE(file.loadFile(j2k.c_str()).good());
    file.getDataset()->putAndInsertUint16(DCM_Rows, 32);
    expect_error([&] { decode_dicom_frame(*file.getDataset(), "j2k rows"); },
                 {"j2k rows frame 0", "JPEG 2000 image is 64x64, the DICOM attributes say 64x32"});
  }
  // Three frames promised, one codestream present.
  {
    DcmFileFormat file;
    ASSERT_TRUE(file.loadFile(j2k.c_str()).good());
    file.getDataset()->putAndInsertString(DCM_NumberOfFrames, "3");
    expect_error([&] { decode_dicom_frame(*file.getDataset(), "j2k frames", 2); },
                 {"j2k frames", "cannot split 1 fragments into 3 JPEG 2000 frames"});
  }
  // RLE: one fragment per frame is required.
  {
    DcmFileFormat file;
    ASSERT_TRUE(file.loadFile((std::string(kPydicomSamples) + "/MR_small_RLE.dcm").c_str()).good());
    file.getDataset()->putAndInsertString(DCM_NumberOfFrames, "2");
    expect_error([&] { decode_dicom_frame(*file.getDataset(), "rle frames", 1); },
                 {"rle frames", "1 fragments for 2 frames"});
  }
  // Encapsulated data under a transfer syntax nothing here decodes: the JPEG
  // file's Transfer Syntax UID patched to JPEG 2000 Part 2 (same length).
  {
    std::ifstream in(std::string(kPydicomSamples) + "/SC_rgb_jpeg_dcmtk.dcm", std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const size_t at = bytes.find("1.2.840.10008.1.2.4.50");
    ASSERT_NE(at, std::string::npos);
    bytes.replace(at, 22, "1.2.840.10008.1.2.4.92");
    const std::string path = (scratch_dir() / "part2.dcm").string();
    std::ofstream(path, std::ios::binary) << bytes;
    expect_error([&] { decode_dicom_frame(path); }, {path, "unsupported transfer syntax", "1.2.840.10008.1.2.4.92"});
  }
}
