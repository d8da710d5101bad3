#include "worklist/job_queue.h"

#include <spdlog/spdlog.h>

#include <thread>

namespace firstread::worklist {

int64_t JobQueue::enqueue(pqxx::work& txn, const std::string& study_uid, int generation, const std::string& route,
                          const std::string& model, int max_attempts) {
  auto row = txn.exec_params1(
      "INSERT INTO firstread.jobs (study_uid, generation, route, model, max_attempts)"
      " VALUES ($1, $2, $3, $4, $5) RETURNING job_id",
      study_uid, generation, route, model, max_attempts);
  txn.exec0(std::string("NOTIFY ") + kJobsChannel);
  return row[0].as<int64_t>();
}

std::optional<Job> JobQueue::claim(const std::string& owner) {
  return pool_.transact([&](pqxx::work& txn) -> std::optional<Job> {
    auto r = txn.exec_params(
        "UPDATE firstread.jobs j SET state = 'running', attempts = j.attempts + 1, started_at = now(),"
        " finished_at = NULL, lease_owner = $1, lease_expires_at = now() + make_interval(secs => $2)"
        " WHERE j.job_id = (SELECT job_id FROM firstread.jobs"
        "   WHERE state IN ('queued', 'failed') AND next_attempt_at <= now()"
        "   ORDER BY next_attempt_at, job_id FOR UPDATE SKIP LOCKED LIMIT 1)"
        " RETURNING j.job_id, j.study_uid, j.route, j.model, j.attempts, j.max_attempts",
        owner, policy_.lease_seconds);
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

bool JobQueue::heartbeat(int64_t job_id, const std::string& owner) {
  return pool_.transact([&](pqxx::work& txn) {
    auto r = txn.exec_params(
        "UPDATE firstread.jobs SET lease_expires_at = now() + make_interval(secs => $3)"
        " WHERE job_id = $1 AND lease_owner = $2 AND state = 'running'",
        job_id, owner, policy_.lease_seconds);
    return r.affected_rows() == 1;
  });
}

bool JobQueue::complete(int64_t job_id, const std::string& owner) {
  return pool_.transact([&](pqxx::work& txn) {
    auto r = txn.exec_params(
        "UPDATE firstread.jobs SET state = 'done', finished_at = now(), error = NULL, lease_owner = NULL,"
        " lease_expires_at = NULL WHERE job_id = $1 AND lease_owner = $2 AND state = 'running'",
        job_id, owner);
    return r.affected_rows() == 1;
  });
}

std::string JobQueue::fail(int64_t job_id, const std::string& owner, const std::string& error) {
  return pool_.transact([&](pqxx::work& txn) {
    auto r = txn.exec_params(
        "UPDATE firstread.jobs SET"
        " state = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'failed' END,"
        " error = $3, finished_at = now(), lease_owner = NULL, lease_expires_at = NULL,"
        " next_attempt_at = now() + make_interval(secs => $4 * power(2, GREATEST(attempts - 1, 0)))"
        " WHERE job_id = $1 AND lease_owner = $2 AND state = 'running' RETURNING state",
        job_id, owner, error, policy_.retry_backoff_seconds);
    if (r.empty()) return std::string("lost");
    const std::string state = r[0][0].c_str();
    if (state == "failed") txn.exec0(std::string("NOTIFY ") + kJobsChannel);
    return state;
  });
}

int JobQueue::expire_leases() {
  return pool_.transact([&](pqxx::work& txn) {
    auto r = txn.exec_params(
        "UPDATE firstread.jobs SET"
        " state = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'failed' END,"
        " error = 'lease expired: worker ' || COALESCE(lease_owner, '?') || ' stopped heartbeating',"
        " finished_at = now(), lease_owner = NULL, lease_expires_at = NULL,"
        " next_attempt_at = now() + make_interval(secs => $1 * power(2, GREATEST(attempts - 1, 0)))"
        " WHERE state = 'running' AND lease_expires_at < now() RETURNING job_id, state",
        policy_.retry_backoff_seconds);
    for (const auto& row : r)
      spdlog::warn("queue: job {} lease expired, now {}", row[0].as<int64_t>(), row[1].c_str());
    return static_cast<int>(r.size());
  });
}

struct JobNotifications::Impl : public pqxx::notification_receiver {
  Impl(pqxx::connection& c) : pqxx::notification_receiver(c, kJobsChannel) {}
  void operator()(const std::string&, int) override { received = true; }
  bool received = false;
};

JobNotifications::JobNotifications(const std::string& conninfo) : conninfo_(conninfo) { connect(); }

void JobNotifications::connect() {
  impl_.reset();
  conn_.reset();
  try {
    conn_ = std::make_unique<pqxx::connection>(conninfo_);
    impl_ = std::make_unique<Impl>(*conn_);
  } catch (const std::exception& e) {
    spdlog::warn("queue: cannot listen for job notifications: {}", e.what());
    impl_.reset();
    conn_.reset();
  }
}

JobNotifications::~JobNotifications() {
  impl_.reset();
  conn_.reset();
}

bool JobNotifications::wait(std::chrono::milliseconds timeout) {
  if (!impl_) {
    // Database unreachable: behave like a timed-out wait, try again next time.
    std::this_thread::sleep_for(timeout);
    connect();
    return false;
  }
  impl_->received = false;
  try {
    conn_->get_notifs();
    if (!impl_->received) {
      const long secs = static_cast<long>(timeout.count() / 1000);
      const long usecs = static_cast<long>((timeout.count() % 1000) * 1000);
      conn_->await_notification(secs, usecs);
    }
  } catch (const pqxx::broken_connection&) {
    // Reconnect now; callers poll the queue anyway, so nothing is missed.
    connect();
    return false;
  }
  return impl_->received;
}

}  // namespace firstread::worklist
