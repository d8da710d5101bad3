#include "pipeline/worker_pool.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <mutex>

namespace firstread::pipeline {

std::string worker_identity(int index) {
  char host[256] = {0};
  gethostname(host, sizeof host - 1);
  return std::string(host) + ":" + std::to_string(getpid()) + ":" + std::to_string(index);
}

WorkerPool::WorkerPool(int workers, int lease_seconds, worklist::JobQueue& queue, StudyProcessor& processor,
                       std::string conninfo)
    : workers_(workers), lease_seconds_(lease_seconds), queue_(queue), processor_(processor),
      conninfo_(std::move(conninfo)) {}

WorkerPool::~WorkerPool() { stop(); }

void WorkerPool::start() {
  stopping_ = false;
  for (int i = 0; i < workers_; ++i) threads_.emplace_back([this, i] { run(i); });
  if (workers_ > 0) spdlog::info("pipeline: {} inference worker(s) started", workers_);
}

void WorkerPool::stop() {
  stopping_ = true;
  for (auto& t : threads_)
    if (t.joinable()) t.join();
  threads_.clear();
}

void WorkerPool::run(int index) {
  const std::string owner = worker_identity(index);
  worklist::JobNotifications notifications(conninfo_);
  while (!stopping_) {
    std::optional<worklist::Job> job;
    try {
      job = queue_.claim(owner);
    } catch (const std::exception& e) {
      spdlog::error("pipeline: worker {}: cannot claim: {}", owner, e.what());
    }
    if (!job) {
      notifications.wait(std::chrono::milliseconds(1000));
      continue;
    }
    spdlog::info("pipeline: worker {} took job {} (study {}, route {}, attempt {}/{})", owner, job->job_id,
                 job->study_uid, job->route, job->attempts, job->max_attempts);
    // Heartbeat at a third of the lease so that a slow model keeps its job.
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    std::thread heartbeat([&] {
      std::unique_lock<std::mutex> lock(mu);
      while (!cv.wait_for(lock, std::chrono::seconds(std::max(1, lease_seconds_ / 3)), [&] { return done; })) {
        try {
          if (!queue_.heartbeat(job->job_id, owner))
            spdlog::warn("pipeline: worker {} lost the lease of job {}", owner, job->job_id);
        } catch (const std::exception& e) {
          spdlog::warn("pipeline: heartbeat of job {} failed: {}", job->job_id, e.what());
        }
      }
    });
    try {
      processor_.process(*job, owner);
    } catch (const std::exception& e) {
      // A server that said when to come back (429 / 503 Retry-After) is not asked sooner.
      const auto* inference = dynamic_cast<const InferenceError*>(&e);
      const double retry_after = inference ? inference->retry_after_seconds() : 0;
      try {
        const std::string state = queue_.fail(job->job_id, owner, e.what(), retry_after);
        spdlog::error("pipeline: job {} study={} failed (attempt {}/{}, now {}): {}", job->job_id, job->study_uid,
                      job->attempts, job->max_attempts, state, e.what());
      } catch (const std::exception& e2) {
        spdlog::error("pipeline: job {} failed ({}) and recording the failure failed too: {}", job->job_id,
                      e.what(), e2.what());
      }
    }
    {
      std::lock_guard<std::mutex> lock(mu);
      done = true;
    }
    cv.notify_all();
    heartbeat.join();
  }
}

}  // namespace firstread::pipeline
