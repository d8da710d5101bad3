// The marked key image: the model's frame (the 8-bit RGB image it read) with
// every box and label burned in and "AI PRELIMINARY — NOT FOR DIAGNOSIS"
// across the top, as a Secondary Capture (Burned In Annotation YES, Image Type
// DERIVED\SECONDARY) that references its source. Every viewer shows an image.
//
// Pure: pixels, boxes and the source's header in, a dataset out. Text is drawn
// with FreeType from WenQuanYi Micro Hei (Latin and CJK glyphs; Debian's
// fonts-wqy-microhei), DejaVu Sans when that is missing.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

class DcmDataset;
class DcmFileFormat;

namespace firstread::reports {

inline constexpr const char* kKeyImageSeriesNumber = "9903";
inline constexpr const char* kKeyImageSeriesDescription = "firstread AI preliminary key images";
inline constexpr const char* kKeyImageBanner = "AI PRELIMINARY \xE2\x80\x94 NOT FOR DIAGNOSIS";

struct KeyImageBox {
  std::string label;
  std::optional<double> confidence;
  double x1 = 0, y1 = 0, x2 = 0, y2 = 0;  // source pixels
};

struct KeyImageInput {
  const DcmDataset* source = nullptr;  // the image the model read (patient, study, reference)
  int frame = 0;                       // 1-based frame of a multi-frame source, 0 = single-frame
  int width = 0, height = 0;           // the model's frame: width x height RGB, row-major
  const std::vector<uint8_t>* rgb = nullptr;
  std::vector<KeyImageBox> boxes;
  std::string creation_datetime;       // YYYYMMDDHHMMSS[.FFFFFF]
  std::string series_instance_uid;     // a re-run's: the superseded key image's series (empty = new)
  int instance_number = 1;
  std::string manufacturer = "firstread", model_name, model_version;
};

struct BuiltKeyImage {
  std::unique_ptr<DcmFileFormat> file;
  std::string sop_class_uid, sop_instance_uid, series_instance_uid;
};

// Draws the boxes, labels and banner into a copy of the frame (also used for
// renderings); returns the marked RGB pixels.
std::vector<uint8_t> burn_in(int width, int height, const std::vector<uint8_t>& rgb,
                             const std::vector<KeyImageBox>& boxes);

// Throws std::runtime_error naming what was wrong.
BuiltKeyImage build_key_image(const KeyImageInput& input);

}  // namespace firstread::reports
