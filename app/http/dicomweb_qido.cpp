// QIDO-RS (PS3.18 10.6): study, series and instance searches on everything
// stored here. Matching, order, counts and paging come from the database
// (db/dicomweb.h, indexed); the attribute values of each answer are copied
// from one stored file of the study or series (its header only) and written
// as DICOM JSON by DCMTK, so names and dates read exactly as in the files.
// Unsupported matching keys are ignored with a Warning header (PS3.18
// 8.3.4.1); fuzzymatching=true is answered as exact matching, with a warning.
#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcdeftag.h>

#include <set>

#include "app/http/dicomweb_json.h"
#include "db/dicomweb.h"
#include "dicom/uid.h"

namespace firstread::app::http {
namespace {

// Study-level attributes every study answer carries (PS3.18 Table 10.6.3-3).
const std::vector<DcmTagKey> kStudyTags = {
    DCM_SpecificCharacterSet, DCM_StudyDate, DCM_StudyTime, DCM_AccessionNumber, DCM_ReferringPhysicianName,
    DCM_PatientName, DCM_PatientID, DCM_PatientBirthDate, DCM_PatientSex, DCM_StudyInstanceUID, DCM_StudyID,
    DCM_StudyDescription};
const std::vector<DcmTagKey> kSeriesTags = {
    DCM_SpecificCharacterSet, DCM_Modality, DCM_SeriesDescription, DCM_SeriesNumber, DCM_SeriesInstanceUID,
    DCM_SeriesDate, DCM_SeriesTime, DCM_PerformedProcedureStepStartDate, DCM_PerformedProcedureStepStartTime,
    DCM_BodyPartExamined};
const std::vector<DcmTagKey> kInstanceTags = {DCM_SpecificCharacterSet, DCM_SOPClassUID, DCM_SOPInstanceUID,
                                              DCM_InstanceNumber, DCM_Rows, DCM_Columns, DCM_NumberOfFrames,
                                              DCM_BitsAllocated};

struct Query {
  std::map<DcmTagKey, std::string> keys;  // matching keys with a value
  IncludeFields include;
  int limit = 0, offset = 0;
  std::vector<std::string> warnings;
};

// The request's parameters: matching keys (by keyword or tag), limit, offset,
// includefield, fuzzymatching. `supported` are the keys this level matches on.
Query read_query(const ApiRequest& req, const std::set<DcmTagKey>& supported, int default_limit) {
  Query q;
  q.limit = default_limit;
  q.include = include_fields(req);
  for (const auto& [name, value] : req.query) {
    if (name == "includefield") continue;
    if (name == "limit") {
      q.limit = static_cast<int>(integer_param("limit", value, 1, 1000));
      continue;
    }
    if (name == "offset") {
      q.offset = static_cast<int>(integer_param("offset", value, 0, 1 << 30));
      continue;
    }
    if (name == "fuzzymatching") {
      if (value == "true") q.warnings.push_back("fuzzymatching is not supported: exact matching was used");
      continue;
    }
    const DcmTagKey tag = tag_from_name(name);
    if (!supported.count(tag)) {
      q.warnings.push_back("the matching key " + name + " is not supported and was ignored");
      continue;
    }
    if (!value.empty() && value != "*") q.keys[tag] = value;
  }
  return q;
}

std::string key(const Query& q, const DcmTagKey& tag) {
  auto it = q.keys.find(tag);
  return it == q.keys.end() ? "" : it->second;
}

std::vector<std::string> split_list(const std::string& text, char separator = ',') {
  std::vector<std::string> out;
  std::string item;
  for (char c : text + separator) {
    if (c == separator || c == '\\') {
      if (!item.empty()) out.push_back(item);
      item.clear();
    } else {
      item += c;
    }
  }
  return out;
}

bool is_date(const std::string& s) {
  return s.size() == 8 && s.find_first_not_of("0123456789") == std::string::npos;
}

// StudyDate: a date, or a range with either end open (PS3.4 C.2.2.2.5).
void read_date_range(const std::string& text, std::string& from, std::string& to) {
  const size_t dash = text.find('-');
  from = dash == std::string::npos ? text : text.substr(0, dash);
  to = dash == std::string::npos ? text : text.substr(dash + 1);
  if ((!from.empty() && !is_date(from)) || (!to.empty() && !is_date(to)) || (from.empty() && to.empty()))
    throw HttpError(400, "StudyDate '" + text.substr(0, 40) + "': expected YYYYMMDD or YYYYMMDD-YYYYMMDD");
}

std::string dicomweb_root(const ApiRequest& req) { return req.base_url + "/dicomweb"; }

void put(DcmItem& item, const DcmTagKey& tag, const std::string& value) { item.putAndInsertString(tag, value.c_str()); }

// The search answer's attributes: the level's own, those includefield named,
// copied from one stored file (all of its header with includefield=all).
void copy_from_file(const Context& ctx, const std::string& path, const std::vector<DcmTagKey>& level_tags,
                    const IncludeFields& include, DcmItem& out) {
  if (path.empty()) return;
  auto file = load_stored(ctx, path);
  DcmDataset& source = *file->getDataset();
  if (include.all) {
    for (unsigned long i = 0; i < source.card(); ++i) {
      DcmElement* e = source.getElement(i);
      if (e->getTag() != DCM_PixelData) out.insert(static_cast<DcmElement*>(e->clone()), true);
    }
    return;
  }
  copy_attributes(source, out, level_tags);
  copy_attributes(source, out, include.tags);
}

}  // namespace

ApiResponse qido_studies(Context& ctx, const ApiRequest& req) {
  const Query q = read_query(req,
                             {DCM_PatientID, DCM_PatientName, DCM_StudyDate, DCM_ModalitiesInStudy, DCM_AccessionNumber,
                              DCM_StudyInstanceUID},
                             100);
  db::StudyMatch m;
  m.patient_id = key(q, DCM_PatientID);
  m.patient_name = key(q, DCM_PatientName);
  if (const std::string d = key(q, DCM_StudyDate); !d.empty()) read_date_range(d, m.date_from, m.date_to);
  m.accession_number = key(q, DCM_AccessionNumber);
  m.modalities = split_list(key(q, DCM_ModalitiesInStudy));
  m.study_uids = split_list(key(q, DCM_StudyInstanceUID));
  for (const auto& uid : m.study_uids) require_uid("StudyInstanceUID", uid);
  m.limit = q.limit;
  m.offset = q.offset;
  json answer = json::array();
  std::vector<std::string> studies;
  for (const auto& hit : db::DicomwebIndex(ctx.pool).studies(m)) {
    DcmDataset out;
    copy_from_file(ctx, hit.file_path, kStudyTags, q.include, out);
    put(out, DCM_StudyInstanceUID, hit.study_uid);
    std::string modalities;
    for (const auto& mod : hit.modalities) modalities += (modalities.empty() ? "" : "\\") + mod;
    put(out, DCM_ModalitiesInStudy, modalities);
    put(out, DCM_NumberOfStudyRelatedSeries, std::to_string(hit.series));
    put(out, DCM_NumberOfStudyRelatedInstances, std::to_string(hit.instances));
    put(out, DCM_RetrieveURL, dicomweb_root(req) + "/studies/" + hit.study_uid);
    answer.push_back(dataset_json(out));
    studies.push_back(hit.study_uid);
  }
  ApiResponse r = dicom_json_response(answer, q.warnings);
  r.audit_studies = std::move(studies);  // the audit line names each study answered
  return r;
}

ApiResponse qido_series(Context& ctx, const ApiRequest& req) {
  const std::string& study = req.path_params.at("study");
  require_uid("Study Instance UID", study);
  const Query q = read_query(req, {DCM_Modality, DCM_SeriesInstanceUID, DCM_SeriesNumber}, 1000);
  db::SeriesMatch m;
  m.study_uid = study;
  m.series_uid = key(q, DCM_SeriesInstanceUID);
  m.modality = key(q, DCM_Modality);
  if (const std::string n = key(q, DCM_SeriesNumber); !n.empty())
    m.series_number = static_cast<int>(integer_param("SeriesNumber", n, -(1 << 30), 1 << 30));
  m.limit = q.limit;
  m.offset = q.offset;
  json answer = json::array();
  for (const auto& hit : db::DicomwebIndex(ctx.pool).series(m)) {
    DcmDataset out;
    copy_from_file(ctx, hit.file_path, kSeriesTags, q.include, out);
    put(out, DCM_SeriesInstanceUID, hit.series_uid);
    if (!out.tagExists(DCM_Modality)) put(out, DCM_Modality, hit.modality);
    put(out, DCM_NumberOfSeriesRelatedInstances, std::to_string(hit.instances));
    put(out, DCM_RetrieveURL, dicomweb_root(req) + "/studies/" + study + "/series/" + hit.series_uid);
    answer.push_back(dataset_json(out));
  }
  ApiResponse r = dicom_json_response(answer, q.warnings);
  r.audit_studies = {study};
  return r;
}

ApiResponse qido_instances(Context& ctx, const ApiRequest& req) {
  const std::string& study = req.path_params.at("study");
  require_uid("Study Instance UID", study);
  auto series_param = req.path_params.find("series");
  const std::string series = series_param == req.path_params.end() ? "" : series_param->second;
  if (!series.empty()) require_uid("Series Instance UID", series);
  const Query q = read_query(req, {DCM_SOPInstanceUID, DCM_SOPClassUID, DCM_InstanceNumber}, 1000);
  db::ObjectMatch m;
  m.study_uid = study;
  m.series_uid = series;
  m.sop_instance_uid = key(q, DCM_SOPInstanceUID);
  m.sop_class_uid = key(q, DCM_SOPClassUID);
  if (const std::string n = key(q, DCM_InstanceNumber); !n.empty())
    m.instance_number = static_cast<int>(integer_param("InstanceNumber", n, -(1 << 30), 1 << 30));
  m.limit = q.limit;
  m.offset = q.offset;
  json answer = json::array();
  for (const auto& hit : db::DicomwebIndex(ctx.pool).objects(m)) {
    DcmDataset out;
    // The index answers the instance level; firstread's own objects and
    // includefield need the file.
    if (q.include.all || !q.include.tags.empty() || !hit.instance_number)
      copy_from_file(ctx, hit.file_path, kInstanceTags, q.include, out);
    put(out, DCM_SOPClassUID, hit.sop_class_uid);
    put(out, DCM_SOPInstanceUID, hit.sop_instance_uid);
    if (hit.instance_number) put(out, DCM_InstanceNumber, std::to_string(*hit.instance_number));
    if (hit.rows) out.putAndInsertUint16(DCM_Rows, static_cast<Uint16>(*hit.rows));
    if (hit.columns) out.putAndInsertUint16(DCM_Columns, static_cast<Uint16>(*hit.columns));
    if (hit.frames && hit.rows) put(out, DCM_NumberOfFrames, std::to_string(*hit.frames));
    put(out, DCM_SeriesInstanceUID, hit.series_uid);
    put(out, DCM_StudyInstanceUID, hit.study_uid);
    if (!hit.modality.empty()) put(out, DCM_Modality, hit.modality);
    put(out, DCM_RetrieveURL, dicomweb_root(req) + "/studies/" + hit.study_uid + "/series/" + hit.series_uid +
                                  "/instances/" + hit.sop_instance_uid);
    answer.push_back(dataset_json(out));
  }
  ApiResponse r = dicom_json_response(answer, q.warnings);
  r.audit_studies = {study};
  return r;
}

}  // namespace firstread::app::http
