// firstread.jobs: the job queue's table. Any number of firstread processes may
// claim from it: a claim takes the oldest ready job with FOR UPDATE SKIP LOCKED
// and holds it under a lease that the worker heartbeats; a job whose lease
// expires goes back to the queue (or dies after max_attempts). Failures retry
// with exponential backoff. A job that becomes ready is announced on
// kJobsChannel so that idle workers wake at once.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "db/database.h"

namespace firstread::db {

// NOTIFY channel of firstread.jobs: a job became ready (enqueued, or failed and due later).
inline constexpr const char* kJobsChannel = "firstread_jobs";

struct Job {
  int64_t job_id = 0;
  std::string study_uid;
  std::string route;
  std::string model;
  int attempts = 0;  // including this one
  int max_attempts = 0;
};

struct ExpiredLease {
  int64_t job_id = 0;
  std::string state;  // failed (will retry) or dead
};

struct JobQuery {
  std::string state;      // empty: any
  std::string study_uid;  // empty: any
  int limit = 100;
  int64_t before_job_id = 0;  // keyset: only jobs with a smaller id (0: from the newest)
};

class Jobs {
 public:
  explicit Jobs(ConnectionPool& pool) : pool_(pool) {}

  // Inserts a queued job in the caller's transaction and notifies workers
  // (delivered at commit). Returns its id.
  static int64_t enqueue(pqxx::work& txn, const std::string& study_uid, int generation, const std::string& route,
                         const std::string& model, int max_attempts);

  // Takes the oldest ready job for `owner` (unique per worker), or nothing.
  std::optional<Job> claim(const std::string& owner, int lease_seconds);
  // Extends the lease. False if the job is no longer ours (lease lost).
  bool heartbeat(int64_t job_id, const std::string& owner, int lease_seconds);
  // Locks the job if `owner` still holds it (before committing its result).
  static bool lock_if_ours(pqxx::work& txn, int64_t job_id, const std::string& owner);
  // Marks the job done in the caller's transaction; returns its run time in
  // seconds (started -> finished), or nothing if it was no longer ours.
  static std::optional<double> complete(pqxx::work& txn, int64_t job_id, const std::string& owner);
  // The same in its own transaction. False if it was no longer ours.
  bool complete(int64_t job_id, const std::string& owner);
  // Records a failed attempt: back to the queue after backoff * 2^(attempts-1)
  // seconds, or dead after max_attempts. Returns "failed", "dead" or "lost".
  // min_delay_seconds: wait at least this long (a server's Retry-After).
  std::string fail(int64_t job_id, const std::string& owner, const std::string& error, double backoff_seconds,
                   double min_delay_seconds = 0);
  // Running jobs whose lease has expired (their worker died) return to the
  // queue, or die if they have used all attempts.
  std::vector<ExpiredLease> expire_leases(double backoff_seconds);

  // api.jobs rows, newest first, as JSON objects (HTTP and CLI alike).
  nlohmann::json list(const JobQuery& query);

 private:
  ConnectionPool& pool_;
};

}  // namespace firstread::db
