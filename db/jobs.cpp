#include "db/jobs.h"

#include "db/sql.h"

namespace firstread::db {

int64_t Jobs::enqueue(pqxx::work& txn, const std::string& study_uid, int generation, const std::string& route,
                      const std::string& model, int max_attempts) {
  auto row = txn.exec_params1(
      "INSERT INTO firstread.jobs (study_uid, generation, route, model, max_attempts)"
      " VALUES ($1, $2, $3, $4, $5) RETURNING job_id",
      study_uid, generation, route, model, max_attempts);
  txn.exec_params("SELECT pg_notify($1, '')", kJobsChannel);
  return row[0].as<int64_t>();
}

std::optional<Job> Jobs::claim(const std::string& owner, int lease_seconds) {
  return pool_.transact([&](pqxx::work& txn) -> std::optional<Job> {
    auto r = txn.exec_params(
        "UPDATE firstread.jobs j SET state = 'running', attempts = j.attempts + 1, started_at = now(),"
        " finished_at = NULL, lease_owner = $1, lease_expires_at = now() + make_interval(secs => $2)"
        " WHERE j.job_id = (SELECT job_id FROM firstread.jobs"
        "   WHERE state IN ('queued', 'failed') AND next_attempt_at <= now()"
        "   ORDER BY next_attempt_at, job_id FOR UPDATE SKIP LOCKED LIMIT 1)"
        " RETURNING j.job_id, j.study_uid, j.route, j.model, j.attempts, j.max_attempts",
        owner, lease_seconds);
    if (r.empty()) return std::nullopt;
    Job job;
    job.job_id = r[0][0].as<int64_t>();
    job.study_uid = r[0][1].c_str();
    job.route = r[0][2].c_str();
    job.model = r[0][3].c_str();
    job.attempts = r[0][4].as<int>();
    job.max_attempts = r[0][5].as<int>();
    return job;
  });
}

bool Jobs::heartbeat(int64_t job_id, const std::string& owner, int lease_seconds) {
  return pool_.transact([&](pqxx::work& txn) {
    auto r = txn.exec_params(
        "UPDATE firstread.jobs SET lease_expires_at = now() + make_interval(secs => $3)"
        " WHERE job_id = $1 AND lease_owner = $2 AND state = 'running'",
        job_id, owner, lease_seconds);
    return r.affected_rows() == 1;
  });
}

bool Jobs::lock_if_ours(pqxx::work& txn, int64_t job_id, const std::string& owner) {
  return !txn.exec_params(
                 "SELECT 1 FROM firstread.jobs WHERE job_id = $1 AND lease_owner = $2 AND state = 'running' FOR UPDATE",
                 job_id, owner)
              .empty();
}

std::optional<double> Jobs::complete(pqxx::work& txn, int64_t job_id, const std::string& owner) {
  auto r = txn.exec_params(
      "UPDATE firstread.jobs SET state = 'done', finished_at = now(), error = NULL, lease_owner = NULL,"
      " lease_expires_at = NULL WHERE job_id = $1 AND lease_owner = $2 AND state = 'running'"
      " RETURNING extract(epoch FROM finished_at - started_at)::float8",
      job_id, owner);
  if (r.empty()) return std::nullopt;
  return r[0][0].is_null() ? 0.0 : r[0][0].as<double>();
}

bool Jobs::complete(int64_t job_id, const std::string& owner) {
  return pool_.transact([&](pqxx::work& txn) { return complete(txn, job_id, owner).has_value(); });
}

std::string Jobs::fail(int64_t job_id, const std::string& owner, const std::string& error, double backoff_seconds,
                       double min_delay_seconds) {
  return pool_.transact([&](pqxx::work& txn) {
    auto r = txn.exec_params(
        "UPDATE firstread.jobs SET"
        " state = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'failed' END,"
        " error = $3, finished_at = now(), lease_owner = NULL, lease_expires_at = NULL,"
        " next_attempt_at = now() + make_interval(secs => GREATEST($4 * power(2, GREATEST(attempts - 1, 0)), $5))"
        " WHERE job_id = $1 AND lease_owner = $2 AND state = 'running' RETURNING state",
        job_id, owner, error, backoff_seconds, min_delay_seconds);
    if (r.empty()) return std::string("lost");
    const std::string state = r[0][0].c_str();
    if (state == "failed") txn.exec_params("SELECT pg_notify($1, '')", kJobsChannel);
    return state;
  });
}

std::vector<ExpiredLease> Jobs::expire_leases(double backoff_seconds) {
  return pool_.transact([&](pqxx::work& txn) {
    auto r = txn.exec_params(
        "UPDATE firstread.jobs SET"
        " state = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'failed' END,"
        " error = 'lease expired: worker ' || COALESCE(lease_owner, '?') || ' stopped heartbeating',"
        " finished_at = now(), lease_owner = NULL, lease_expires_at = NULL,"
        " next_attempt_at = now() + make_interval(secs => $1 * power(2, GREATEST(attempts - 1, 0)))"
        " WHERE state = 'running' AND lease_expires_at < now() RETURNING job_id, state",
        backoff_seconds);
    std::vector<ExpiredLease> out;
    for (const auto& row : r) out.push_back({row[0].as<int64_t>(), row[1].c_str()});
    return out;
  });
}

nlohmann::json Jobs::list(const JobQuery& query) {
  return pool_.transact([&](pqxx::work& txn) {
    txn.exec0("SET LOCAL TimeZone = 'UTC'");
    Statement q("SELECT coalesce(jsonb_agg(to_jsonb(p) ORDER BY p.job_id DESC), '[]')::text FROM"
                " (SELECT * FROM api.jobs j WHERE true");
    if (!query.state.empty()) q << " AND j.state = " + q.bind(query.state);
    if (!query.study_uid.empty()) q << " AND j.study_uid = " + q.bind(query.study_uid);
    if (query.before_job_id > 0) q << " AND j.job_id < " + q.bind(std::to_string(query.before_job_id)) + "::bigint";
    q << " ORDER BY j.job_id DESC LIMIT " + q.bind(std::to_string(query.limit)) + "::int) p";
    return nlohmann::json::parse(q.exec(txn)[0][0].c_str());
  });
}

}  // namespace firstread::db
