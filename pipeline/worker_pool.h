// Inference workers: worklist.workers threads that claim jobs, heartbeat the
// lease while a job runs, and complete or fail it.
#pragma once

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "pipeline/study_processor.h"
#include "worklist/job_queue.h"

namespace firstread::pipeline {

class WorkerPool {
 public:
  WorkerPool(int workers, int lease_seconds, worklist::JobQueue& queue, StudyProcessor& processor,
             std::string conninfo);
  ~WorkerPool();
  void start();
  // Lets each worker finish the job in hand, then joins them.
  void stop();

 private:
  void run(int index);
  int workers_;
  int lease_seconds_;
  worklist::JobQueue& queue_;
  StudyProcessor& processor_;
  std::string conninfo_;
  std::atomic<bool> stopping_{false};
  std::vector<std::thread> threads_;
};

// Unique per worker across nodes: host:pid:index.
std::string worker_identity(int index);

}  // namespace firstread::pipeline
