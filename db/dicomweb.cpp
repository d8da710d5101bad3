#include "db/dicomweb.h"

#include "db/sql.h"

namespace firstread::db {
namespace {

std::optional<int> optional_int(const pqxx::field& f) {
  if (f.is_null()) return std::nullopt;
  return f.as<int>();
}

// A text[] literal of plain values (UIDs, modality codes): the caller has
// checked them; quoting keeps commas and braces inside one element.
std::string array_literal(const std::vector<std::string>& values) {
  std::string out = "{";
  for (size_t i = 0; i < values.size(); ++i) {
    out += i ? ",\"" : "\"";
    for (char c : values[i]) {
      if (c == '"' || c == '\\') out += '\\';
      out += c;
    }
    out += '"';
  }
  return out + "}";
}

std::vector<std::string> split_backslash(const std::string& text) {
  std::vector<std::string> out;
  if (text.empty()) return out;
  size_t start = 0;
  for (size_t at; (at = text.find('\\', start)) != std::string::npos; start = at + 1) out.push_back(text.substr(start, at - start));
  out.push_back(text.substr(start));
  return out;
}

// DICOM wildcard matching (PS3.4 C.2.2.2.4: * any sequence, ? one character)
// as a LIKE pattern; % _ and \ are escaped.
std::string like_pattern(const std::string& dicom) {
  std::string out;
  for (char c : dicom) {
    if (c == '*') out += '%';
    else if (c == '?') out += '_';
    else if (c == '%' || c == '_' || c == '\\') out += std::string("\\") + c;
    else out += c;
  }
  return out;
}

void add_paging(Statement& q, int limit, int offset) {
  if (limit > 0) q << " LIMIT " + q.bind(std::to_string(limit)) + "::int";
  if (offset > 0) q << " OFFSET " + q.bind(std::to_string(offset)) + "::int";
}

}  // namespace

std::vector<StudyHit> DicomwebIndex::studies(const StudyMatch& m) {
  return pool_.transact([&](pqxx::work& txn) {
    Statement q(
        "SELECT s.study_uid,"
        " array_to_string(ARRAY(SELECT DISTINCT x FROM unnest(s.modalities ||"
        "   firstread.own_object_modalities(s.study_uid)) x ORDER BY 1), '\\'),"
        " c.series, c.instances,"
        " COALESCE((SELECT i.file_path FROM firstread.instances i WHERE i.study_uid = s.study_uid LIMIT 1), '')"
        " FROM firstread.studies s"
        " LEFT JOIN LATERAL (SELECT count(DISTINCT o.series_instance_uid) AS series, count(*) AS instances"
        "   FROM firstread.dicomweb_objects o WHERE o.study_uid = s.study_uid) c ON true"
        " WHERE true");
    if (!m.patient_id.empty()) q << " AND s.patient_id = " + q.bind(m.patient_id);
    if (!m.patient_name.empty()) {
      if (m.patient_name.find_first_of("*?") == std::string::npos)
        q << " AND lower(s.patient_name) = lower(" + q.bind(m.patient_name) + ")";
      else
        q << " AND lower(s.patient_name) LIKE lower(" + q.bind(like_pattern(m.patient_name)) + ")";
    }
    if (!m.date_from.empty()) q << " AND s.study_date >= " + q.bind(m.date_from);
    if (!m.date_to.empty()) q << " AND s.study_date <= " + q.bind(m.date_to);
    if (!m.accession_number.empty()) q << " AND s.accession_number = " + q.bind(m.accession_number);
    if (!m.study_uids.empty()) q << " AND s.study_uid = ANY(" + q.bind(array_literal(m.study_uids)) + "::text[])";
    if (!m.modalities.empty()) {
      // Two index reads (the modalities' GIN index, the reports of a study)
      // joined by UID, rather than an OR that would read every study.
      const std::string mods = q.bind(array_literal(m.modalities)) + "::text[]";
      q << " AND s.study_uid IN (SELECT study_uid FROM firstread.studies WHERE modalities && " + mods +
               " UNION SELECT study_uid FROM firstread.reports WHERE 'SR' = ANY(" + mods + ")"
               " UNION SELECT r.study_uid FROM firstread.report_objects o JOIN firstread.reports r USING (report_id)"
               "   WHERE (CASE WHEN o.kind = 'key_image' THEN 'OT' ELSE 'PR' END) = ANY(" + mods + "))";
    }
    q << " ORDER BY s.first_received_at DESC, s.study_uid DESC";
    add_paging(q, m.limit, m.offset);
    std::vector<StudyHit> out;
    for (const auto& r : q.exec(txn)) {
      StudyHit h;
      h.study_uid = r[0].c_str();
      h.modalities = split_backslash(r[1].c_str());
      h.series = r[2].as<int>();
      h.instances = r[3].as<int>();
      h.file_path = r[4].c_str();
      out.push_back(std::move(h));
    }
    return out;
  });
}

std::vector<SeriesHit> DicomwebIndex::series(const SeriesMatch& m) {
  return pool_.transact([&](pqxx::work& txn) {
    Statement q(
        "SELECT series_instance_uid, COALESCE(min(modality), ''), min(series_number), count(*), min(file_path)"
        " FROM firstread.dicomweb_objects WHERE study_uid = ");
    q << q.bind(m.study_uid);
    if (!m.series_uid.empty()) q << " AND series_instance_uid = " + q.bind(m.series_uid);
    q << " GROUP BY series_instance_uid HAVING true";
    if (!m.modality.empty()) q << " AND min(modality) = " + q.bind(m.modality);
    if (m.series_number) q << " AND min(series_number) = " + q.bind(std::to_string(*m.series_number)) + "::int";
    q << " ORDER BY min(series_number) NULLS LAST, series_instance_uid";
    add_paging(q, m.limit, m.offset);
    std::vector<SeriesHit> out;
    for (const auto& r : q.exec(txn))
      out.push_back({r[0].c_str(), r[1].c_str(), optional_int(r[2]), r[3].as<int>(), r[4].c_str()});
    return out;
  });
}

std::vector<ObjectHit> DicomwebIndex::objects(const ObjectMatch& m) {
  return pool_.transact([&](pqxx::work& txn) {
    Statement q(
        "SELECT study_uid, series_instance_uid, sop_instance_uid, sop_class_uid, COALESCE(modality, ''), file_path,"
        " instance_number, rows, columns, frames FROM firstread.dicomweb_objects WHERE study_uid = ");
    q << q.bind(m.study_uid);
    if (!m.series_uid.empty()) q << " AND series_instance_uid = " + q.bind(m.series_uid);
    if (!m.sop_instance_uid.empty()) q << " AND sop_instance_uid = " + q.bind(m.sop_instance_uid);
    if (!m.sop_class_uid.empty()) q << " AND sop_class_uid = " + q.bind(m.sop_class_uid);
    if (m.instance_number) q << " AND instance_number = " + q.bind(std::to_string(*m.instance_number)) + "::int";
    q << " ORDER BY series_number NULLS LAST, series_instance_uid, instance_number NULLS LAST, sop_instance_uid";
    add_paging(q, m.limit, m.offset);
    std::vector<ObjectHit> out;
    for (const auto& r : q.exec(txn)) {
      ObjectHit h;
      h.study_uid = r[0].c_str();
      h.series_uid = r[1].c_str();
      h.sop_instance_uid = r[2].c_str();
      h.sop_class_uid = r[3].c_str();
      h.modality = r[4].c_str();
      h.file_path = r[5].c_str();
      h.instance_number = optional_int(r[6]);
      h.rows = optional_int(r[7]);
      h.columns = optional_int(r[8]);
      h.frames = optional_int(r[9]);
      out.push_back(std::move(h));
    }
    return out;
  });
}

}  // namespace firstread::db
