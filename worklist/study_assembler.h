// Study assembly: a study counts as complete once no new instance has arrived
// for worklist.stable_seconds; it then becomes one queued job per matching
// route. The timer lives in the database (last_received_at against the
// database clock), so any node can assemble any study and a restart loses
// nothing.
#pragma once

#include "config/config.h"
#include "db/database.h"
#include "worklist/job_queue.h"

namespace firstread::worklist {

class StudyAssembler {
 public:
  StudyAssembler(db::ConnectionPool& pool, JobQueue& queue, const config::Config& config)
      : pool_(pool), queue_(queue), config_(config) {}

  // One pass over the quiet studies. Returns how many were assembled.
  int assemble_ready();

 private:
  db::ConnectionPool& pool_;
  JobQueue& queue_;
  const config::Config& config_;
};

// Asks for a new run of a study (a user's reprocess): it is assembled again at
// the next pass, with new jobs for its matching routes; the new reports will
// supersede the current ones. Returns false if the study is unknown.
bool request_rerun(db::ConnectionPool& pool, const std::string& study_uid);

}  // namespace firstread::worklist
