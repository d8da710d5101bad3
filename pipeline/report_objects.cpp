#include "pipeline/report_objects.h"

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcdatset.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcuid.h>

#include <algorithm>
#include <map>
#include <stdexcept>

#include "reports/key_image.h"
#include "reports/presentation_state.h"

namespace firstread::pipeline {
namespace {

std::string get_string(const DcmDataset* dataset, const DcmTagKey& tag) {
  OFString value;
  // Only read (DCMTK's readers are non-const).
  if (const_cast<DcmDataset*>(dataset)->findAndGetOFString(tag, value).bad()) return "";
  return value.c_str();
}

// A report's presentation states share one series, and its key images
// another; a re-run continues the superseded report's series with the next
// Instance Numbers (viewers show the newest presentation first).
struct SeriesPlan {
  std::string series_uid;
  int next_instance = 1;
};

SeriesPlan plan_series(const std::vector<EarlierObject>& earlier, bool presentation_states) {
  SeriesPlan plan;
  for (const EarlierObject& e : earlier) {
    const bool is_ps = e.kind == "gsps" || e.kind == "csps";
    if (is_ps != presentation_states || (!presentation_states && e.kind != "key_image")) continue;
    if (plan.series_uid.empty()) plan.series_uid = e.series_instance_uid;
    if (e.series_instance_uid == plan.series_uid) plan.next_instance = std::max(plan.next_instance, e.instance_number + 1);
  }
  if (plan.series_uid.empty()) {
    char uid[100];
    plan.series_uid = dcmGenerateUniqueIdentifier(uid, SITE_SERIES_UID_ROOT);
  }
  return plan;
}

std::string store(storage::FileStorage& storage, const std::string& study_uid, const std::string& series_uid,
                  const std::string& sop_uid, DcmFileFormat& file, const std::string& what) {
  const std::string path = "reports/" + study_uid + "/" + series_uid + "/" + sop_uid + ".dcm";
  storage.write_durably(path, [&](const std::string& tmp) {
    const OFCondition c = file.saveFile(tmp.c_str(), EXS_LittleEndianExplicit);
    if (c.bad()) throw std::runtime_error("cannot write " + what + " " + tmp + ": " + c.text());
  });
  return path;
}

}  // namespace

std::vector<ReportObject> build_and_store_report_objects(const ReportObjectsInput& input, storage::FileStorage& storage,
                                                         std::vector<std::string>& warnings) {
  std::vector<ReportObject> objects;
  // One presentation state per source series, in the order the model read them.
  std::vector<std::string> series_order;
  std::map<std::string, std::vector<size_t>> images_of_series;
  for (size_t i = 0; i < input.images.size(); ++i) {
    const std::string series = get_string(input.images[i].dataset, DCM_SeriesInstanceUID);
    if (!images_of_series.count(series)) series_order.push_back(series);
    images_of_series[series].push_back(i);
  }
  SeriesPlan ps_series = plan_series(input.earlier, true);
  for (const std::string& series : series_order) {
    reports::PsInput ps;
    for (size_t i : images_of_series[series]) {
      ps.sources.push_back(input.images[i].dataset);
      ps.frames_read.push_back(input.images[i].frame_read);
    }
    for (const reports::SrFinding& f : input.findings)
      for (size_t i : images_of_series[series])
        if (get_string(input.images[i].dataset, DCM_SOPInstanceUID) == f.sop_instance_uid)
          ps.annotations.push_back({f.label, f.confidence, f.sop_instance_uid, f.frame, f.x1, f.y1, f.x2, f.y2});
    ps.creation_datetime = input.creation_datetime;
    ps.model_name = input.model_name;
    ps.model_version = input.model_version;
    const std::string kind = reports::is_color_image(*ps.sources.front()) ? "csps" : "gsps";
    ps.series_instance_uid = ps_series.series_uid;
    ps.instance_number = ps_series.next_instance++;
    reports::BuiltPs built = reports::build_presentation_state(ps);
    for (const std::string& w : built.warnings) warnings.push_back(kind + " of series " + series + ": " + w);
    ReportObject object{kind, series, built.sop_class_uid, built.sop_instance_uid, built.series_instance_uid, "",
                        ps.instance_number};
    object.file_path = store(storage, input.study_uid, built.series_instance_uid, built.sop_instance_uid, *built.file,
                             kind + " of series " + series);
    objects.push_back(object);
  }
  if (!input.key_images) return objects;
  // A key image per image read, with the boxes on that image.
  SeriesPlan key_series = plan_series(input.earlier, false);
  for (const ReadImage& image : input.images) {
    reports::KeyImageInput key;
    key.source = image.dataset;
    const std::string sop = get_string(image.dataset, DCM_SOPInstanceUID);
    Sint32 frames = 1;
    const_cast<DcmDataset*>(image.dataset)->findAndGetSint32(DCM_NumberOfFrames, frames);
    key.frame = frames > 1 ? image.frame_read + 1 : 0;
    key.width = image.width;
    key.height = image.height;
    key.rgb = &image.rgb;
    for (const reports::SrFinding& f : input.findings)
      if (f.sop_instance_uid == sop) key.boxes.push_back({f.label, f.confidence, f.x1, f.y1, f.x2, f.y2});
    key.creation_datetime = input.creation_datetime;
    key.model_name = input.model_name;
    key.model_version = input.model_version;
    key.series_instance_uid = key_series.series_uid;
    key.instance_number = key_series.next_instance++;
    reports::BuiltKeyImage built = reports::build_key_image(key);
    ReportObject object{"key_image", sop, built.sop_class_uid, built.sop_instance_uid, built.series_instance_uid, "",
                        key.instance_number};
    object.file_path = store(storage, input.study_uid, built.series_instance_uid, built.sop_instance_uid, *built.file,
                             "key image of " + sop);
    objects.push_back(object);
  }
  return objects;
}

}  // namespace firstread::pipeline
