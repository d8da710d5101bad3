// Builds the softcopy presentation state that carries firstread's boxes to the
// viewers that never draw SR regions (most diagnostic PACS workstations):
// a Grayscale Softcopy Presentation State for grey images, a Color Softcopy
// Presentation State for colour ones. One per source series and report.
//
// A pure function like build_sr: the series' source datasets and the findings
// in, one PS dataset out; no database, network or files.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

class DcmDataset;
class DcmFileFormat;

namespace firstread::reports {

inline constexpr const char* kGspsSopClassUid = "1.2.840.10008.5.1.4.1.1.11.1";
inline constexpr const char* kCspsSopClassUid = "1.2.840.10008.5.1.4.1.1.11.2";
inline constexpr const char* kPsGraphicLayer = "FIRSTREAD AI";
inline constexpr const char* kPsContentLabel = "FIRSTREAD_AI";
inline constexpr const char* kPsSeriesNumber = "9902";
inline constexpr const char* kPsSeriesDescription = "firstread AI preliminary boxes";

// One box, in the source image's pixel space (column, row; the top-left
// corner of the top-left pixel is 0,0), as in api.findings.
struct PsAnnotation {
  std::string label;  // UTF-8
  std::optional<double> confidence;  // percent
  std::string sop_instance_uid;
  int frame = 0;  // 1-based for multi-frame images, 0 = single-frame
  double x1 = 0, y1 = 0, x2 = 0, y2 = 0;
};

struct PsInput {
  // The images of one series that the model read, with their pixel data
  // (the VOI of a frame without a window is its min-max, as the model saw it).
  std::vector<const DcmDataset*> sources;
  // Per source: the 0-based frame the model read (for the min-max VOI).
  std::vector<int> frames_read;
  std::vector<PsAnnotation> annotations;  // each on one of the sources
  std::string creation_datetime;          // YYYYMMDDHHMMSS[.FFFFFF] (Presentation Creation Date/Time)
  // A re-run puts its presentation state in the series of the one it
  // supersedes (empty: a new series) with the next Instance Number.
  std::string series_instance_uid;
  int instance_number = 1;
  std::string manufacturer = "firstread";
  std::string model_name, model_version;
};

struct BuiltPs {
  std::unique_ptr<DcmFileFormat> file;
  std::string sop_class_uid, sop_instance_uid, series_instance_uid;
  bool color = false;
  std::vector<std::string> warnings;  // e.g. a frame whose VOI could not be computed
};

// True when the image's Photometric Interpretation is colour (RGB, YBR_*,
// PALETTE COLOR): it gets a CSPS, grey images a GSPS.
bool is_color_image(const DcmDataset& image);

// Throws std::runtime_error naming what was wrong (annotation, UID, field).
BuiltPs build_presentation_state(const PsInput& input);

}  // namespace firstread::reports
