#include "worklist/study_assembler.h"

#include <spdlog/spdlog.h>

#include "worklist/routing.h"

namespace firstread::worklist {

int StudyAssembler::assemble_ready() {
  return pool_.transact([&](pqxx::work& txn) {
    auto quiet = txn.exec_params(
        "SELECT study_uid, COALESCE(calling_ae, ''), generation FROM firstread.studies"
        " WHERE assembly_pending AND last_received_at <= now() - make_interval(secs => $1)"
        " ORDER BY last_received_at LIMIT 100 FOR UPDATE SKIP LOCKED",
        config_.worklist.stable_seconds);
    for (const auto& row : quiet) {
      const std::string study_uid = row[0].c_str();
      const int generation = row[2].as<int>() + 1;
      StudyFacts facts;
      facts.calling_ae = row[1].c_str();
      for (const auto& i : txn.exec_params(
               "SELECT DISTINCT COALESCE(modality, ''), COALESCE(body_part, '') FROM firstread.instances"
               " WHERE study_uid = $1",
               study_uid)) {
        if (!i[0].is_null() && std::string(i[0].c_str()).size()) facts.modalities.insert(i[0].c_str());
        if (!i[1].is_null() && std::string(i[1].c_str()).size()) facts.body_parts.insert(i[1].c_str());
      }
      const auto routes = matching_routes(config_.routes, facts);
      for (const config::Route* r : routes)
        queue_.enqueue(txn, study_uid, generation, r->name, r->model, config_.worklist.max_attempts);
      txn.exec_params0(
          "UPDATE firstread.studies SET assembly_pending = false, generation = $2, routed_jobs = $3"
          " WHERE study_uid = $1",
          study_uid, generation, static_cast<int>(routes.size()));
      if (routes.empty())
        spdlog::warn("worklist: study {} is complete but no route matches it (modalities: {})", study_uid,
                     facts.modalities.empty() ? std::string("none") : *facts.modalities.begin());
      else
        spdlog::info("worklist: study {} complete, {} job(s) queued{}", study_uid, routes.size(),
                     generation > 1 ? " (re-run after late instances)" : "");
    }
    return static_cast<int>(quiet.size());
  });
}

bool request_rerun(db::ConnectionPool& pool, const std::string& study_uid) {
  return pool.transact([&](pqxx::work& txn) {
    // last_received_at is left alone: the study is already quiet, so the next
    // assembly pass takes it, and latency keeps meaning "since the last instance".
    auto r = txn.exec_params("UPDATE firstread.studies SET assembly_pending = true WHERE study_uid = $1", study_uid);
    return r.affected_rows() == 1;
  });
}

}  // namespace firstread::worklist
