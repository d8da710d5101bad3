// The job queue: the queue's policy (lease, backoff) over db::Jobs, which owns
// firstread.jobs (claim with FOR UPDATE SKIP LOCKED under a heartbeated lease,
// retry with exponential backoff, dead after max_attempts), and the NOTIFY
// listener that wakes idle workers.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include "db/database.h"
#include "db/jobs.h"

namespace firstread::worklist {

using db::Job;

struct QueuePolicy {
  int lease_seconds = 300;
  double retry_backoff_seconds = 30;  // before attempt 2; doubled for each further attempt
};

class JobQueue {
 public:
  JobQueue(db::ConnectionPool& pool, QueuePolicy policy) : jobs_(pool), policy_(policy) {}

  // Inserts a queued job and notifies waiting workers. Returns its id.
  int64_t enqueue(pqxx::work& txn, const std::string& study_uid, int generation, const std::string& route,
                  const std::string& model, int max_attempts);

  // Takes the oldest ready job for `owner` (unique per worker), or nothing.
  std::optional<Job> claim(const std::string& owner);
  // Extends the lease. False if the job is no longer ours (lease lost).
  bool heartbeat(int64_t job_id, const std::string& owner);
  // Marks the job done. False if it was no longer ours.
  bool complete(int64_t job_id, const std::string& owner);
  // Records a failed attempt: back to the queue after the backoff, or dead
  // after max_attempts. Returns the new state ("failed" or "dead").
  // min_delay_seconds: wait at least this long before the next attempt (a
  // server's Retry-After), even when the backoff is shorter.
  std::string fail(int64_t job_id, const std::string& owner, const std::string& error, double min_delay_seconds = 0);
  // Running jobs whose lease has expired (their worker died) return to the
  // queue, or die if they have used all attempts. Returns how many.
  int expire_leases();

 private:
  db::Jobs jobs_;
  QueuePolicy policy_;
};

// Waits for NOTIFY on the jobs channel, on its own connection.
class JobNotifications {
 public:
  explicit JobNotifications(const std::string& conninfo);
  ~JobNotifications();
  // Returns true if a notification arrived within the timeout.
  bool wait(std::chrono::milliseconds timeout);

 private:
  void connect();
  struct Impl;
  std::string conninfo_;
  std::unique_ptr<pqxx::connection> conn_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace firstread::worklist
