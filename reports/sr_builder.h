// Builds firstread's preliminary AI report as a DICOM Structured Report.
//
// A pure function: report content and the source images' datasets in, one
// Comprehensive 3D SR (TID 1500 root, IHE AI Results layout) out. No database,
// no network, no file I/O. See SPEC.md "The SR" and notes/dicom-sr-for-ai.md.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "dicom/sop_class.h"

class DcmDataset;
class DcmFileFormat;

namespace firstread::reports {

// One region the model pointed at, already mapped to source-image pixels.
struct SrFinding {
  std::string label;            // e.g. "nodule" or "结节" (the model's <ref> text); must not be empty
  std::string text;             // the sentence describing it (may be empty)
  // The source image the region is on. sop_class_uid may be left empty: it is
  // then taken from the source; when given it must match the source.
  std::string sop_class_uid, sop_instance_uid;
  int frame = 0;                // 1-based frame number for multi-frame images, 0 = single-frame
  // Region in source-image pixel coordinates (column, row), the top-left corner
  // of the top-left pixel being (0,0): x1<x2, y1<y2, inside Columns x Rows.
  // Stored as 32-bit floats (Graphic Data is FL).
  double x1 = 0, y1 = 0, x2 = 0, y2 = 0;
  std::optional<double> confidence;  // 0..100 percent when the model gave one
};

// An earlier SR of the same study that the new one supersedes.
struct SrPredecessor {
  std::string study_uid, series_uid, sop_class_uid, sop_instance_uid;
};

// What one specialist classifier said about one source image (GSCo, issue 15):
// written as its own container after the report's content, with the specialist
// as the container's device observer and its classifications as TEXT evaluations.
struct SrSpecialistEvaluation {
  std::string name, version, device_observer_uid;
  std::string sop_instance_uid;  // the source image it classified
  std::vector<std::pair<std::string, double>> probabilities;  // label, 0..1
  std::vector<std::string> positives;  // the labels it counts as its diagnosis
  int retrieved_cases = -1;            // similar cases retrieved with its feature; -1: no retrieval
};

struct SrInput {
  // The source images (at least one, all of one study): patient and study are
  // copied from the first; every one goes into the image library and the
  // evidence. Pixel data is never read.
  std::vector<const DcmDataset*> sources;
  // The model's whole report text. A line starting with "Impression:" (or
  // "印象：", "诊断意见：", "结论：") splits it into a Finding and an Impression
  // text; otherwise it is one Finding text. Empty: no report-level text.
  std::string narrative;
  std::string language = "en";             // "en" or "en-US"; "zh" or "zh-CN" (TID 1204)
  std::string model_name, model_version;   // e.g. "demo", "0.1"; model_name must not be empty
  std::string device_observer_uid;         // changes with the weights (given by caller)
  // Device Observer Physical Location (TID 1004), e.g. "inference server gpu1"
  // for a model served remotely; empty = not written.
  std::string device_location;
  std::string algorithm_manufacturer = "firstread";
  std::string content_datetime;            // YYYYMMDDHHMMSS: when the analysis started
  std::vector<SrFinding> findings;
  std::optional<SrPredecessor> predecessor;
  std::vector<SrSpecialistEvaluation> specialist_evaluations;
};

struct BuiltSr {
  std::unique_ptr<DcmFileFormat> file;  // the caller saves it (e.g. EXS_LittleEndianExplicit)
  std::string sop_instance_uid, series_instance_uid, sop_class_uid;
  // What was written differently from what was asked, for the caller to log.
  // Today only: a region on frame N>1 of an image whose SOP class is defined
  // single-frame (e.g. Secondary Capture with Number of Frames 2) is referenced
  // without a frame number, since DICOM forbids Referenced Frame Number there.
  std::vector<std::string> warnings;
};

// Constants the SR carries, exposed so that callers and tests agree on them.
inline constexpr const char* kComprehensive3DSrSopClassUid = dicom::sop_class::kComprehensive3DSr;
inline constexpr const char* kSrSeriesNumber = "9901";
inline constexpr const char* kSrSeriesDescription = "firstread AI preliminary report";
// Every finding's Tracking Identifier: the cornerstone adapters (OHIF) choose
// their RectangleROI tool by it when they hydrate the SR's regions.
inline constexpr const char* kRectangleTrackingIdentifier = "Cornerstone3DTools@^0.1.0:RectangleROI";
// firstread's own coding scheme for finding labels that have no standard code
// (declared in the SR's Coding Scheme Identification Sequence).
inline constexpr const char* kFindingCodingScheme = "99FIRSTREAD";
// Its code for the number of similar cases GSCo retrieved (a specialist group's evaluation).
inline constexpr const char* kRetrievedCasesCode = "GSCO-RAD-N";
// Its code for a specialist's container (what one specialist said about one image).
inline constexpr const char* kSpecialistContainerCode = "GSCO-SPEC";

// The code a finding label is written with: SNOMED CT where firstread's table
// knows the label (English or Chinese, plurals too), else kFindingCodingScheme
// with a code value derived from the label (the same label always gets the
// same code) and the label itself as Code Meaning (at most 64 characters).
struct FindingCode {
  std::string value, scheme, meaning;
};
FindingCode finding_code(const std::string& label);

// Throws std::runtime_error naming what was wrong (which finding, which UID,
// which field). All text must be valid UTF-8: it is written as ISO_IR 192.
// Thread safety: concurrent calls are fine as long as no source dataset is in
// use by another thread meanwhile: the sources' content is only read, but
// DCMTK's element lists move an internal cursor even when read.
BuiltSr build_sr(const SrInput& input);

}  // namespace firstread::reports
