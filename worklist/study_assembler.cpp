#include "worklist/study_assembler.h"

#include <spdlog/spdlog.h>

#include "db/studies.h"
#include "worklist/routing.h"

namespace firstread::worklist {

int StudyAssembler::assemble_ready() {
  return pool_.transact([&](pqxx::work& txn) {
    const auto quiet = db::Studies::lock_quiet(txn, config_.worklist.stable_seconds, 100);
    for (const auto& study : quiet) {
      const int generation = study.generation + 1;
      const db::StudyContent content = db::Studies::content(txn, study.study_uid);
      StudyFacts facts;
      facts.calling_ae = study.calling_ae;
      facts.modalities = content.modalities;
      facts.body_parts = content.body_parts;
      const auto routes = matching_routes(config_.routes, facts);
      for (const config::Route* r : routes)
        queue_.enqueue(txn, study.study_uid, generation, r->name, r->model, config_.worklist.max_attempts);
      db::Studies::mark_assembled(txn, study.study_uid, generation, static_cast<int>(routes.size()));
      if (routes.empty())
        spdlog::warn("worklist: study {} is complete but no route matches it (modalities: {})", study.study_uid,
                     facts.modalities.empty() ? std::string("none") : *facts.modalities.begin());
      else
        spdlog::info("worklist: study {} complete, {} job(s) queued{}", study.study_uid, routes.size(),
                     generation > 1 ? " (re-run after late instances)" : "");
    }
    return static_cast<int>(quiet.size());
  });
}

bool request_rerun(db::ConnectionPool& pool, const std::string& study_uid) {
  return db::Studies(pool).request_rerun(study_uid);
}

}  // namespace firstread::worklist
