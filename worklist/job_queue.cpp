#include "worklist/job_queue.h"

#include <spdlog/spdlog.h>

#include <thread>

namespace firstread::worklist {

int64_t JobQueue::enqueue(pqxx::work& txn, const std::string& study_uid, int generation, const std::string& route,
                          const std::string& model, int max_attempts) {
  return db::Jobs::enqueue(txn, study_uid, generation, route, model, max_attempts);
}

std::optional<Job> JobQueue::claim(const std::string& owner) { return jobs_.claim(owner, policy_.lease_seconds); }

bool JobQueue::heartbeat(int64_t job_id, const std::string& owner) {
  return jobs_.heartbeat(job_id, owner, policy_.lease_seconds);
}

bool JobQueue::complete(int64_t job_id, const std::string& owner) { return jobs_.complete(job_id, owner); }

std::string JobQueue::fail(int64_t job_id, const std::string& owner, const std::string& error,
                           double min_delay_seconds) {
  return jobs_.fail(job_id, owner, error, policy_.retry_backoff_seconds, min_delay_seconds);
}

int JobQueue::expire_leases() {
  const auto expired = jobs_.expire_leases(policy_.retry_backoff_seconds);
  for (const auto& e : expired) spdlog::warn("queue: job {} lease expired, now {}", e.job_id, e.state);
  return static_cast<int>(expired.size());
}

struct JobNotifications::Impl : public pqxx::notification_receiver {
  Impl(pqxx::connection& c) : pqxx::notification_receiver(c, db::kJobsChannel) {}
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
