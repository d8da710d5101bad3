// Secondary Capture key image with the findings burned in (PS3.3 A.8.1).
#include "reports/key_image.h"

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcdatset.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcuid.h>
#include <ft2build.h>
#include FT_FREETYPE_H

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <mutex>
#include <stdexcept>
#include <string>

#include "dicom/text.h"

namespace firstread::reports {
namespace {

[[noreturn]] void fail(const std::string& message) { throw std::runtime_error("build_key_image: " + message); }

void require_ok(const OFCondition& condition, const std::string& what) {
  if (condition.bad()) fail(what + ": " + condition.text());
}

std::string get_string(DcmItem& item, const DcmTagKey& tag) {
  OFString value;
  if (item.findAndGetOFString(tag, value).bad()) return "";
  return value.c_str();
}

// Fonts in the order tried: WenQuanYi Micro Hei has Latin and CJK glyphs.
const char* const kFonts[] = {"/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
                              "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"};

// One FreeType face shared by all callers (FreeType faces are not thread-safe).
struct Font {
  std::mutex mutex;
  FT_Library library = nullptr;
  FT_Face face = nullptr;
  std::string error;
};

Font& font() {
  static Font f;
  static std::once_flag once;
  std::call_once(once, [] {
    if (FT_Init_FreeType(&f.library) != 0) {
      f.error = "FreeType cannot be initialised";
      return;
    }
    for (const char* path : kFonts)
      if (std::filesystem::exists(path) && FT_New_Face(f.library, path, 0, &f.face) == 0) return;
    f.face = nullptr;
    f.error = "no font found (install fonts-wqy-microhei or fonts-dejavu-core)";
  });
  return f;
}

struct Canvas {
  int width, height;
  std::vector<uint8_t>& rgb;
  void blend(int x, int y, const uint8_t colour[3], int alpha) {
    if (x < 0 || y < 0 || x >= width || y >= height || alpha <= 0) return;
    uint8_t* p = &rgb[(static_cast<size_t>(y) * width + x) * 3];
    for (int c = 0; c < 3; ++c) p[c] = static_cast<uint8_t>((colour[c] * alpha + p[c] * (255 - alpha)) / 255);
  }
  void fill(int x1, int y1, int x2, int y2, const uint8_t colour[3], int alpha) {
    for (int y = std::max(0, y1); y < std::min(height, y2); ++y)
      for (int x = std::max(0, x1); x < std::min(width, x2); ++x) blend(x, y, colour, alpha);
  }
};

// Width of a text line in pixels at the face's current size.
int text_width(FT_Face face, const std::u32string& text) {
  int width = 0;
  for (char32_t cp : text)
    if (FT_Load_Char(face, cp, FT_LOAD_DEFAULT) == 0) width += static_cast<int>(face->glyph->advance.x >> 6);
  return width;
}

// Draws one line with its top-left at (x, y), pixel_height high.
void draw_text(Canvas& canvas, const std::string& utf8, int x, int y, int pixel_height, const uint8_t colour[3]) {
  Font& f = font();
  std::lock_guard<std::mutex> lock(f.mutex);
  if (f.face == nullptr) fail(f.error);
  FT_Set_Pixel_Sizes(f.face, 0, static_cast<FT_UInt>(pixel_height));
  const int ascender = static_cast<int>(f.face->size->metrics.ascender >> 6);
  int pen = x;
  for (char32_t cp : dicom::utf8_code_points(utf8)) {
    if (FT_Load_Char(f.face, cp, FT_LOAD_RENDER) != 0) continue;
    const FT_GlyphSlot g = f.face->glyph;
    for (unsigned row = 0; row < g->bitmap.rows; ++row)
      for (unsigned col = 0; col < g->bitmap.width; ++col)
        canvas.blend(pen + g->bitmap_left + static_cast<int>(col), y + ascender - g->bitmap_top + static_cast<int>(row),
                     colour, g->bitmap.buffer[row * g->bitmap.pitch + col]);
    pen += static_cast<int>(g->advance.x >> 6);
  }
}

int measure(const std::string& utf8, int pixel_height) {
  Font& f = font();
  std::lock_guard<std::mutex> lock(f.mutex);
  if (f.face == nullptr) fail(f.error);
  FT_Set_Pixel_Sizes(f.face, 0, static_cast<FT_UInt>(pixel_height));
  return text_width(f.face, dicom::utf8_code_points(utf8));
}

std::string format_number(double value) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.6g", value);
  return buffer;
}

void put(DcmItem& item, const DcmTagKey& tag, const std::string& value, const std::string& what) {
  require_ok(item.putAndInsertString(tag, value.c_str()), what);
}

}  // namespace

std::vector<uint8_t> burn_in(int width, int height, const std::vector<uint8_t>& rgb,
                             const std::vector<KeyImageBox>& boxes) {
  if (width <= 0 || height <= 0 || rgb.size() != static_cast<size_t>(width) * height * 3)
    fail("the frame is not " + std::to_string(width) + " x " + std::to_string(height) + " RGB");
  std::vector<uint8_t> out = rgb;
  Canvas canvas{width, height, out};
  static const uint8_t kYellow[3] = {255, 221, 0}, kBlack[3] = {0, 0, 0}, kWhite[3] = {255, 255, 255};
  const int side = std::min(width, height);
  const int line = std::max(1, side / 256);
  const int text_height = std::max(10, side / 28);
  const int banner_height = std::max(12, side / 20);
  const int banner_bottom = banner_height + banner_height / 3;
  for (const KeyImageBox& box : boxes) {
    const int x1 = static_cast<int>(std::floor(box.x1)), y1 = static_cast<int>(std::floor(box.y1));
    const int x2 = static_cast<int>(std::ceil(box.x2)), y2 = static_cast<int>(std::ceil(box.y2));
    canvas.fill(x1, y1, x2, y1 + line, kYellow, 255);
    canvas.fill(x1, y2 - line, x2, y2, kYellow, 255);
    canvas.fill(x1, y1, x1 + line, y2, kYellow, 255);
    canvas.fill(x2 - line, y1, x2, y2, kYellow, 255);
    std::string label = box.label;
    if (box.confidence) label += " " + format_number(*box.confidence) + " %";
    const int label_width = measure(label, text_height);
    const int pad = std::max(1, text_height / 6);
    // Above the box, or inside its top edge when the box touches the image top.
    // Never under the banner.
    int top = y1 - text_height - 2 * pad;
    if (top < banner_bottom) top = std::max(y1 + line, banner_bottom);
    const int left = std::min(std::max(0, x1), std::max(0, width - label_width - 2 * pad));
    canvas.fill(left, top, left + label_width + 2 * pad, top + text_height + 2 * pad, kBlack, 170);
    draw_text(canvas, label, left + pad, top + pad, text_height, kYellow);
  }
  // The banner across the top: what this image is, on every copy of it.
  canvas.fill(0, 0, width, banner_bottom, kBlack, 200);
  int banner_text = banner_height;
  while (banner_text > 6 && measure(kKeyImageBanner, banner_text) > width - 4) --banner_text;
  const int banner_width = measure(kKeyImageBanner, banner_text);
  draw_text(canvas, kKeyImageBanner, std::max(0, (width - banner_width) / 2), banner_height / 6, banner_text, kWhite);
  return out;
}

BuiltKeyImage build_key_image(const KeyImageInput& input) {
  if (input.source == nullptr) fail("no source image");
  if (input.rgb == nullptr) fail("no frame pixels");
  if (input.creation_datetime.size() < 14 || input.creation_datetime.size() > 21)
    fail("creation_datetime '" + input.creation_datetime + "' is not YYYYMMDDHHMMSS[.FFFFFF]");
  auto& source = const_cast<DcmDataset&>(*input.source);  // only read (see build_sr's note on threads)
  const std::string source_uid = get_string(source, DCM_SOPInstanceUID);
  const std::string source_class = get_string(source, DCM_SOPClassUID);
  if (source_uid.empty() || source_class.empty()) fail("the source has no SOP Class/Instance UID");
  for (const KeyImageBox& b : input.boxes)
    if (!(b.x1 >= 0 && b.y1 >= 0 && b.x2 <= input.width && b.y2 <= input.height && b.x1 < b.x2 && b.y1 < b.y2))
      fail("box '" + b.label + "' [" + format_number(b.x1) + ", " + format_number(b.y1) + ", " + format_number(b.x2) +
           ", " + format_number(b.y2) + "] is empty or outside the " + std::to_string(input.width) + " x " +
           std::to_string(input.height) + " frame of " + source_uid);
  const std::vector<uint8_t> marked = burn_in(input.width, input.height, *input.rgb, input.boxes);

  BuiltKeyImage built;
  built.file = std::make_unique<DcmFileFormat>();
  DcmDataset& out = *built.file->getDataset();
  // Patient and study from the source, as UTF-8.
  for (const DcmTagKey& tag : {DCM_SpecificCharacterSet, DCM_PatientName, DCM_PatientID, DCM_IssuerOfPatientID,
                               DCM_PatientBirthDate, DCM_PatientSex, DCM_StudyInstanceUID, DCM_StudyDate, DCM_StudyTime,
                               DCM_ReferringPhysicianName, DCM_StudyID, DCM_AccessionNumber, DCM_StudyDescription}) {
    DcmElement* element = nullptr;
    if (source.findAndGetElement(tag, element).good() && element != nullptr)
      require_ok(out.insert(OFstatic_cast(DcmElement*, element->clone()), true), "copying " + std::string(tag.toString().c_str()));
  }
  require_ok(out.convertToUTF8(), "converting patient/study text to UTF-8");
  for (const DcmTagKey& tag : {DCM_PatientName, DCM_PatientID, DCM_PatientBirthDate, DCM_PatientSex, DCM_StudyDate,
                               DCM_StudyTime, DCM_ReferringPhysicianName, DCM_StudyID, DCM_AccessionNumber,
                               DCM_PatientOrientation, DCM_ContentDate, DCM_ContentTime, DCM_Laterality})
    if (!out.tagExists(tag)) require_ok(out.insertEmptyElement(tag), "empty " + std::string(tag.toString().c_str()));
  put(out, DCM_SpecificCharacterSet, "ISO_IR 192", "Specific Character Set");

  char uid[100];
  built.sop_class_uid = UID_SecondaryCaptureImageStorage;
  built.sop_instance_uid = dcmGenerateUniqueIdentifier(uid, SITE_INSTANCE_UID_ROOT);
  built.series_instance_uid =
      input.series_instance_uid.empty() ? dcmGenerateUniqueIdentifier(uid, SITE_SERIES_UID_ROOT) : input.series_instance_uid;
  const std::string date = input.creation_datetime.substr(0, 8), time = input.creation_datetime.substr(8);
  put(out, DCM_SOPClassUID, built.sop_class_uid, "SOP Class UID");
  put(out, DCM_SOPInstanceUID, built.sop_instance_uid, "SOP Instance UID");
  put(out, DCM_InstanceCreationDate, date, "Instance Creation Date");
  put(out, DCM_InstanceCreationTime, time, "Instance Creation Time");
  put(out, DCM_SeriesInstanceUID, built.series_instance_uid, "Series Instance UID");
  put(out, DCM_SeriesNumber, kKeyImageSeriesNumber, "Series Number");
  put(out, DCM_SeriesDescription, kKeyImageSeriesDescription, "Series Description");
  put(out, DCM_Modality, "OT", "Modality");
  put(out, DCM_InstanceNumber, std::to_string(input.instance_number), "Instance Number");
  put(out, DCM_ContentDate, date, "Content Date");
  put(out, DCM_ContentTime, time, "Content Time");
  put(out, DCM_Manufacturer, input.manufacturer, "Manufacturer");
  // SC Equipment: made on a workstation from the model's frame.
  put(out, DCM_ConversionType, "WSD", "Conversion Type");
  if (!input.model_name.empty()) put(out, DCM_SecondaryCaptureDeviceManufacturerModelName, input.model_name, "SC Device Model Name");
  if (!input.model_version.empty()) put(out, DCM_SecondaryCaptureDeviceSoftwareVersions, input.model_version, "SC Device Software Versions");

  // What it is and where it comes from.
  put(out, DCM_ImageType, "DERIVED\\SECONDARY", "Image Type");
  put(out, DCM_BurnedInAnnotation, "YES", "Burned In Annotation");
  put(out, DCM_DerivationDescription, "firstread AI preliminary findings burned into the frame the model read",
      "Derivation Description");
  put(out, DCM_ImageComments, kKeyImageBanner, "Image Comments");
  DcmItem* ref = nullptr;
  require_ok(out.findOrCreateSequenceItem(DCM_SourceImageSequence, ref, -2), "Source Image Sequence");
  put(*ref, DCM_ReferencedSOPClassUID, source_class, "Referenced SOP Class UID");
  put(*ref, DCM_ReferencedSOPInstanceUID, source_uid, "Referenced SOP Instance UID");
  if (input.frame > 0) put(*ref, DCM_ReferencedFrameNumber, std::to_string(input.frame), "Referenced Frame Number");
  DcmItem* purpose = nullptr;
  require_ok(ref->findOrCreateSequenceItem(DCM_PurposeOfReferenceCodeSequence, purpose, -2), "Purpose of Reference");
  put(*purpose, DCM_CodeValue, "121322", "Purpose code");
  put(*purpose, DCM_CodingSchemeDesignator, "DCM", "Purpose scheme");
  put(*purpose, DCM_CodeMeaning, "Source image for image processing operation", "Purpose meaning");

  // Image Pixel: 8-bit RGB, interleaved.
  require_ok(out.putAndInsertUint16(DCM_SamplesPerPixel, 3), "Samples per Pixel");
  put(out, DCM_PhotometricInterpretation, "RGB", "Photometric Interpretation");
  require_ok(out.putAndInsertUint16(DCM_PlanarConfiguration, 0), "Planar Configuration");
  require_ok(out.putAndInsertUint16(DCM_Rows, static_cast<Uint16>(input.height)), "Rows");
  require_ok(out.putAndInsertUint16(DCM_Columns, static_cast<Uint16>(input.width)), "Columns");
  require_ok(out.putAndInsertUint16(DCM_BitsAllocated, 8), "Bits Allocated");
  require_ok(out.putAndInsertUint16(DCM_BitsStored, 8), "Bits Stored");
  require_ok(out.putAndInsertUint16(DCM_HighBit, 7), "High Bit");
  require_ok(out.putAndInsertUint16(DCM_PixelRepresentation, 0), "Pixel Representation");
  put(out, DCM_LossyImageCompression, "00", "Lossy Image Compression");
  require_ok(out.putAndInsertUint8Array(DCM_PixelData, marked.data(), marked.size()), "Pixel Data");
  return built;
}

}  // namespace firstread::reports
