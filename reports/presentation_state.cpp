// GSPS / CSPS for firstread's findings (PS3.3 A.33.1 and A.33.2), written with
// DCMTK's dataset API: one graphic layer "FIRSTREAD AI", per finding a closed
// POLYLINE rectangle and a text object with its label, in PIXEL units of the
// source image; for grey images the modality LUT and the VOI the model's
// 8-bit input was made with (dicom/pixels: VOI LUT, else the first
// window, else the frame's min-max), for colour images an ICC profile.
#include "reports/presentation_state.h"

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcdatset.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcrledrg.h>
#include <dcmtk/dcmdata/dcuid.h>
#include <dcmtk/dcmimgle/dcmimage.h>
#include <dcmtk/dcmjpeg/djdecode.h>
#include <dcmtk/dcmjpls/djdecode.h>
#include <lcms2.h>

#include <cstdio>
#include <map>
#include <mutex>
#include <set>
#include <stdexcept>
#include <vector>

namespace firstread::reports {
namespace {

[[noreturn]] void fail(const std::string& message) {
  throw std::runtime_error("build_presentation_state: " + message);
}

void require_ok(const OFCondition& condition, const std::string& what) {
  if (condition.bad()) fail(what + ": " + condition.text());
}

std::string get_string(DcmItem& item, const DcmTagKey& tag, unsigned long pos = 0) {
  OFString value;
  if (item.findAndGetOFString(tag, value, pos).bad()) return "";
  return value.c_str();
}

std::string format_number(double value) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.6g", value);
  return buffer;
}

// DcmItem offers element access only through non-const members; the source
// is only read (see build_sr's note on threads).
DcmDataset& readable(const DcmDataset* dataset) { return const_cast<DcmDataset&>(*dataset); }

struct Source {
  DcmDataset* dataset = nullptr;
  std::string sop_class_uid, sop_instance_uid, series_uid, study_uid, photometric;
  unsigned rows = 0, columns = 0;
  long frames = 1;
  int frame_read = 0;
  bool multi_frame_class = false;
};

Source read_source(const DcmDataset* dataset, int frame_read, size_t index) {
  const std::string which = "source " + std::to_string(index);
  if (dataset == nullptr) fail(which + " is a null dataset");
  Source s;
  s.dataset = &readable(dataset);
  s.sop_class_uid = get_string(*s.dataset, DCM_SOPClassUID);
  s.sop_instance_uid = get_string(*s.dataset, DCM_SOPInstanceUID);
  s.series_uid = get_string(*s.dataset, DCM_SeriesInstanceUID);
  s.study_uid = get_string(*s.dataset, DCM_StudyInstanceUID);
  s.photometric = get_string(*s.dataset, DCM_PhotometricInterpretation);
  if (s.sop_instance_uid.empty() || s.series_uid.empty() || s.study_uid.empty() || s.sop_class_uid.empty())
    fail(which + " lacks SOP Class/Instance, Series or Study Instance UID");
  Uint16 rows = 0, columns = 0;
  if (s.dataset->findAndGetUint16(DCM_Rows, rows).bad() || s.dataset->findAndGetUint16(DCM_Columns, columns).bad() ||
      rows == 0 || columns == 0)
    fail(which + " (" + s.sop_instance_uid + ") has no Rows/Columns: not an image");
  s.rows = rows;
  s.columns = columns;
  Sint32 frames = 1;
  if (s.dataset->findAndGetSint32(DCM_NumberOfFrames, frames).good() && frames > 1) s.frames = frames;
  s.frame_read = frame_read;
  // The multi-frame image classes (Referenced Frame Number allowed): those
  // whose IOD has the Multi-frame Module. Enhanced/multi-frame classes all
  // carry Number of Frames; the classic single-frame ones must not get a frame.
  static const std::set<std::string> single_frame = {
      UID_ComputedRadiographyImageStorage, UID_DigitalXRayImageStorageForPresentation,
      UID_DigitalXRayImageStorageForProcessing, UID_DigitalMammographyXRayImageStorageForPresentation,
      UID_DigitalMammographyXRayImageStorageForProcessing, UID_DigitalIntraOralXRayImageStorageForPresentation,
      UID_DigitalIntraOralXRayImageStorageForProcessing, UID_CTImageStorage, UID_MRImageStorage,
      UID_UltrasoundImageStorage, UID_SecondaryCaptureImageStorage, UID_PositronEmissionTomographyImageStorage,
      UID_VLEndoscopicImageStorage, UID_VLMicroscopicImageStorage, UID_VLSlideCoordinatesMicroscopicImageStorage,
      UID_VLPhotographicImageStorage};
  s.multi_frame_class = s.frames > 1 && single_frame.count(s.sop_class_uid) == 0;
  return s;
}

void put(DcmItem& item, const DcmTagKey& tag, const std::string& value, const std::string& what) {
  require_ok(item.putAndInsertString(tag, value.c_str()), what);
}

// Patient and study attributes copied from the first source, as UTF-8.
void copy_patient_and_study(DcmDataset& out, DcmDataset& source) {
  static const DcmTagKey kTags[] = {DCM_SpecificCharacterSet, DCM_PatientName, DCM_PatientID, DCM_IssuerOfPatientID,
                                    DCM_PatientBirthDate, DCM_PatientSex, DCM_StudyInstanceUID, DCM_StudyDate,
                                    DCM_StudyTime, DCM_ReferringPhysicianName, DCM_StudyID, DCM_AccessionNumber,
                                    DCM_StudyDescription};
  for (const DcmTagKey& tag : kTags) {
    DcmElement* element = nullptr;
    if (source.findAndGetElement(tag, element).good() && element != nullptr)
      require_ok(out.insert(OFstatic_cast(DcmElement*, element->clone()), true), "copying " + std::string(tag.toString().c_str()));
  }
  require_ok(out.convertToUTF8(), "converting the patient/study text to UTF-8");
  // Type 2 attributes of the Patient and General Study modules: present, maybe empty.
  for (const DcmTagKey& tag : {DCM_PatientName, DCM_PatientID, DCM_PatientBirthDate, DCM_PatientSex, DCM_StudyDate,
                               DCM_StudyTime, DCM_ReferringPhysicianName, DCM_StudyID, DCM_AccessionNumber})
    if (!out.tagExists(tag)) require_ok(out.insertEmptyElement(tag), "empty " + std::string(tag.toString().c_str()));
  require_ok(out.putAndInsertString(DCM_SpecificCharacterSet, "ISO_IR 192"), "Specific Character Set");
}

// An item of a Referenced Image Sequence: the image, and its frame where the
// SOP class is multi-frame.
void add_image_reference(DcmItem& parent, const DcmTagKey& sequence, const Source& source, int frame) {
  DcmItem* item = nullptr;
  require_ok(parent.findOrCreateSequenceItem(sequence, item, -2), "Referenced Image Sequence item");
  put(*item, DCM_ReferencedSOPClassUID, source.sop_class_uid, "Referenced SOP Class UID");
  put(*item, DCM_ReferencedSOPInstanceUID, source.sop_instance_uid, "Referenced SOP Instance UID");
  if (frame > 0 && source.multi_frame_class) put(*item, DCM_ReferencedFrameNumber, std::to_string(frame), "Referenced Frame Number");
}

void register_decoders_once() {
  static std::once_flag once;
  std::call_once(once, [] {
    DJDecoderRegistration::registerCodecs();
    DJLSDecoderRegistration::registerCodecs();
    DcmRLEDecoderRegistration::registerCodecs();
  });
}

// The Softcopy VOI LUT item for one image: what dicom/pixels applied.
// Returns false (and leaves no item) when the min-max cannot be computed.
bool add_voi(DcmDataset& out, const Source& source, std::vector<std::string>& warnings) {
  DcmDataset& in = *source.dataset;
  DcmItem* voi_lut = nullptr;
  const bool has_voi_lut = in.findAndGetSequenceItem(DCM_VOILUTSequence, voi_lut, 0).good() && voi_lut != nullptr;
  double center = 0, width = 0;
  const bool has_window = in.findAndGetFloat64(DCM_WindowCenter, center, 0).good() &&
                          in.findAndGetFloat64(DCM_WindowWidth, width, 0).good();
  std::string function = get_string(in, DCM_VOILUTFunction);
  if (function.empty()) function = "LINEAR";
  const bool window_usable = has_window && ((function == "LINEAR" && width >= 1) ||
                                            ((function == "LINEAR_EXACT" || function == "SIGMOID") && width > 0));
  if (!has_voi_lut && !window_usable) {
    // Min-max of the modality values of the frame the model read; as a LINEAR
    // window (PS3.3 C.11.2.1.2.1) that maps min to 0 and max to full scale.
    register_decoders_once();
    DicomImage image(&in, in.getOriginalXfer(), CIF_UsePartialAccessToPixelData, source.frame_read, 1);
    double low = 0, high = 0;
    if (image.getStatus() != EIS_Normal || image.getMinMaxValues(low, high, 0) == 0) {
      warnings.push_back("image " + source.sop_instance_uid + " frame " + std::to_string(source.frame_read + 1) +
                         ": no VOI written (DCMTK cannot decode it: " +
                         DicomImage::getString(image.getStatus()) + ")");
      return false;
    }
    center = (low + high) / 2 + 0.5;
    width = high - low + 1;
    function = "LINEAR";
  }
  DcmItem* item = nullptr;
  require_ok(out.findOrCreateSequenceItem(DCM_SoftcopyVOILUTSequence, item, -2), "Softcopy VOI LUT Sequence item");
  add_image_reference(*item, DCM_ReferencedImageSequence, source, source.frames > 1 ? source.frame_read + 1 : 0);
  if (has_voi_lut) {
    DcmItem* copy = nullptr;
    require_ok(item->findOrCreateSequenceItem(DCM_VOILUTSequence, copy, -2), "VOI LUT Sequence copy");
    for (unsigned long i = 0; i < voi_lut->card(); ++i)
      require_ok(copy->insert(OFstatic_cast(DcmElement*, voi_lut->getElement(i)->clone()), true), "VOI LUT element");
  } else {
    put(*item, DCM_WindowCenter, format_number(center), "Window Center");
    put(*item, DCM_WindowWidth, format_number(width), "Window Width");
    if (function != "LINEAR") put(*item, DCM_VOILUTFunction, function, "VOI LUT Function");
  }
  return true;
}

// The Modality LUT module (required when the images have one): the first
// source's rescale or Modality LUT Sequence.
void add_modality_lut(DcmDataset& out, DcmDataset& in) {
  DcmItem* lut = nullptr;
  if (in.findAndGetSequenceItem(DCM_ModalityLUTSequence, lut, 0).good() && lut != nullptr) {
    DcmItem* copy = nullptr;
    require_ok(out.findOrCreateSequenceItem(DCM_ModalityLUTSequence, copy, -2), "Modality LUT Sequence");
    for (unsigned long i = 0; i < lut->card(); ++i)
      require_ok(copy->insert(OFstatic_cast(DcmElement*, lut->getElement(i)->clone()), true), "Modality LUT element");
    return;
  }
  const std::string intercept = get_string(in, DCM_RescaleIntercept), slope = get_string(in, DCM_RescaleSlope);
  if (intercept.empty() || slope.empty()) return;
  put(out, DCM_RescaleIntercept, intercept, "Rescale Intercept");
  put(out, DCM_RescaleSlope, slope, "Rescale Slope");
  std::string type = get_string(in, DCM_RescaleType);
  if (type.empty()) type = get_string(in, DCM_Modality) == "CT" ? "HU" : "US";  // US = unspecified
  put(out, DCM_RescaleType, type, "Rescale Type");
}

// An sRGB ICC profile made by Little CMS: colour images without one of
// their own are taken as sRGB (PS3.3 C.11.15.1.1).
std::vector<unsigned char> srgb_icc_profile() {
  cmsHPROFILE profile = cmsCreate_sRGBProfile();
  if (profile == nullptr) fail("Little CMS cannot create an sRGB profile");
  cmsUInt32Number size = 0;
  std::vector<unsigned char> bytes;
  if (cmsSaveProfileToMem(profile, nullptr, &size) && size > 0) {
    bytes.resize(size);
    if (!cmsSaveProfileToMem(profile, bytes.data(), &size)) bytes.clear();
  }
  cmsCloseProfile(profile);
  if (bytes.empty()) fail("Little CMS cannot serialise the sRGB profile");
  if (bytes.size() % 2) bytes.push_back(0);  // OB values have even length
  return bytes;
}

void add_icc_profile(DcmDataset& out, DcmDataset& in) {
  const Uint8* profile = nullptr;
  unsigned long length = 0;
  if (in.findAndGetUint8Array(DCM_ICCProfile, profile, &length).good() && profile != nullptr && length > 0) {
    require_ok(out.putAndInsertUint8Array(DCM_ICCProfile, profile, length), "ICC Profile (the source's)");
    return;
  }
  const std::vector<unsigned char> srgb = srgb_icc_profile();
  require_ok(out.putAndInsertUint8Array(DCM_ICCProfile, srgb.data(), srgb.size()), "ICC Profile (sRGB)");
}

std::string annotation_text(const PsAnnotation& a) {
  std::string text = a.label;
  if (a.confidence) text += " " + format_number(*a.confidence) + " %";
  return text;
}

void put_floats(DcmItem& item, const DcmTagKey& tag, const std::vector<float>& values, const std::string& what) {
  require_ok(item.putAndInsertFloat32Array(tag, values.data(), values.size()), what);
}

// One Graphic Annotation item per image and frame that has boxes.
void add_annotations(DcmDataset& out, const std::vector<Source>& sources, const std::vector<PsAnnotation>& annotations) {
  std::map<std::pair<size_t, int>, std::vector<const PsAnnotation*>> by_image;
  for (size_t i = 0; i < annotations.size(); ++i) {
    const PsAnnotation& a = annotations[i];
    const std::string which = "annotation " + std::to_string(i + 1) + " ('" + a.label + "')";
    size_t index = sources.size();
    for (size_t k = 0; k < sources.size(); ++k)
      if (sources[k].sop_instance_uid == a.sop_instance_uid) index = k;
    if (index == sources.size()) fail(which + " is on " + a.sop_instance_uid + ", which is not among the sources");
    const Source& s = sources[index];
    if (!(a.x1 >= 0 && a.y1 >= 0 && a.x2 <= s.columns && a.y2 <= s.rows && a.x1 < a.x2 && a.y1 < a.y2))
      fail(which + " box [" + format_number(a.x1) + ", " + format_number(a.y1) + ", " + format_number(a.x2) + ", " +
           format_number(a.y2) + "] is empty or outside image " + s.sop_instance_uid + " (" +
           std::to_string(s.columns) + " x " + std::to_string(s.rows) + ")");
    if (a.frame < 0 || a.frame > s.frames) fail(which + " frame " + std::to_string(a.frame) + " is beyond the image's frames");
    by_image[{index, a.frame}].push_back(&a);
  }
  for (const auto& [key, list] : by_image) {
    const Source& s = sources[key.first];
    DcmItem* item = nullptr;
    require_ok(out.findOrCreateSequenceItem(DCM_GraphicAnnotationSequence, item, -2), "Graphic Annotation item");
    add_image_reference(*item, DCM_ReferencedImageSequence, s, key.second);
    put(*item, DCM_GraphicLayer, kPsGraphicLayer, "Graphic Layer");
    // Text a twentieth of the image high, above the box (below it at the top edge).
    const float text_height = std::max(8.0f, static_cast<float>(s.rows) / 20.0f);
    for (const PsAnnotation* a : list) {
      DcmItem* text = nullptr;
      require_ok(item->findOrCreateSequenceItem(DCM_TextObjectSequence, text, -2), "Text Object item");
      put(*text, DCM_UnformattedTextValue, annotation_text(*a), "Unformatted Text Value");
      put(*text, DCM_BoundingBoxAnnotationUnits, "PIXEL", "Bounding Box Annotation Units");
      const float left = static_cast<float>(a->x1);
      const float right = std::max(left + 1.0f, std::min(static_cast<float>(s.columns), left + 12 * text_height));
      const bool above = a->y1 >= text_height;
      const float top = above ? static_cast<float>(a->y1) - text_height
                              : std::min(static_cast<float>(a->y2), static_cast<float>(s.rows) - text_height);
      const float bottom = std::min(static_cast<float>(s.rows), top + text_height);
      put_floats(*text, DCM_BoundingBoxTopLeftHandCorner, {left, std::max(0.0f, top)}, "Bounding Box TLHC");
      put_floats(*text, DCM_BoundingBoxBottomRightHandCorner, {right, bottom}, "Bounding Box BRHC");
      put(*text, DCM_BoundingBoxTextHorizontalJustification, "LEFT", "Bounding Box Text Horizontal Justification");

      DcmItem* graphic = nullptr;
      require_ok(item->findOrCreateSequenceItem(DCM_GraphicObjectSequence, graphic, -2), "Graphic Object item");
      put(*graphic, DCM_GraphicAnnotationUnits, "PIXEL", "Graphic Annotation Units");
      require_ok(graphic->putAndInsertUint16(DCM_GraphicDimensions, 2), "Graphic Dimensions");
      require_ok(graphic->putAndInsertUint16(DCM_NumberOfGraphicPoints, 5), "Number of Graphic Points");
      const auto x1 = static_cast<float>(a->x1), y1 = static_cast<float>(a->y1);
      const auto x2 = static_cast<float>(a->x2), y2 = static_cast<float>(a->y2);
      put_floats(*graphic, DCM_GraphicData, {x1, y1, x2, y1, x2, y2, x1, y2, x1, y1}, "Graphic Data");
      put(*graphic, DCM_GraphicType, "POLYLINE", "Graphic Type");
      put(*graphic, DCM_GraphicFilled, "N", "Graphic Filled");
    }
  }
  DcmItem* layer = nullptr;
  require_ok(out.findOrCreateSequenceItem(DCM_GraphicLayerSequence, layer, -2), "Graphic Layer item");
  put(*layer, DCM_GraphicLayer, kPsGraphicLayer, "Graphic Layer");
  put(*layer, DCM_GraphicLayerOrder, "1", "Graphic Layer Order");
  require_ok(layer->putAndInsertUint16(DCM_GraphicLayerRecommendedDisplayGrayscaleValue, 0xFFFF),
             "Graphic Layer Recommended Display Grayscale Value");
  // Yellow in CIELab (L 97, a -22, b 94) scaled as PS3.3 C.10.7.1.1 asks.
  const Uint16 yellow[3] = {static_cast<Uint16>(97.0 / 100 * 65535), static_cast<Uint16>((-22.0 + 128) / 255 * 65535),
                            static_cast<Uint16>((94.0 + 128) / 255 * 65535)};
  require_ok(layer->putAndInsertUint16Array(DCM_GraphicLayerRecommendedDisplayCIELabValue, yellow, 3),
             "Graphic Layer Recommended Display CIELab Value");
  put(*layer, DCM_GraphicLayerDescription, "firstread AI findings (preliminary, not for diagnosis)",
      "Graphic Layer Description");
}

}  // namespace

bool is_color_image(const DcmDataset& image) {
  const std::string photometric = get_string(readable(&image), DCM_PhotometricInterpretation);
  return !(photometric.empty() || photometric == "MONOCHROME1" || photometric == "MONOCHROME2");
}

namespace {

// The sources, checked: as many frames as sources, one series, one kind
// (grey or colour) — one presentation state per series.
std::vector<Source> read_sources(const PsInput& input, bool& color) {
  if (input.sources.empty()) fail("no source image given");
  if (input.frames_read.size() != input.sources.size())
    fail("frames_read has " + std::to_string(input.frames_read.size()) + " entries for " +
         std::to_string(input.sources.size()) + " sources");
  if (input.creation_datetime.size() < 14 || input.creation_datetime.size() > 21)
    fail("creation_datetime '" + input.creation_datetime + "' is not YYYYMMDDHHMMSS[.FFFFFF]");
  std::vector<Source> sources;
  for (size_t i = 0; i < input.sources.size(); ++i) {
    sources.push_back(read_source(input.sources[i], input.frames_read[i], i));
    if (sources.back().series_uid != sources.front().series_uid)
      fail("source " + std::to_string(i) + " is in series " + sources.back().series_uid + ", not " +
           sources.front().series_uid + ": one presentation state per series");
  }
  color = is_color_image(*input.sources.front());
  for (size_t i = 1; i < input.sources.size(); ++i)
    if (is_color_image(*input.sources[i]) != color)
      fail("series " + sources.front().series_uid + " mixes grey and colour images");
  return sources;
}

// SOP Common, the series (its own, or the superseded one's), equipment, and
// the Presentation State Identification a radiologist chooses it by.
void put_identification(DcmDataset& out, const PsInput& input, DcmDataset& first, BuiltPs& built) {
  char uid[100];
  built.sop_instance_uid = dcmGenerateUniqueIdentifier(uid, SITE_INSTANCE_UID_ROOT);
  built.series_instance_uid =
      input.series_instance_uid.empty() ? dcmGenerateUniqueIdentifier(uid, SITE_SERIES_UID_ROOT) : input.series_instance_uid;
  put(out, DCM_SOPClassUID, built.sop_class_uid, "SOP Class UID");
  put(out, DCM_SOPInstanceUID, built.sop_instance_uid, "SOP Instance UID");
  const std::string date = input.creation_datetime.substr(0, 8), time = input.creation_datetime.substr(8);
  put(out, DCM_InstanceCreationDate, date, "Instance Creation Date");
  put(out, DCM_InstanceCreationTime, time, "Instance Creation Time");
  put(out, DCM_Modality, "PR", "Modality");
  put(out, DCM_SeriesInstanceUID, built.series_instance_uid, "Series Instance UID");
  put(out, DCM_SeriesNumber, kPsSeriesNumber, "Series Number");
  put(out, DCM_SeriesDescription, kPsSeriesDescription, "Series Description");
  // General Series Laterality (2C): the source's, else present and empty.
  put(out, DCM_Laterality, get_string(first, DCM_Laterality), "Laterality");
  put(out, DCM_SeriesDate, date, "Series Date");
  put(out, DCM_SeriesTime, time, "Series Time");
  put(out, DCM_Manufacturer, input.manufacturer, "Manufacturer");
  if (!input.model_name.empty()) put(out, DCM_ManufacturerModelName, input.model_name, "Manufacturer's Model Name");
  if (!input.model_version.empty()) put(out, DCM_SoftwareVersions, input.model_version, "Software Versions");

  put(out, DCM_InstanceNumber, std::to_string(input.instance_number), "Instance Number");
  put(out, DCM_ContentLabel, kPsContentLabel, "Content Label");
  std::string description = "AI preliminary result, not for diagnosis";
  if (!input.model_name.empty()) description += " (" + input.model_name + ")";
  put(out, DCM_ContentDescription, description.substr(0, 64), "Content Description");
  put(out, DCM_PresentationCreationDate, date, "Presentation Creation Date");
  put(out, DCM_PresentationCreationTime, time, "Presentation Creation Time");
  put(out, DCM_ContentCreatorName, "firstread^AI", "Content Creator's Name");
}

// Presentation State Relationship (the series' images the model read) and
// Displayed Area: each whole image, scaled to fit, square pixels unless the
// image says otherwise.
void put_references_and_displayed_areas(DcmDataset& out, const std::vector<Source>& sources) {
  DcmItem* series = nullptr;
  require_ok(out.findOrCreateSequenceItem(DCM_ReferencedSeriesSequence, series, -2), "Referenced Series Sequence");
  put(*series, DCM_SeriesInstanceUID, sources.front().series_uid, "Referenced Series Instance UID");
  for (const Source& s : sources) add_image_reference(*series, DCM_ReferencedImageSequence, s, 0);

  for (const Source& s : sources) {
    DcmItem* area = nullptr;
    require_ok(out.findOrCreateSequenceItem(DCM_DisplayedAreaSelectionSequence, area, -2), "Displayed Area Selection item");
    add_image_reference(*area, DCM_ReferencedImageSequence, s, 0);
    put(*area, DCM_DisplayedAreaTopLeftHandCorner, "1\\1", "Displayed Area TLHC");
    put(*area, DCM_DisplayedAreaBottomRightHandCorner, std::to_string(s.columns) + "\\" + std::to_string(s.rows),
        "Displayed Area BRHC");
    put(*area, DCM_PresentationSizeMode, "SCALE TO FIT", "Presentation Size Mode");
    const std::string spacing = get_string(*s.dataset, DCM_PixelSpacing, 0);
    const std::string spacing_col = get_string(*s.dataset, DCM_PixelSpacing, 1);
    if (!spacing.empty() && !spacing_col.empty())
      put(*area, DCM_PresentationPixelSpacing, spacing + "\\" + spacing_col, "Presentation Pixel Spacing");
    else
      put(*area, DCM_PresentationPixelAspectRatio, "1\\1", "Presentation Pixel Aspect Ratio");
  }
}

}  // namespace

BuiltPs build_presentation_state(const PsInput& input) {
  BuiltPs built;
  const std::vector<Source> sources = read_sources(input, built.color);
  built.sop_class_uid = built.color ? kCspsSopClassUid : kGspsSopClassUid;

  built.file = std::make_unique<DcmFileFormat>();
  DcmDataset& out = *built.file->getDataset();
  DcmDataset& first = *sources.front().dataset;
  copy_patient_and_study(out, first);
  put_identification(out, input, first, built);
  put_references_and_displayed_areas(out, sources);

  add_annotations(out, sources, input.annotations);
  put(out, DCM_ImageRotation, "0", "Image Rotation");
  put(out, DCM_ImageHorizontalFlip, "N", "Image Horizontal Flip");
  if (built.color) {
    add_icc_profile(out, first);
  } else {
    add_modality_lut(out, first);
    for (const Source& s : sources) add_voi(out, s, built.warnings);
    // MONOCHROME1 is shown inverted, as the model's input was made.
    put(out, DCM_PresentationLUTShape, sources.front().photometric == "MONOCHROME1" ? "INVERSE" : "IDENTITY",
        "Presentation LUT Shape");
  }
  return built;
}

}  // namespace firstread::reports
