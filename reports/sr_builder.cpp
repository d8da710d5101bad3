// DICOM SR for firstread's preliminary AI report: TID 1500 root built with
// DCMTK's cmr templates, TID 1410 planar-ROI groups added by hand (DCMTK 3.6.7
// has no TID 1410 class), written as Comprehensive 3D SR (IHE AI Results).
#include "reports/sr_builder.h"

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcdatset.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcuid.h>
#include <dcmtk/dcmsr/cmr/init.h>
#include <dcmtk/dcmsr/cmr/tid1500.h>
#include <dcmtk/dcmsr/codes/dcm.h>
#include <dcmtk/dcmsr/dsrdoc.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "dicom/text.h"
#include "dicom/uid.h"

namespace firstread::reports {
namespace {

[[noreturn]] void fail(const std::string& message) { throw std::runtime_error("build_sr: " + message); }

void require_ok(const OFCondition& condition, const std::string& what) {
  if (condition.bad()) fail(what + ": " + condition.text());
}

void require_uid(const std::string& uid, const std::string& what) {
  if (!dicom::is_valid_uid(uid)) fail(what + " '" + uid + "' is not a valid DICOM UID");
}

// The SR is written as ISO_IR 192 and DCMTK does not transcode on write, so
// every string we pass must already be UTF-8.
void require_utf8(const std::string& text, const std::string& what) {
  const size_t bad = dicom::first_invalid_utf8(text);
  if (bad != std::string::npos) fail(what + " is not valid UTF-8 (byte offset " + std::to_string(bad) + ")");
}

std::string trim(const std::string& text) {
  const char* whitespace = " \t\r\n\f\v";
  const size_t begin = text.find_first_not_of(whitespace);
  if (begin == std::string::npos) return "";
  const size_t end = text.find_last_not_of(whitespace);
  return text.substr(begin, end - begin + 1);
}

std::string ascii_lower(std::string text) {
  for (char& c : text) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return text;
}

// YYYYMMDDHHMMSS with plausible field ranges (content date and time of the SR).
void require_content_datetime(const std::string& value) {
  bool digits_only = value.size() == 14;
  for (char c : value) digits_only = digits_only && c >= '0' && c <= '9';
  if (!digits_only) fail("content_datetime '" + value + "' is not YYYYMMDDHHMMSS");
  const int month = std::stoi(value.substr(4, 2)), day = std::stoi(value.substr(6, 2));
  const int hour = std::stoi(value.substr(8, 2)), minute = std::stoi(value.substr(10, 2));
  const int second = std::stoi(value.substr(12, 2));
  if (month < 1 || month > 12 || day < 1 || day > 31 || hour > 23 || minute > 59 || second > 60)
    fail("content_datetime '" + value + "' has a field out of range");
}

// What build_sr needs from one source image. The header is a copy without
// pixel data, converted to UTF-8, so DCMTK's non-const readers work on our
// copy (never on the caller's dataset) and text lands in the SR as UTF-8.
struct SourceImage {
  std::unique_ptr<DcmDataset> header;
  std::string sop_class_uid, sop_instance_uid, study_uid, series_uid, modality;
  long number_of_frames = 1;
  unsigned rows = 0, columns = 0;
  // Referenced Frame Number is allowed only for multi-frame SOP classes.
  bool frame_numbers_allowed = false;
  double row_spacing_mm = 0, column_spacing_mm = 0;  // Pixel Spacing; 0 = not given
};

// Image SOP classes whose IODs have no Multi-frame Module: a reference to them
// must not carry Referenced Frame Number (dciodvfy: "Shall not be present for
// Referenced SOP Class that is not multi-frame"), even when a non-conformant
// instance has Number of Frames > 1.
bool is_single_frame_sop_class(const std::string& sop_class_uid) {
  static const char* const kSingleFrameClasses[] = {
      UID_ComputedRadiographyImageStorage,
      UID_DigitalXRayImageStorageForPresentation,
      UID_DigitalXRayImageStorageForProcessing,
      UID_DigitalMammographyXRayImageStorageForPresentation,
      UID_DigitalMammographyXRayImageStorageForProcessing,
      UID_DigitalIntraOralXRayImageStorageForPresentation,
      UID_DigitalIntraOralXRayImageStorageForProcessing,
      UID_CTImageStorage,
      UID_MRImageStorage,
      UID_UltrasoundImageStorage,
      UID_SecondaryCaptureImageStorage,
      UID_PositronEmissionTomographyImageStorage,
      UID_VLEndoscopicImageStorage,
      UID_VLMicroscopicImageStorage,
      UID_VLSlideCoordinatesMicroscopicImageStorage,
      UID_VLPhotographicImageStorage,
  };
  for (const char* uid : kSingleFrameClasses)
    if (sop_class_uid == uid) return true;
  return false;
}

std::string get_string(DcmItem& item, const DcmTagKey& tag) {
  OFString value;
  if (item.findAndGetOFString(tag, value).bad()) return "";
  return value.c_str();
}

SourceImage read_source(const DcmDataset& source, size_t index) {
  const std::string which = "source " + std::to_string(index);
  SourceImage image;
  image.header = std::make_unique<DcmDataset>();
  // DcmItem offers element access only through non-const members. The
  // dataset's content is not changed, but DcmList moves its internal cursor
  // while walking, hence the cast (and the header's note on threads).
  auto& readable = const_cast<DcmDataset&>(source);
  for (unsigned long i = 0; i < readable.card(); ++i) {
    DcmElement* element = readable.getElement(i);
    if (element == nullptr) continue;
    const DcmTagKey key = element->getTag();
    // Pixel data (group 7FE0) and overlay bit planes (60xx,3000) can be large
    // and are of no use to the SR.
    if (key.getGroup() == 0x7FE0) continue;
    if ((key.getGroup() & 0xFF00) == 0x6000 && key.getElement() == 0x3000) continue;
    require_ok(image.header->insert(OFstatic_cast(DcmElement*, element->clone())), which + ": copying " + key.toString().c_str());
  }
  require_ok(image.header->convertToUTF8(), which + ": converting its text to UTF-8");

  image.sop_class_uid = get_string(*image.header, DCM_SOPClassUID);
  image.sop_instance_uid = get_string(*image.header, DCM_SOPInstanceUID);
  image.study_uid = get_string(*image.header, DCM_StudyInstanceUID);
  image.series_uid = get_string(*image.header, DCM_SeriesInstanceUID);
  image.modality = get_string(*image.header, DCM_Modality);
  require_uid(image.sop_class_uid, which + " SOP Class UID");
  require_uid(image.sop_instance_uid, which + " SOP Instance UID");
  require_uid(image.study_uid, which + " (" + image.sop_instance_uid + ") Study Instance UID");
  require_uid(image.series_uid, which + " (" + image.sop_instance_uid + ") Series Instance UID");

  Sint32 frames = 1;
  if (image.header->findAndGetSint32(DCM_NumberOfFrames, frames).good()) {
    if (frames < 1) fail(which + " (" + image.sop_instance_uid + ") has Number of Frames " + std::to_string(frames));
    image.number_of_frames = frames;
  }
  Uint16 rows = 0, columns = 0;
  if (image.header->findAndGetUint16(DCM_Rows, rows).bad() || image.header->findAndGetUint16(DCM_Columns, columns).bad() ||
      rows == 0 || columns == 0)
    fail(which + " (" + image.sop_instance_uid + ") has no Rows/Columns: not an image");
  image.rows = rows;
  image.columns = columns;
  image.frame_numbers_allowed = image.number_of_frames > 1 && !is_single_frame_sop_class(image.sop_class_uid);
  Float64 row_spacing = 0, column_spacing = 0;
  if (image.header->findAndGetFloat64(DCM_PixelSpacing, row_spacing, 0).good() &&
      image.header->findAndGetFloat64(DCM_PixelSpacing, column_spacing, 1).good() && row_spacing > 0 &&
      column_spacing > 0) {
    image.row_spacing_mm = row_spacing;
    image.column_spacing_mm = column_spacing;
  }
  return image;
}

// Common labels that have a SNOMED CT concept, in English and Chinese. The
// model's label text is kept in the Tracking Identifier either way.
struct KnownFinding {
  const char* label;
  const char* code;
  const char* meaning;
};
const KnownFinding kKnownFindings[] = {
    {"nodule", "27925004", "Nodule"},
    {"结节", "27925004", "Nodule"},
    {"mass", "4147007", "Mass"},
    {"肿块", "4147007", "Mass"},
    {"pleural effusion", "60046008", "Pleural effusion"},
    {"胸腔积液", "60046008", "Pleural effusion"},
    {"cardiomegaly", "8186001", "Cardiomegaly"},
    {"心脏增大", "8186001", "Cardiomegaly"},
    {"心影增大", "8186001", "Cardiomegaly"},
    {"polyp", "41329004", "Polyp"},
    {"息肉", "41329004", "Polyp"},
    {"hemorrhage", "50960005", "Hemorrhage"},
    {"haemorrhage", "50960005", "Hemorrhage"},
    {"出血", "50960005", "Hemorrhage"},
    {"lesion", "52988006", "Lesion"},
    {"病灶", "52988006", "Lesion"},
    {"病变", "52988006", "Lesion"},
    {"pneumothorax", "36118008", "Pneumothorax"},
    {"气胸", "36118008", "Pneumothorax"},
    {"cyst", "367643001", "Cyst"},
    {"囊肿", "367643001", "Cyst"},
    {"edema", "79654002", "Edema"},
    {"oedema", "79654002", "Edema"},
    {"水肿", "79654002", "Edema"},
    {"ulcer", "56208002", "Ulcer"},
    {"溃疡", "56208002", "Ulcer"},
    {"melanoma", "2092003", "Melanoma"},
    {"黑色素瘤", "2092003", "Melanoma"},
};

const KnownFinding* find_known_finding(const std::string& label) {
  std::string key = ascii_lower(trim(label));
  for (const KnownFinding& known : kKnownFindings)
    if (key == known.label) return &known;
  // English plurals: "nodules", "masses", "polyps".
  for (const char* suffix : {"es", "s"}) {
    const std::string s = suffix;
    if (key.size() > s.size() && key.compare(key.size() - s.size(), s.size(), s) == 0) {
      const std::string singular = key.substr(0, key.size() - s.size());
      for (const KnownFinding& known : kKnownFindings)
        if (singular == known.label) return &known;
    }
  }
  return nullptr;
}

// Procedure reported (TID 1500 row 4) describes the imaging procedure that
// was analysed: the CID 100 code of the modality where there is one.
CID100_QuantitativeDiagnosticImagingProcedures procedure_for_modality(const std::string& modality) {
  using Procedure = CID100_QuantitativeDiagnosticImagingProcedures;
  if (modality == "CT") return Procedure(Procedure::CTUnspecifiedBodyRegion);
  if (modality == "MR") return Procedure(Procedure::MRIUnspecifiedBodyRegion);
  if (modality == "NM") return Procedure(Procedure::NMUnspecifiedBodyRegion);
  if (modality == "PT") return Procedure(Procedure::PETUnspecifiedBodyRegion);
  return Procedure(Procedure::ImagingProcedure);
}

// Report-level narrative: split at an impression heading when there is one.
struct NarrativeParts {
  std::string findings, impression;
};

NarrativeParts split_narrative(const std::string& narrative) {
  static const char* const kImpressionHeadings[] = {"impression:", "impressions:", "印象：", "印象:",
                                                    "诊断意见：", "诊断意见:", "结论：", "结论:"};
  size_t line_start = 0;
  while (line_start < narrative.size()) {
    size_t content_start = narrative.find_first_not_of(" \t", line_start);
    if (content_start == std::string::npos) break;
    for (const char* heading : kImpressionHeadings) {
      const std::string h = heading;
      if (ascii_lower(narrative.substr(content_start, h.size())) == h) {
        return {trim(narrative.substr(0, line_start)), trim(narrative.substr(content_start + h.size()))};
      }
    }
    const size_t newline = narrative.find('\n', line_start);
    if (newline == std::string::npos) break;
    line_start = newline + 1;
  }
  return {trim(narrative), ""};
}

std::string format_decimal_string(double value) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.6g", value);  // DS holds at most 16 characters
  return buffer;
}

// The route's language as written in the configuration: the short form or the
// RFC 5646 code the SR carries.
bool is_english(const std::string& language) { return language == "en" || language == "en-US"; }
bool is_chinese(const std::string& language) { return language == "zh" || language == "zh-CN"; }

void validate_input(const SrInput& input) {
  if (input.sources.empty()) fail("no source image given");
  for (size_t i = 0; i < input.sources.size(); ++i)
    if (input.sources[i] == nullptr) fail("source " + std::to_string(i) + " is a null dataset");
  if (!is_english(input.language) && !is_chinese(input.language))
    fail("language '" + input.language + "' is neither \"en\" (en-US) nor \"zh\" (zh-CN)");
  if (trim(input.model_name).empty()) fail("model_name is empty");
  require_utf8(input.model_name, "model_name");
  require_utf8(input.model_version, "model_version");
  require_utf8(input.algorithm_manufacturer, "algorithm_manufacturer");
  require_utf8(input.narrative, "narrative");
  if (input.device_observer_uid.empty()) fail("device_observer_uid is empty");
  require_uid(input.device_observer_uid, "device_observer_uid");
  require_content_datetime(input.content_datetime);
  if (input.predecessor) {
    require_uid(input.predecessor->study_uid, "predecessor study_uid");
    require_uid(input.predecessor->series_uid, "predecessor series_uid");
    require_uid(input.predecessor->sop_class_uid, "predecessor sop_class_uid");
    require_uid(input.predecessor->sop_instance_uid, "predecessor sop_instance_uid");
  }
  for (const SrSpecialistEvaluation& e : input.specialist_evaluations) {
    const std::string which = "specialist '" + e.name + "'";
    if (trim(e.name).empty()) fail("a specialist evaluation has no name");
    require_utf8(e.name, which + " name");
    require_utf8(e.version, which + " version");
    require_uid(e.device_observer_uid, which + " device_observer_uid");
    require_uid(e.sop_instance_uid, which + " sop_instance_uid");
    for (const auto& [label, p] : e.probabilities) {
      if (trim(label).empty()) fail(which + " has an empty label");
      require_utf8(label, which + " label");
      if (!(p >= 0.0 && p <= 1.0)) fail(which + " label '" + label + "' probability is outside 0..1");
    }
  }
}

// Checks one finding against its source image and returns that image.
const SourceImage& validate_finding(const SrFinding& finding, size_t index, const std::vector<SourceImage>& images,
                                    std::vector<std::string>& warnings) {
  const std::string which = "finding " + std::to_string(index + 1) + " ('" + finding.label + "')";
  require_utf8(finding.label, "finding " + std::to_string(index + 1) + " label");
  require_utf8(finding.text, which + " text");
  if (trim(finding.label).empty()) fail("finding " + std::to_string(index + 1) + " has an empty label");
  const SourceImage* image = nullptr;
  for (const SourceImage& candidate : images)
    if (candidate.sop_instance_uid == finding.sop_instance_uid) image = &candidate;
  if (image == nullptr)
    fail(which + " refers to SOP Instance UID '" + finding.sop_instance_uid + "', which is not among the sources");
  if (!finding.sop_class_uid.empty() && finding.sop_class_uid != image->sop_class_uid)
    fail(which + " gives SOP Class UID '" + finding.sop_class_uid + "' but source " + image->sop_instance_uid +
         " is '" + image->sop_class_uid + "'");
  if (!dcmIsImageStorageSOPClassUID(image->sop_class_uid.c_str()))
    fail(which + " is on " + image->sop_instance_uid + ", whose SOP class " + image->sop_class_uid +
         " is not an image SOP class: a region cannot be selected from it");
  const double coordinates[] = {finding.x1, finding.y1, finding.x2, finding.y2};
  for (double c : coordinates)
    if (!std::isfinite(c)) fail(which + " has a non-finite box coordinate");
  if (finding.x2 <= finding.x1 || finding.y2 <= finding.y1)
    fail(which + " has an empty or inverted box [" + format_decimal_string(finding.x1) + ", " +
         format_decimal_string(finding.y1) + ", " + format_decimal_string(finding.x2) + ", " +
         format_decimal_string(finding.y2) + "]: needs x1<x2 and y1<y2");
  if (finding.x1 < 0 || finding.y1 < 0 || finding.x2 > image->columns || finding.y2 > image->rows)
    fail(which + " box [" + format_decimal_string(finding.x1) + ", " + format_decimal_string(finding.y1) + ", " +
         format_decimal_string(finding.x2) + ", " + format_decimal_string(finding.y2) + "] lies outside image " +
         image->sop_instance_uid + " (" + std::to_string(image->columns) + " columns x " +
         std::to_string(image->rows) + " rows)");
  if (finding.frame < 0 || finding.frame > image->number_of_frames)
    fail(which + " frame " + std::to_string(finding.frame) + " is beyond image " + image->sop_instance_uid + "'s " +
         std::to_string(image->number_of_frames) + " frame(s)");
  if (image->number_of_frames > 1 && finding.frame == 0)
    fail(which + " is on multi-frame image " + image->sop_instance_uid + " but names no frame (frame = 0)");
  if (!image->frame_numbers_allowed && finding.frame > 1)
    warnings.push_back(which + " is on frame " + std::to_string(finding.frame) + " of image " +
                       image->sop_instance_uid + ", whose SOP class " + image->sop_class_uid +
                       " is single-frame: the region references the image without a frame number");
  if (finding.confidence && !(*finding.confidence >= 0.0 && *finding.confidence <= 100.0))
    fail(which + " confidence " + format_decimal_string(*finding.confidence) + " is outside 0..100");
  return *image;
}

// A new TID 1501 Measurement Group after the last one under Imaging
// Measurements; the tree's cursor is left on it.
void add_group_container(DSRDocumentTree& tree, const std::string& which) {
  if (tree.gotoNamedNode(CODE_DCM_ImagingMeasurements) == 0) fail("the TID 1500 tree has no Imaging Measurements");
  DSRTypes::E_AddMode add_mode = DSRTypes::AM_belowCurrent;
  if (tree.gotoChild() != 0) {  // append after the last existing group
    while (tree.gotoNext() != 0) {}
    add_mode = DSRTypes::AM_afterCurrent;
  }
  if (tree.addContentItem(DSRTypes::RT_contains, DSRTypes::VT_Container, add_mode) == 0)
    fail(which + ": cannot add its Measurement Group");
  DSRContentItem& group = tree.getCurrentContentItem();
  require_ok(group.setConceptName(CODE_DCM_MeasurementGroup), which + ": Measurement Group concept");
  require_ok(group.setTemplateIdentification("1501", "DCMR", UID_DICOMContentMappingResource), which + ": TID 1501 id");
}

// Adds one measurement group (TID 1501, its measurement a TID 300 NUM inferred
// from the region) below "Imaging Measurements". The layout is the one the
// viewers that read TID 1500 regions take apart without losing anything
// (checked against their code in tests/ohif/):
//  - Tracking Identifier "Cornerstone3DTools@^0.1.0:RectangleROI": the
//    cornerstone adapters (OHIF's hydration) pick their rectangle tool by it;
//    the Tracking UID keeps findings apart.
//  - Finding as a CODE: SNOMED CT where the label is known, else firstread's
//    own scheme (declared in the Coding Scheme Identification Sequence) with
//    the label as Code Meaning: the adapters read the finding's code.
//  - No SCOORD directly in the group but NUM (Area) INFERRED FROM the SCOORD:
//    with a NUM in the group the adapters take the NUM's SCOORD, and OHIF's SR
//    display shows comments and NUM values as text only in this layout.
//  - Comment = the model's label (OHIF's display text and the hydrated
//    annotation's label), then the finding's sentence as a second Comment.
//  - Certainty of Finding as a NUM without children, after the Area: OHIF
//    shows its value; the adapters still take the Area's region.
void add_measurement_group(DSRDocumentTree& tree, const SrFinding& finding, size_t index, const SourceImage& image,
                           const SrInput& input) {
  const std::string which = "finding " + std::to_string(index + 1) + " ('" + finding.label + "')";
  add_group_container(tree, which);

  require_ok(tree.addChildContentItem(DSRTypes::RT_hasObsContext, DSRTypes::VT_Text, CODE_DCM_TrackingIdentifier),
             which + ": Tracking Identifier");
  require_ok(tree.getCurrentContentItem().setStringValue(kRectangleTrackingIdentifier),
             which + ": Tracking Identifier value");
  char tracking_uid[100];
  dcmGenerateUniqueIdentifier(tracking_uid, SITE_INSTANCE_UID_ROOT);
  require_ok(tree.addContentItem(DSRTypes::RT_hasObsContext, DSRTypes::VT_UIDRef, CODE_DCM_TrackingUniqueIdentifier),
             which + ": Tracking Unique Identifier");
  require_ok(tree.getCurrentContentItem().setStringValue(tracking_uid), which + ": Tracking Unique Identifier value");

  const FindingCode code = finding_code(finding.label);
  require_ok(tree.addContentItem(DSRTypes::RT_contains, DSRTypes::VT_Code, CODE_DCM_Finding), which + ": Finding");
  require_ok(tree.getCurrentContentItem().setCodeValue(DSRCodedEntryValue(code.value.c_str(), code.scheme.c_str(),
                                                                          code.meaning.c_str()),
                                                       false /*check*/),
             which + ": Finding code " + code.scheme + " " + code.value);

  // The box's area: mm2 where the image has a Pixel Spacing, else pixels.
  const double width = finding.x2 - finding.x1, height = finding.y2 - finding.y1;
  const bool calibrated = image.row_spacing_mm > 0 && image.column_spacing_mm > 0;
  const double area = calibrated ? width * image.column_spacing_mm * height * image.row_spacing_mm : width * height;
  const DSRCodedEntryValue area_unit = calibrated ? DSRCodedEntryValue("mm2", "UCUM", "mm2")
                                                  : DSRCodedEntryValue("{pixels}", "UCUM", "pixels");
  require_ok(tree.addContentItem(DSRTypes::RT_contains, DSRTypes::VT_Num, DSRCodedEntryValue("42798000", "SCT", "Area")),
             which + ": Area");
  require_ok(tree.getCurrentContentItem().setNumericValue(
                 DSRNumericMeasurementValue(format_decimal_string(area).c_str(), area_unit), false /*check*/),
             which + ": Area value");

  // Closed rectangle: four corners clockwise from the top-left, then the first again.
  DSRSpatialCoordinatesValue region(DSRTypes::GT_Polyline);
  const auto x1 = static_cast<Float32>(finding.x1), y1 = static_cast<Float32>(finding.y1);
  const auto x2 = static_cast<Float32>(finding.x2), y2 = static_cast<Float32>(finding.y2);
  region.getGraphicDataList().addItem(x1, y1);
  region.getGraphicDataList().addItem(x2, y1);
  region.getGraphicDataList().addItem(x2, y2);
  region.getGraphicDataList().addItem(x1, y2);
  region.getGraphicDataList().addItem(x1, y1);
  require_ok(tree.addChildContentItem(DSRTypes::RT_inferredFrom, DSRTypes::VT_SCoord, CODE_DCM_ImageRegion),
             which + ": Image Region");
  require_ok(tree.getCurrentContentItem().setSpatialCoordinates(region), which + ": Image Region coordinates");
  DSRImageReferenceValue image_reference(image.sop_class_uid.c_str(), image.sop_instance_uid.c_str());
  // Referenced Frame Number only where the SOP class is multi-frame (see is_single_frame_sop_class).
  if (image.frame_numbers_allowed) image_reference.getFrameList().addItem(finding.frame);
  require_ok(tree.addChildContentItem(DSRTypes::RT_selectedFrom, DSRTypes::VT_Image, CODE_DCM_SourceImage),
             which + ": Source Image of the region");
  require_ok(tree.getCurrentContentItem().setImageReference(image_reference),
             which + ": reference to image " + image.sop_instance_uid);
  if (tree.goUp() == 0) fail(which + ": cannot return to the Image Region item");
  // TID 4019 (TID 300 row 9): the model that drew the region.
  require_ok(tree.addContentItem(DSRTypes::RT_hasConceptMod, DSRTypes::VT_Text, CODE_DCM_AlgorithmName),
             which + ": Algorithm Name");
  require_ok(tree.getCurrentContentItem().setStringValue(input.model_name.c_str()), which + ": Algorithm Name value");
  if (!input.model_version.empty()) {
    require_ok(tree.addContentItem(DSRTypes::RT_hasConceptMod, DSRTypes::VT_Text, CODE_DCM_AlgorithmVersion),
               which + ": Algorithm Version");
    require_ok(tree.getCurrentContentItem().setStringValue(input.model_version.c_str()),
               which + ": Algorithm Version value");
  }
  if (tree.goUp() == 0) fail(which + ": cannot return to the Area item");

  if (finding.confidence) {
    require_ok(tree.addContentItem(DSRTypes::RT_contains, DSRTypes::VT_Num, CODE_DCM_CertaintyOfFinding),
               which + ": Certainty of Finding");
    require_ok(tree.getCurrentContentItem().setNumericValue(DSRNumericMeasurementValue(
                   format_decimal_string(*finding.confidence).c_str(), DSRCodedEntryValue("%", "UCUM", "Percent"))),
               which + ": Certainty of Finding value");
  }

  require_ok(tree.addContentItem(DSRTypes::RT_contains, DSRTypes::VT_Text, CODE_DCM_Comment), which + ": label Comment");
  require_ok(tree.getCurrentContentItem().setStringValue(trim(finding.label).c_str()), which + ": label Comment value");
  const std::string sentence = trim(finding.text);
  if (!sentence.empty()) {
    require_ok(tree.addContentItem(DSRTypes::RT_contains, DSRTypes::VT_Text, CODE_DCM_Comment), which + ": Comment");
    require_ok(tree.getCurrentContentItem().setStringValue(sentence.c_str()), which + ": Comment value");
  }
}

// A text content item below the current one (AM_afterCurrent after the first).
void add_text(DSRDocumentTree& tree, DSRTypes::E_RelationshipType rel, const DSRCodedEntryValue& concept,
              const std::string& value, DSRTypes::E_AddMode& mode, const std::string& what) {
  if (tree.addContentItem(rel, DSRTypes::VT_Text, mode) == 0) fail(what + ": cannot add");
  mode = DSRTypes::AM_afterCurrent;
  require_ok(tree.getCurrentContentItem().setConceptName(concept, false /*check*/), what + " concept");
  require_ok(tree.getCurrentContentItem().setStringValue(value.c_str()), what + " value");
}

// GSCo (issue 15): one container per specialist and image at the end of the
// report (firstread's own concept). The specialist is its device observer
// (TID 1004 inside the container, as IHE AIR has an observer per result); each
// label's probability and the number of similar cases retrieved are TEXT
// evaluations; the image it classified is referenced.
void add_specialist_group(DSRDocumentTree& tree, const SrSpecialistEvaluation& e, size_t index, const SrInput& input,
                          const std::vector<SourceImage>& images) {
  const std::string which = "specialist " + e.name + " on " + e.sop_instance_uid;
  // After the root's last item: not under Imaging Measurements, whose every group
  // OHIF's SR code takes for a region on an image.
  if (tree.gotoRoot() == 0 || tree.gotoChild() == 0) fail("the TID 1500 tree has no root content");
  while (tree.gotoNext() != 0) {}
  if (tree.addContentItem(DSRTypes::RT_contains, DSRTypes::VT_Container, DSRTypes::AM_afterCurrent) == 0)
    fail(which + ": cannot add its container");
  require_ok(tree.getCurrentContentItem().setConceptName(
                 DSRCodedEntryValue(kSpecialistContainerCode, kFindingCodingScheme, "Specialist classification"), false),
             which + ": container concept");
  DSRTypes::E_AddMode mode = DSRTypes::AM_belowCurrent;
  if (tree.addContentItem(DSRTypes::RT_hasObsContext, DSRTypes::VT_Code, mode) == 0) fail(which + ": Observer Type");
  mode = DSRTypes::AM_afterCurrent;
  require_ok(tree.getCurrentContentItem().setConceptName(CODE_DCM_ObserverType), which + ": Observer Type concept");
  require_ok(tree.getCurrentContentItem().setCodeValue(CODE_DCM_Device), which + ": Observer Type value");
  require_ok(tree.addContentItem(DSRTypes::RT_hasObsContext, DSRTypes::VT_UIDRef, CODE_DCM_DeviceObserverUID),
             which + ": Device Observer UID");
  require_ok(tree.getCurrentContentItem().setStringValue(e.device_observer_uid.c_str()), which + ": Device Observer UID value");
  add_text(tree, DSRTypes::RT_hasObsContext, CODE_DCM_DeviceObserverName, e.name, mode, which + ": Device Observer Name");
  add_text(tree, DSRTypes::RT_hasObsContext, CODE_DCM_DeviceObserverManufacturer, input.algorithm_manufacturer, mode,
           which + ": Device Observer Manufacturer");
  add_text(tree, DSRTypes::RT_hasObsContext, CODE_DCM_DeviceObserverModelName,
           e.version.empty() ? e.name : e.name + " " + e.version, mode, which + ": Device Observer Model Name");
  add_text(tree, DSRTypes::RT_hasObsContext, CODE_DCM_TrackingIdentifier, "firstread specialist " + e.name, mode,
           which + ": Tracking Identifier");
  char tracking_uid[100];
  dcmGenerateUniqueIdentifier(tracking_uid, SITE_INSTANCE_UID_ROOT);
  require_ok(tree.addContentItem(DSRTypes::RT_hasObsContext, DSRTypes::VT_UIDRef, CODE_DCM_TrackingUniqueIdentifier),
             which + ": Tracking Unique Identifier");
  require_ok(tree.getCurrentContentItem().setStringValue(tracking_uid), which + ": Tracking Unique Identifier value");
  for (const auto& [label, p] : e.probabilities) {
    const FindingCode code = finding_code(label);
    const bool positive = std::find(e.positives.begin(), e.positives.end(), label) != e.positives.end();
    char value[64];
    std::snprintf(value, sizeof value, "probability %.4f%s", p, positive ? ", positive" : "");
    add_text(tree, DSRTypes::RT_contains, DSRCodedEntryValue(code.value.c_str(), code.scheme.c_str(), code.meaning.c_str()),
             value, mode, which + ": label '" + label + "'");
  }
  if (e.retrieved_cases >= 0)
    add_text(tree, DSRTypes::RT_contains,
             DSRCodedEntryValue(kRetrievedCasesCode, kFindingCodingScheme, "Similar confirmed cases retrieved"),
             std::to_string(e.retrieved_cases), mode, which + ": retrieved cases");
  // The image it classified.
  const SourceImage* image = nullptr;
  for (const SourceImage& candidate : images)
    if (candidate.sop_instance_uid == e.sop_instance_uid) image = &candidate;
  if (!image) fail(which + ": the image is not among the sources");
  if (tree.addContentItem(DSRTypes::RT_contains, DSRTypes::VT_Image, mode) == 0) fail(which + ": Source Image");
  require_ok(tree.getCurrentContentItem().setConceptName(CODE_DCM_SourceImage), which + ": Source Image concept");
  require_ok(tree.getCurrentContentItem().setImageReference(
                 DSRImageReferenceValue(image->sop_class_uid.c_str(), image->sop_instance_uid.c_str())),
             which + ": Source Image reference");
  (void)index;
}

// IHE AIR 6.5.3.1: the algorithm as Contributing Equipment of the SR.
void add_contributing_equipment(DcmItem& dataset, const SrInput& input) {
  DcmItem* equipment = nullptr;
  require_ok(dataset.findOrCreateSequenceItem(DCM_ContributingEquipmentSequence, equipment, -2),
             "Contributing Equipment Sequence");
  DcmItem* purpose = nullptr;
  require_ok(equipment->findOrCreateSequenceItem(DCM_PurposeOfReferenceCodeSequence, purpose, -2),
             "Contributing Equipment Purpose of Reference");
  require_ok(purpose->putAndInsertString(DCM_CodeValue, "Newcode1"), "Purpose of Reference Code Value");
  require_ok(purpose->putAndInsertString(DCM_CodingSchemeDesignator, "99IHE"), "Purpose of Reference scheme");
  require_ok(purpose->putAndInsertString(DCM_CodeMeaning, "Processing Algorithm"), "Purpose of Reference meaning");
  require_ok(equipment->putAndInsertString(DCM_Manufacturer, input.algorithm_manufacturer.c_str()),
             "Contributing Equipment Manufacturer");
  require_ok(equipment->putAndInsertString(DCM_ManufacturerModelName, input.model_name.c_str()),
             "Contributing Equipment Manufacturer's Model Name");
  if (!input.model_version.empty())
    require_ok(equipment->putAndInsertString(DCM_SoftwareVersions, input.model_version.c_str()),
               "Contributing Equipment Software Versions");
  require_ok(equipment->putAndInsertString(DCM_DeviceUID, input.device_observer_uid.c_str()),
             "Contributing Equipment Device UID");
  require_ok(equipment->putAndInsertString(DCM_ContributionDateTime, input.content_datetime.c_str()),
             "Contribution DateTime");
  require_ok(equipment->putAndInsertString(DCM_ContributionDescription, "AI preliminary report"),
             "Contribution Description");
}

}  // namespace

FindingCode finding_code(const std::string& label) {
  if (const KnownFinding* known = find_known_finding(label)) return {known->code, "SCT", known->meaning};
  const std::string text = trim(label);
  // FNV-1a of the lower-cased label: a stable Code Value (SH, 16 characters at most).
  uint32_t hash = 2166136261u;
  for (unsigned char c : ascii_lower(text)) hash = (hash ^ c) * 16777619u;
  char value[16];
  std::snprintf(value, sizeof value, "L%08X", hash);
  // Code Meaning is LO: at most 64 characters (not bytes); cut at a code point.
  const std::string meaning = dicom::truncate_utf8_code_points(text, 64);
  return {value, kFindingCodingScheme, meaning};
}

namespace {

// The sources as the SR cites them: one study, no instance twice, and the
// predecessor (if any) in the same study.
std::vector<SourceImage> read_sources(const SrInput& input) {
  std::vector<SourceImage> images;
  std::set<std::string> seen_instances;
  for (size_t i = 0; i < input.sources.size(); ++i) {
    images.push_back(read_source(*input.sources[i], i));
    const SourceImage& image = images.back();
    if (!seen_instances.insert(image.sop_instance_uid).second)
      fail("source " + std::to_string(i) + " repeats SOP Instance UID " + image.sop_instance_uid);
    if (image.study_uid != images.front().study_uid)
      fail("source " + std::to_string(i) + " (" + image.sop_instance_uid + ") is in study " + image.study_uid +
           ", not in study " + images.front().study_uid + " of source 0");
  }
  if (input.predecessor && input.predecessor->study_uid != images.front().study_uid)
    fail("predecessor " + input.predecessor->sop_instance_uid + " is in study " + input.predecessor->study_uid +
         ", not in the sources' study " + images.front().study_uid);
  return images;
}

// TID 1500's root: language, the model as device observer, the procedures,
// the image library (one group per series, in source order) and the
// report-level narrative.
void fill_measurement_report(TID1500_MeasurementReport& report, const SrInput& input,
                             const std::vector<SourceImage>& images) {
  // Code meanings as in CID 5000 of the standard (PixelMed's validator warns on
  // DCMTK 3.6.7's older "English (US)").
  const CID5000_Languages language =
      is_chinese(input.language) ? CID5000_Languages(DSRCodedEntryValue("zh-CN", "RFC5646", "Chinese (S)"))
                                 : CID5000_Languages(DSRCodedEntryValue("en-US", "RFC5646", "English (United States)"));
  require_ok(report.setLanguage(language), "TID 1204 language '" + input.language + "'");
  require_ok(report.getObservationContext().addDeviceObserver(input.device_observer_uid.c_str(), input.model_name.c_str(),
                                                              input.algorithm_manufacturer.c_str(),
                                                              input.model_name.c_str(), "" /* serial */,
                                                              input.device_location.c_str()),
             "device observer (UID " + input.device_observer_uid + ")");
  std::set<std::string> procedures_reported;
  for (const SourceImage& image : images) {
    const CID100_QuantitativeDiagnosticImagingProcedures procedure = procedure_for_modality(image.modality);
    if (!procedures_reported.insert(procedure.getSelectedValue().getCodeValue().c_str()).second) continue;
    require_ok(report.addProcedureReported(procedure), "Procedure reported for modality '" + image.modality + "'");
  }

  TID1600_ImageLibrary& library = report.getImageLibrary();
  require_ok(library.createNewImageLibrary(), "Image Library");
  std::string current_group_series;
  for (const SourceImage& image : images) {
    if (image.series_uid != current_group_series) {
      require_ok(library.addImageGroup(), "Image Library Group for series " + image.series_uid);
      current_group_series = image.series_uid;
    }
    const OFCondition added = library.addImageEntry(*image.header, TID1600_ImageLibrary::withAllDescriptors);
    if (added != CMR_EC_NoImageLibraryEntryDescriptorsToBeAdded)
      require_ok(added, "Image Library entry for " + image.sop_instance_uid);
  }

  const NarrativeParts narrative = split_narrative(input.narrative);
  if (!narrative.findings.empty())
    require_ok(report.addQualitativeEvaluation(CODE_DCM_Finding, narrative.findings.c_str()), "narrative findings text");
  if (!narrative.impression.empty())
    require_ok(report.addQualitativeEvaluation(CODE_DCM_Impression, narrative.impression.c_str()),
               "narrative impression text");
}

// Patient and study from the first source, a new series, equipment, the
// preliminary flags, the evidence and predecessor references, and firstread's
// own coding scheme when a code of it is used.
void set_document_header(DSRDocument& document, const SrInput& input, std::vector<SourceImage>& images) {
  SourceImage& first = images.front();
  require_ok(document.readStudyData(*first.header), "patient/study data of source " + first.sop_instance_uid);
  require_ok(document.setSpecificCharacterSetType(DSRTypes::CS_UTF8), "Specific Character Set ISO_IR 192");
  document.createNewSeries();  // also creates the SR's SOP Instance UID
  require_ok(document.setSeriesNumber(kSrSeriesNumber), "Series Number");
  require_ok(document.setSeriesDescription(kSrSeriesDescription), "Series Description");
  require_ok(document.setInstanceNumber("1"), "Instance Number");
  require_ok(document.setManufacturer(input.algorithm_manufacturer.c_str()), "Manufacturer");
  require_ok(document.setManufacturerModelName(input.model_name.c_str()), "Manufacturer's Model Name");
  if (!input.model_version.empty())
    require_ok(document.setSoftwareVersions(input.model_version.c_str()), "Software Versions");
  require_ok(document.setContentDate(input.content_datetime.substr(0, 8).c_str()), "Content Date");
  require_ok(document.setContentTime(input.content_datetime.substr(8, 6).c_str()), "Content Time");
  // A preliminary AI report: Completion Flag stays PARTIAL and Verification
  // Flag UNVERIFIED (DCMTK's defaults until completeDocument()/verifyDocument()).
  require_ok(document.setPreliminaryFlag(DSRTypes::PF_Preliminary), "Preliminary Flag");
  for (const SourceImage& image : images)
    require_ok(document.getCurrentRequestedProcedureEvidence().addItem(image.study_uid.c_str(), image.series_uid.c_str(),
                                                                        image.sop_class_uid.c_str(),
                                                                        image.sop_instance_uid.c_str()),
               "Current Requested Procedure Evidence for " + image.sop_instance_uid);
  if (input.predecessor) {
    const SrPredecessor& predecessor = *input.predecessor;
    require_ok(document.getPredecessorDocuments().addItem(predecessor.study_uid.c_str(), predecessor.series_uid.c_str(),
                                                          predecessor.sop_class_uid.c_str(),
                                                          predecessor.sop_instance_uid.c_str()),
               "Predecessor Documents entry for " + predecessor.sop_instance_uid);
  }
  bool own_codes = false;
  for (const SrFinding& finding : input.findings) own_codes = own_codes || finding_code(finding.label).scheme == kFindingCodingScheme;
  // A specialist's container is named with firstread's own code.
  own_codes = own_codes || !input.specialist_evaluations.empty();
  if (own_codes) {
    DSRCodingSchemeIdentificationList& schemes = document.getCodingSchemeIdentification();
    require_ok(schemes.addItem(kFindingCodingScheme), "Coding Scheme Identification for " + std::string(kFindingCodingScheme));
    require_ok(schemes.setCodingSchemeName("firstread AI finding labels"), "Coding Scheme Name");
    require_ok(schemes.setCodingSchemeResponsibleOrganization("firstread"), "Coding Scheme Responsible Organization");
  }
}

// The checked document as a data set, with its UIDs read back.
void write_document(DSRDocument& document, const SrInput& input, BuiltSr& built) {
  if (document.getCompletionFlag() != DSRTypes::CF_Partial) fail("Completion Flag is not PARTIAL");
  if (document.getVerificationFlag() != DSRTypes::VF_Unverified) fail("Verification Flag is not UNVERIFIED");
  if (!document.isValid()) fail("DCMTK reports the SR document as invalid");

  built.file = std::make_unique<DcmFileFormat>();
  DcmDataset& dataset = *built.file->getDataset();
  require_ok(document.write(dataset), "writing the SR dataset");
  add_contributing_equipment(dataset, input);

  OFString value;
  require_ok(document.getSOPInstanceUID(value), "SR SOP Instance UID");
  built.sop_instance_uid = value.c_str();
  require_ok(document.getSeriesInstanceUID(value), "SR Series Instance UID");
  built.series_instance_uid = value.c_str();
  require_ok(document.getSOPClassUID(value), "SR SOP Class UID");
  built.sop_class_uid = value.c_str();
  if (built.sop_class_uid != kComprehensive3DSrSopClassUid)
    fail("SR SOP Class UID is " + built.sop_class_uid + ", expected Comprehensive 3D SR");
}

}  // namespace

BuiltSr build_sr(const SrInput& input) {
  // DCMTK builds its context-group code lists lazily and not thread-safely;
  // workers call build_sr concurrently, so build them all once up front.
  static std::once_flag context_groups_initialized;
  std::call_once(context_groups_initialized, [] { CMR_ContentMappingResource::initializeAllContextGroups(); });

  validate_input(input);
  std::vector<SourceImage> images = read_sources(input);
  BuiltSr built;
  std::vector<const SourceImage*> finding_images;
  for (size_t i = 0; i < input.findings.size(); ++i)
    finding_images.push_back(&validate_finding(input.findings[i], i, images, built.warnings));

  TID1500_MeasurementReport report(CMR_CID7021::ImagingMeasurementReport);
  fill_measurement_report(report, input, images);
  DSRDocument document;
  require_ok(document.setTreeFromRootTemplate(report), "TID 1500 tree");
  // DCMTK picks Enhanced SR for this tree; IHE AIR asks for Comprehensive 3D SR.
  require_ok(document.changeDocumentType(DSRTypes::DT_Comprehensive3DSR), "Comprehensive 3D SR document type");

  // TID 1410 planar-ROI groups, one per finding; then the specialists' evaluations (GSCo).
  for (size_t i = 0; i < input.findings.size(); ++i)
    add_measurement_group(document.getTree(), input.findings[i], i, *finding_images[i], input);
  for (size_t i = 0; i < input.specialist_evaluations.size(); ++i)
    add_specialist_group(document.getTree(), input.specialist_evaluations[i], i, input, images);

  set_document_header(document, input, images);
  write_document(document, input, built);
  return built;
}

}  // namespace firstread::reports
