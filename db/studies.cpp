#include "db/studies.h"

#include "db/sql.h"

namespace firstread::db {

std::vector<QuietStudy> Studies::lock_quiet(pqxx::work& txn, double stable_seconds, int limit) {
  std::vector<QuietStudy> out;
  for (const auto& row : txn.exec_params(
           "SELECT study_uid, COALESCE(calling_ae, ''), generation FROM firstread.studies"
           " WHERE assembly_pending AND last_received_at <= now() - make_interval(secs => $1)"
           " ORDER BY last_received_at LIMIT $2 FOR UPDATE SKIP LOCKED",
           stable_seconds, limit))
    out.push_back({row[0].c_str(), row[1].c_str(), row[2].as<int>()});
  return out;
}

StudyContent Studies::content(pqxx::work& txn, const std::string& study_uid) {
  StudyContent c;
  for (const auto& i : txn.exec_params(
           "SELECT DISTINCT COALESCE(modality, ''), COALESCE(body_part, '') FROM firstread.instances"
           " WHERE study_uid = $1",
           study_uid)) {
    if (i[0].size()) c.modalities.insert(i[0].c_str());
    if (i[1].size()) c.body_parts.insert(i[1].c_str());
  }
  return c;
}

void Studies::mark_assembled(pqxx::work& txn, const std::string& study_uid, int generation, int routed_jobs) {
  txn.exec_params0(
      "UPDATE firstread.studies SET assembly_pending = false, generation = $2, routed_jobs = $3 WHERE study_uid = $1",
      study_uid, generation, routed_jobs);
}

bool Studies::request_rerun(const std::string& study_uid) {
  return pool_.transact([&](pqxx::work& txn) {
    // last_received_at is left alone: the study is already quiet, so the next
    // assembly pass takes it, and latency keeps meaning "since the last instance".
    auto r = txn.exec_params("UPDATE firstread.studies SET assembly_pending = true WHERE study_uid = $1", study_uid);
    return r.affected_rows() == 1;
  });
}

std::vector<StudyInstance> Studies::instances(const std::string& study_uid) {
  return pool_.transact([&](pqxx::work& txn) {
    std::vector<StudyInstance> out;
    for (const auto& r : txn.exec_params(
             "SELECT sop_instance_uid, sop_class_uid, series_instance_uid, file_path, COALESCE(series_number, 0),"
             " COALESCE(instance_number, 0), COALESCE(frames, 1), rows IS NOT NULL AND columns IS NOT NULL"
             " FROM firstread.instances WHERE study_uid = $1"
             " ORDER BY series_number NULLS LAST, series_instance_uid, instance_number NULLS LAST, sop_instance_uid",
             study_uid)) {
      StudyInstance i;
      i.sop_instance_uid = r[0].c_str();
      i.sop_class_uid = r[1].c_str();
      i.series_instance_uid = r[2].c_str();
      i.file_path = r[3].c_str();
      i.series_number = r[4].as<int>();
      i.instance_number = r[5].as<int>();
      i.frames = r[6].as<int>();
      i.has_rows_and_columns = r[7].as<bool>();
      out.push_back(std::move(i));
    }
    return out;
  });
}

std::optional<InstanceFile> Studies::instance_file(const std::string& sop_instance_uid) {
  return pool_.transact([&](pqxx::work& txn) -> std::optional<InstanceFile> {
    auto r = txn.exec_params(
        "SELECT file_path, coalesce(frames, 1), study_uid FROM api.instances WHERE sop_instance_uid = $1",
        sop_instance_uid);
    if (r.empty()) return std::nullopt;
    return InstanceFile{r[0][0].c_str(), r[0][1].as<int>(), r[0][2].c_str()};
  });
}

StudyPage Studies::page(const StudyQuery& query) {
  return pool_.transact([&](pqxx::work& txn) {
    txn.exec0("SET LOCAL TimeZone = 'UTC'");
    Statement q(
        "SELECT to_jsonb(s)::text, (extract(epoch FROM s.first_received_at) * 1000000)::bigint, s.study_uid"
        " FROM api.studies s WHERE true");
    if (!query.since.empty()) q << " AND s.last_received_at >= " + q.bind(query.since) + "::timestamptz";
    if (!query.modality.empty()) q << " AND s.modalities @> ARRAY[" + q.bind(query.modality) + "::text]";
    if (!query.state.empty()) q << " AND s.state = " + q.bind(query.state);
    if (query.after)
      q << " AND (s.first_received_at, s.study_uid) < ('epoch'::timestamptz + " +
               q.bind(std::to_string(query.after->first_received_us)) + "::bigint * interval '1 microsecond', " +
               q.bind(query.after->study_uid) + ")";
    q << " ORDER BY s.first_received_at DESC, s.study_uid DESC LIMIT " + q.bind(std::to_string(query.limit + 1)) +
             "::int";
    StudyPage page;
    const auto rows = q.exec(txn);
    for (int i = 0; i < static_cast<int>(rows.size()); ++i) {
      if (i == query.limit) {
        const auto& last = rows[i - 1];
        page.next = StudyCursor{last[1].as<long long>(), last[2].c_str()};
        break;
      }
      page.studies.push_back(nlohmann::json::parse(rows[i][0].c_str()));
    }
    return page;
  });
}

std::optional<nlohmann::json> Studies::detail(const std::string& study_uid) {
  return pool_.transact([&](pqxx::work& txn) -> std::optional<nlohmann::json> {
    txn.exec0("SET LOCAL TimeZone = 'UTC'");
    auto study = txn.exec_params("SELECT to_jsonb(s)::text FROM api.studies s WHERE study_uid = $1", study_uid);
    if (study.empty()) return std::nullopt;
    auto instances = txn.exec_params(
        "SELECT coalesce(jsonb_agg(to_jsonb(i) ORDER BY i.series_instance_uid, i.received_at, i.sop_instance_uid), "
        "'[]')::text FROM api.instances i WHERE study_uid = $1",
        study_uid);
    auto jobs = txn.exec_params(
        "SELECT coalesce(jsonb_agg(to_jsonb(j) ORDER BY j.job_id), '[]')::text FROM api.jobs j WHERE study_uid = $1",
        study_uid);
    auto reports = txn.exec_params(
        "SELECT coalesce(jsonb_agg(jsonb_build_object('report_id', r.report_id, 'job_id', r.job_id, 'route', "
        "r.route, 'model', r.model, 'model_version', r.model_version, 'language', r.language, "
        "'sr_sop_instance_uid', r.sr_sop_instance_uid, 'supersedes_report_id', r.supersedes_report_id, "
        "'created_at', r.created_at, 'latency_ms', r.latency_ms) ORDER BY r.report_id), '[]')::text "
        "FROM api.reports r WHERE study_uid = $1",
        study_uid);
    return nlohmann::json{{"study", nlohmann::json::parse(study[0][0].c_str())},
                          {"instances", nlohmann::json::parse(instances[0][0].c_str())},
                          {"jobs", nlohmann::json::parse(jobs[0][0].c_str())},
                          {"reports", nlohmann::json::parse(reports[0][0].c_str())}};
  });
}

bool Studies::exists(const std::string& study_uid) {
  return pool_.transact([&](pqxx::work& txn) {
    return !txn.exec_params("SELECT 1 FROM firstread.studies WHERE study_uid = $1", study_uid).empty();
  });
}

}  // namespace firstread::db
