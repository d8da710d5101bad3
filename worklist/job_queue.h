// The job queue in PostgreSQL. Any number of firstread processes may claim from
// it: a claim takes the oldest ready job with FOR UPDATE SKIP LOCKED and holds
// it under a lease that the worker heartbeats; a job whose lease expires goes
// back to the queue (or dies after max_attempts). Failures retry with
// exponential backoff. New jobs are announced with NOTIFY so idle workers
// wake at once.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include "db/database.h"

namespace firstread::worklist {

inline constexpr const char* kJobsChannel = "firstread_jobs";

struct Job {
  int64_t job_id = 0;
  std::string study_uid;
  std::string route;
  std::string model;
  int attempts = 0;  // including this one
  int max_attempts = 0;
};

struct QueuePolicy {
  int lease_seconds = 300;
  double retry_backoff_seconds = 30;  // before attempt 2; doubled for each further attempt
};

class JobQueue {
 public:
  JobQueue(db::ConnectionPool& pool, QueuePolicy policy) : pool_(pool), policy_(policy) {}

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
  std::string fail(int64_t job_id, const std::string& owner, const std::string& error);
  // Running jobs whose lease has expired (their worker died) return to the
  // queue, or die if they have used all attempts. Returns how many.
  int expire_leases();

 private:
  db::ConnectionPool& pool_;
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
