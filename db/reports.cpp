#include "db/reports.h"

#include <chrono>

#include "db/jobs.h"
#include "db/sql.h"

namespace firstread::db {

std::optional<Predecessor> Reports::latest_for_route(const std::string& study_uid, const std::string& route) {
  return pool_.transact([&](pqxx::work& txn) -> std::optional<Predecessor> {
    auto r = txn.exec_params(
        "SELECT report_id, sr_series_instance_uid, sr_sop_instance_uid FROM firstread.reports"
        " WHERE study_uid = $1 AND route = $2 ORDER BY created_at DESC, report_id DESC LIMIT 1",
        study_uid, route);
    if (r.empty()) return std::nullopt;
    return Predecessor{r[0][0].as<int64_t>(), r[0][1].c_str(), r[0][2].c_str()};
  });
}

std::vector<ReportObjectRow> Reports::objects_of(int64_t report_id) {
  return pool_.transact([&](pqxx::work& txn) {
    std::vector<ReportObjectRow> out;
    for (const auto& r : txn.exec_params(
             "SELECT kind, source_uid, series_instance_uid, instance_number FROM firstread.report_objects"
             " WHERE report_id = $1 ORDER BY object_id",
             report_id))
      out.push_back({r[0].c_str(), r[1].c_str(), r[2].c_str(), r[3].as<int>()});
    return out;
  });
}

std::vector<std::string> Reports::own_instances(const std::string& study_uid) {
  return pool_.transact([&](pqxx::work& txn) {
    std::vector<std::string> out;
    for (const auto& r : txn.exec_params(
             "SELECT sr_sop_instance_uid FROM firstread.reports WHERE study_uid = $1"
             " UNION ALL SELECT o.sop_instance_uid FROM firstread.report_objects o"
             " JOIN firstread.reports r USING (report_id) WHERE r.study_uid = $1",
             study_uid))
      out.push_back(r[0].c_str());
    return out;
  });
}

CommittedReport Reports::commit(const NewReport& report, const std::vector<NewFinding>& findings,
                                const std::vector<NewExport>& exports, const JobLease& job, pqxx::work& txn) {
  const auto started = std::chrono::steady_clock::now();
  if (!Jobs::lock_if_ours(txn, job.job_id, job.owner))
    throw LeaseLost("lease lost: job " + std::to_string(job.job_id) + " was taken over");
  CommittedReport out;
  out.db_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count();
  auto r = txn.exec_params1(
      "INSERT INTO firstread.reports (study_uid, job_id, route, model, model_version, language, text,"
      " sr_sop_instance_uid, sr_series_instance_uid, sr_file_path, supersedes_report_id, latency_ms,"
      " decode_ms, inference_ms, sr_ms, db_ms, backend, served_model, prompt_tokens, completion_tokens, truncated,"
      " prompt, gsco)"
      " SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, NULLIF($11, 0),"
      "  extract(epoch FROM clock_timestamp() - s.last_received_at) * 1000, $12, $13, $14, $15,"
      "  $16, NULLIF($17, ''), $18, $19, $20, NULLIF($21, ''), NULLIF($22, '')::jsonb"
      " FROM firstread.studies s WHERE s.study_uid = $1 RETURNING report_id, latency_ms",
      report.study_uid, job.job_id, report.route, report.model, report.model_version, report.language, report.text,
      report.sr_sop_instance_uid, report.sr_series_instance_uid, report.sr_file_path, report.supersedes_report_id,
      report.decode_ms, report.inference_ms, report.sr_ms, out.db_ms, report.backend, report.served_model,
      report.prompt_tokens, report.completion_tokens, report.truncated, report.prompt, report.gsco);
  out.report_id = r[0].as<int64_t>();
  out.latency_ms = r[1].as<double>();
  for (const auto& f : findings) {
    txn.exec_params0(
        "INSERT INTO firstread.findings (report_id, label, text, sop_instance_uid, frame, x1, y1, x2, y2, confidence)"
        " VALUES ($1, $2, NULLIF($3, ''), $4, NULLIF($5, 0), $6, $7, $8, $9, NULLIF($10, '')::float8)",
        out.report_id, f.label, f.text, f.sop_instance_uid, f.frame, f.x1, f.y1, f.x2, f.y2,
        f.confidence ? std::to_string(*f.confidence) : std::string());
  }
  std::vector<int64_t> object_ids;
  for (const auto& o : report.objects) {
    object_ids.push_back(txn.exec_params1(
        "INSERT INTO firstread.report_objects (report_id, kind, source_uid, sop_class_uid, sop_instance_uid,"
        " series_instance_uid, instance_number, file_path) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING object_id",
        out.report_id, o.kind, o.source_uid, o.sop_class_uid, o.sop_instance_uid, o.series_instance_uid,
        o.instance_number, o.file_path)[0].as<int64_t>());
  }
  for (const auto& e : exports) {
    if (e.object_index >= static_cast<int>(object_ids.size()))
      throw std::invalid_argument("export to " + e.destination + " names object " + std::to_string(e.object_index) +
                                  " of " + std::to_string(object_ids.size()));
    const int64_t object_id = e.object_index < 0 ? 0 : object_ids[e.object_index];
    txn.exec_params0(
        "INSERT INTO firstread.exports (report_id, destination, ae_title, host, port, max_attempts, object_id)"
        " VALUES ($1, $2, $3, $4, $5, $6, NULLIF($7, 0))",
        out.report_id, e.destination, e.ae_title, e.host, e.port, e.max_attempts, object_id);
  }
  const auto job_seconds = Jobs::complete(txn, job.job_id, job.owner);
  if (!job_seconds) throw LeaseLost("lease lost: job " + std::to_string(job.job_id) + " was taken over");
  out.job_seconds = *job_seconds;
  if (!exports.empty()) txn.exec_params("SELECT pg_notify($1, '')", kExportsChannel);
  return out;
}

CommittedReport Reports::commit(const NewReport& report, const std::vector<NewFinding>& findings,
                                const std::vector<NewExport>& exports, const JobLease& job) {
  return pool_.transact([&](pqxx::work& txn) { return commit(report, findings, exports, job, txn); });
}

ReportPage Reports::read(const ReportQuery& query) {
  return pool_.transact([&](pqxx::work& txn) {
    txn.exec0("SET LOCAL TimeZone = 'UTC'");
    const std::string order = query.newest_first ? " DESC" : "";
    Statement q(
        "SELECT (to_jsonb(r) - 'sr_file_path') || jsonb_build_object("
        "  'sr_url', '/api/v1/reports/' || r.report_id || '/sr',"
        "  'findings', (SELECT coalesce(jsonb_agg(to_jsonb(f) - 'report_id' ORDER BY f.finding_id), '[]')"
        "               FROM api.findings f WHERE f.report_id = r.report_id),"
        "  'exports', (SELECT coalesce(jsonb_agg(to_jsonb(e) - 'report_id' ORDER BY e.export_id), '[]')"
        "              FROM api.exports e WHERE e.report_id = r.report_id)),"
        " (extract(epoch FROM r.created_at) * 1000000)::bigint, r.report_id"
        " FROM api.reports r WHERE true");
    if (!query.study_uid.empty()) q << " AND r.study_uid = " + q.bind(query.study_uid);
    if (!query.route.empty()) q << " AND r.route = " + q.bind(query.route);
    if (!query.since.empty()) q << " AND r.created_at >= " + q.bind(query.since) + "::timestamptz";
    if (query.after)
      q << " AND (r.created_at, r.report_id) " + std::string(query.newest_first ? "<" : ">") +
               " ('epoch'::timestamptz + " + q.bind(std::to_string(query.after->created_us)) +
               "::bigint * interval '1 microsecond', " + q.bind(std::to_string(query.after->report_id)) + "::bigint)";
    q << " ORDER BY r.created_at" + order + ", r.report_id" + order + " LIMIT " +
             q.bind(std::to_string(query.limit + 1)) + "::int";
    ReportPage page;
    const auto rows = q.exec(txn);
    for (int i = 0; i < static_cast<int>(rows.size()); ++i) {
      if (i == query.limit) {
        page.next = ReportCursor{rows[i - 1][1].as<long long>(), rows[i - 1][2].as<int64_t>()};
        break;
      }
      page.reports.push_back(nlohmann::json::parse(rows[i][0].c_str()));
    }
    return page;
  });
}

std::optional<SrFile> Reports::sr_file(int64_t report_id) {
  return pool_.transact([&](pqxx::work& txn) -> std::optional<SrFile> {
    auto r = txn.exec_params(
        "SELECT sr_file_path, sr_sop_instance_uid, study_uid FROM api.reports WHERE report_id = $1", report_id);
    if (r.empty()) return std::nullopt;
    return SrFile{r[0][0].c_str(), r[0][1].c_str(), r[0][2].c_str()};
  });
}

std::optional<DueExport> Exports::claim_due(int lease_seconds) {
  return pool_.transact([&](pqxx::work& txn) -> std::optional<DueExport> {
    auto r = txn.exec_params(
        "UPDATE firstread.exports e SET state = 'sending', attempts = e.attempts + 1,"
        " lease_expires_at = now() + make_interval(secs => $1)"
        " FROM firstread.reports r"
        " WHERE e.export_id = (SELECT export_id FROM firstread.exports"
        "   WHERE (state = 'pending' AND next_attempt_at <= now()) OR (state = 'sending' AND lease_expires_at < now())"
        "   ORDER BY next_attempt_at, export_id FOR UPDATE SKIP LOCKED LIMIT 1)"
        " AND r.report_id = e.report_id"
        " RETURNING e.export_id, e.destination, e.ae_title, e.host, e.port,"
        " COALESCE((SELECT o.file_path FROM firstread.report_objects o WHERE o.object_id = e.object_id), r.sr_file_path),"
        " COALESCE((SELECT o.sop_instance_uid FROM firstread.report_objects o WHERE o.object_id = e.object_id),"
        "  r.sr_sop_instance_uid),"
        " e.attempts, e.max_attempts,"
        " COALESCE((SELECT o.kind FROM firstread.report_objects o WHERE o.object_id = e.object_id), 'sr')",
        lease_seconds);
    if (r.empty()) return std::nullopt;
    DueExport d;
    d.export_id = r[0][0].as<int64_t>();
    d.destination = r[0][1].c_str();
    d.ae_title = r[0][2].c_str();
    d.host = r[0][3].c_str();
    d.port = r[0][4].as<int>();
    d.sr_file_path = r[0][5].c_str();
    d.sr_sop_instance_uid = r[0][6].c_str();
    d.attempts = r[0][7].as<int>();
    d.max_attempts = r[0][8].as<int>();
    d.object = r[0][9].c_str();
    return d;
  });
}

std::string Exports::settle(int64_t export_id, bool sent, const std::string& error, double backoff_seconds) {
  return pool_.transact([&](pqxx::work& txn) {
    if (sent) {
      txn.exec_params0(
          "UPDATE firstread.exports SET state = 'sent', sent_at = now(), last_error = NULL, lease_expires_at = NULL"
          " WHERE export_id = $1",
          export_id);
      return std::string("sent");
    }
    auto r = txn.exec_params1(
        "UPDATE firstread.exports SET state = CASE WHEN attempts >= max_attempts THEN 'failed' ELSE 'pending' END,"
        " last_error = $2, lease_expires_at = NULL,"
        " next_attempt_at = now() + make_interval(secs => $3 * power(2, GREATEST(attempts - 1, 0)))"
        " WHERE export_id = $1 RETURNING state",
        export_id, error, backoff_seconds);
    return std::string(r[0].c_str());
  });
}

}  // namespace firstread::db
