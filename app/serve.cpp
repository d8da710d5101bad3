// `firstread serve`: the long-running service.
#include <signal.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <functional>
#include <filesystem>
#include <chrono>
#include <condition_variable>
#include <iostream>
#include <thread>
#include <vector>

#include "app/commands.h"
#include "app/runtime.h"
#include "db/instance_index.h"
#include "ingest/instance_ingest.h"
#include "db/tallies.h"
#include "scp/dicom_server.h"
#include "scp/server_metrics.h"
#include "storage/file_storage.h"
#include "worklist/job_queue.h"
#include "worklist/study_assembler.h"
#include "app/http_api.h"
#include "reports/export_outbox.h"
#ifdef FIRSTREAD_HAVE_PIPELINE
#include "engine/kernels.h"
#include "pipeline/case_library.h"
#include "pipeline/model_registry.h"
#include "pipeline/startup_load.h"
#include "pipeline/study_processor.h"
#include "pipeline/worker_pool.h"
#endif

namespace firstread::app {
namespace {

using json = nlohmann::json;

scp::ServerOptions server_options(const config::Config& c) {
  scp::ServerOptions o;
  o.ae_title = c.dicom.ae_title;
  o.port = c.dicom.port;
  for (const auto& p : c.dicom.allowed_peers) o.allowed_peers.push_back({p.ae_title, p.host, p.certificate_subject});
  o.max_associations = c.dicom.max_associations;
  o.max_pending_associations = c.dicom.max_pending_associations;
  o.max_associations_per_host = c.dicom.max_associations_per_host;
  o.max_pdu = c.dicom.max_pdu;
  o.acse_timeout_seconds = c.dicom.acse_timeout_seconds;
  o.dimse_timeout_seconds = c.dicom.dimse_timeout_seconds;
  if (c.dicom.tls.enabled) {
    o.tls_port = c.dicom.tls.port;
    o.plain_port_enabled = c.dicom.tls.keep_plain_port;
    o.tls.certificate = c.dicom.tls.certificate;
    o.tls.private_key = c.dicom.tls.private_key;
    o.tls.ca_certificates = c.dicom.tls.ca_certificates;
    o.tls.require_peer_certificate = c.dicom.tls.require_peer_certificate;
    o.tls.profile = c.dicom.tls.profile == "bcp195-extended" ? scp::TlsProfile::bcp195_extended : scp::TlsProfile::bcp195;
  }
  return o;
}

std::string human_bytes(uint64_t b) {
  char buf[64];
  snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(b) / (1024.0 * 1024.0));
  return buf;
}

#ifdef FIRSTREAD_HAVE_PIPELINE
json confirm_as_json(int64_t report_id, const std::vector<std::string>& labels, const config::Config& cfg,
                     db::ConnectionPool& pool, const storage::FileStorage& storage, pipeline::Specialists& specialists) {
  try {
    return pipeline::confirm_json(pipeline::confirm_report(report_id, labels, cfg, pool, storage, specialists));
  } catch (const pipeline::CaseLibraryError& e) {
    using Kind = pipeline::CaseLibraryError::Kind;
    throw ConfirmRefused(e.kind() == Kind::unknown_report ? 404 : e.kind() == Kind::not_applicable ? 409 : 400, e.what());
  }
}
#endif


// Associations are refused while the storage volume has less than
// storage.min_free_bytes free.
std::function<std::string()> storage_admission(const storage::FileStorage& storage, uint64_t min_free) {
  return [&storage, min_free]() -> std::string {
    const uint64_t free = storage.free_bytes();
    if (free < min_free)
      return "storage " + storage.root() + " has " + human_bytes(free) + " free, below storage.min_free_bytes (" +
             human_bytes(min_free) + ")";
    return "";
  };
}

// Reconciliation runs beside the service, so that a large archive does not
// delay the first association; it leaves what is younger than the grace
// period (this node's and other nodes' transfers in flight) alone.
class BackgroundReconcile {
 public:
  BackgroundReconcile(storage::FileStorage& storage, db::InstanceIndex& index, db::ConnectionPool& pool,
                      double grace_seconds)
      : thread_([this, &storage, &index, &pool, grace_seconds] {
          try {
            ingest::reconcile(storage, index, pool, {grace_seconds, &stop_});
          } catch (const std::exception& e) {
            spdlog::error("reconcile: {}", e.what());
          }
        }) {}
  ~BackgroundReconcile() { stop(); }
  void stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }

 private:
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// Study assembly, lease expiry and the tallies' compaction: a poll against the
// database clock, so any node may do it and nothing depends on this process's
// memory.
class Housekeeping {
 public:
  Housekeeping(worklist::StudyAssembler& assembler, worklist::JobQueue& queue, db::Tallies& tallies,
               double poll_seconds)
      : thread_([this, &assembler, &queue, &tallies, poll_seconds] {
          while (!stopping_) {
            try {
              assembler.assemble_ready();
              queue.expire_leases();
              tallies.compact();
            } catch (const std::exception& e) {
              spdlog::error("worklist: {}", e.what());
            }
            std::unique_lock<std::mutex> lock(mu_);
            cv_.wait_for(lock, std::chrono::duration<double>(poll_seconds), [&] { return stopping_.load(); });
          }
        }) {}
  ~Housekeeping() { stop(); }
  void stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

 private:
  std::atomic<bool> stopping_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  std::thread thread_;
};

#ifdef FIRSTREAD_HAVE_PIPELINE
// The inference side of a node: models (loaded in the background at start-up,
// /readyz tells when they are there), backends, GSCo's specialists and case
// index (rebuilt from firstread.cases, following it by case_id), and the
// workers (none for --role ingest).
struct InferenceSide {
  pipeline::ModelRegistry models;
  pipeline::InferenceBackends backends;
  pipeline::Specialists specialists;
  retrieval::CaseLibrary case_library;
  pipeline::StudyProcessor processor;
  pipeline::WorkerPool workers;
  pipeline::StartupLoad startup;

  InferenceSide(const config::Config& cfg, db::ConnectionPool& pool, storage::FileStorage& storage,
                worklist::JobQueue& queue, int workers_count)
      : models(cfg.models),
        backends(cfg.models, models),
        specialists(cfg.specialists),
        case_library(pool, {cfg.case_library.flat_max, cfg.case_library.hnsw_m, cfg.case_library.hnsw_ef_search,
                            cfg.case_library.hnsw_ef_construction}),
        processor(cfg, pool, storage, backends, &specialists, &case_library),
        workers(workers_count, cfg.worklist.lease_seconds, queue, processor, pool.conninfo()),
        startup(cfg, models, backends, specialists, case_library) {}
};
#endif

// What the node serves and how to try it, on standard output.
void print_banner(const config::Config& cfg, const std::string& role, bool dicom, const storage::FileStorage& storage,
                  const Runtime& rt, const Args& args) {
  std::cout << "firstread " << kVersion << " serving (role " << role << ")\n";
  if (dicom && (!cfg.dicom.tls.enabled || cfg.dicom.tls.keep_plain_port))
    std::cout << "  DICOM: AE title " << cfg.dicom.ae_title << " on port " << cfg.dicom.port
              << "  (try: echoscu -aec " << cfg.dicom.ae_title << " localhost " << cfg.dicom.port
              << "; storescu -aec " << cfg.dicom.ae_title << " localhost " << cfg.dicom.port << " FILE.dcm)\n";
  if (dicom && cfg.dicom.tls.enabled)
    std::cout << "  DICOM TLS: AE title " << cfg.dicom.ae_title << " on port " << cfg.dicom.tls.port
              << "  (try: echoscu +tls CLIENT.key CLIENT.pem +cf CA.pem -aec " << cfg.dicom.ae_title << " localhost "
              << cfg.dicom.tls.port << ")\n";
  const bool https = !cfg.http.tls_certificate.empty();
  std::cout << "  HTTP: " << (https ? "https://" : "http://") << cfg.http.listen
            << "/  (API under /api/v1, metrics at /metrics)\n";
  std::cout << "  storage: " << storage.root() << "\n";
  std::cout << "  database: " << (rt.embedded ? "embedded cluster in " + rt.embedded->data_dir() : "database.url")
            << "\n";
  std::cout << "  studies: firstread studies" << (args.value("--config") ? " --config " + *args.value("--config") : "")
            << "\n"
            << std::flush;
}

}  // namespace

int run_serve(const Args& args) {
  const std::string role = args.value("--role").value_or("all");
  if (role != "all" && role != "ingest" && role != "worker")
    throw std::invalid_argument("--role must be all, ingest or worker, got '" + role + "'");

  // Signals are taken by sigwait in this thread only; every thread started
  // below inherits the blocked mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  Runtime rt = Runtime::open(args.value("--config"), false);
  const config::Config& cfg = rt.config;
  storage::FileStorage storage(cfg.storage.path, cfg.storage.fsync);
  db::InstanceIndex index(*rt.pool);
  worklist::JobQueue queue(*rt.pool, {cfg.worklist.lease_seconds, cfg.worklist.retry_backoff_seconds});
  worklist::StudyAssembler assembler(*rt.pool, queue, cfg);

  // The DICOM node (not for --role worker), then reconciliation beside it.
  ingest::InstanceIngest sink(storage, index);
  const std::function<std::string()> admission = storage_admission(storage, cfg.storage.min_free_bytes);
  std::unique_ptr<scp::DicomServer> server;
  if (role != "worker") {
    server = std::make_unique<scp::DicomServer>(server_options(cfg), sink, admission);
    server->start();
  }
  BackgroundReconcile reconcile(storage, index, *rt.pool, cfg.storage.reconcile_grace_seconds);

  // Models load on first use; say now if one cannot, rather than at the first study.
  for (const auto& [name, model] : cfg.models) {
    if (model.backend == "local" && !std::filesystem::is_directory(model.path))
      spdlog::warn("models: '{}' directory {} does not exist: jobs routed to it will fail", name, model.path);
  }
  std::function<std::string()> models_status;  // empty: nothing to wait for (/readyz)
#ifdef FIRSTREAD_HAVE_PIPELINE
  InferenceSide inference(cfg, *rt.pool, storage, queue, role == "ingest" ? 0 : cfg.worklist.workers);
  inference.workers.start();
  if (role != "ingest" && cfg.worklist.workers > 0) {
    inference.startup.start();
    models_status = [&inference] { return inference.startup.status(); };
  }
#else
  if (role != "ingest" && cfg.worklist.workers > 0)
    spdlog::warn("this build has no inference pipeline: jobs stay queued");
#endif
  reports::ExportOutbox outbox(*rt.pool, storage, cfg.exports, rt.pool->conninfo());
  outbox.start();

  std::unique_ptr<scp::ServerMetrics> server_metrics;
  if (server) server_metrics = std::make_unique<scp::ServerMetrics>(*server);
  app::HttpApiOptions http_options = app::http_api_options(cfg.http, cfg.storage.path);
#ifdef FIRSTREAD_HAVE_PIPELINE
  http_options.kernels = engine::kernel_path_description();
  spdlog::info("engine: kernels {}", http_options.kernels);
#endif
  app::HttpApi http(http_options, *rt.pool, storage, models_status);
#ifdef FIRSTREAD_HAVE_PIPELINE
  http.set_confirm_report([&](int64_t report_id, const std::vector<std::string>& labels) {
    return confirm_as_json(report_id, labels, cfg, *rt.pool, storage, inference.specialists);
  });
#endif
  if (role != "worker") http.receive_instances(sink, admission);  // STOW-RS: the C-STORE path
  http.start();

  db::Tallies tallies(*rt.pool);  // /metrics' counts, folded here so that a scrape has little to fold
  Housekeeping housekeeping(assembler, queue, tallies, cfg.worklist.poll_seconds);
  print_banner(cfg, role, server != nullptr, storage, rt, args);

  int sig = 0;
  sigwait(&signals, &sig);
  spdlog::info("received {}, shutting down", sig == SIGTERM ? "SIGTERM" : "SIGINT");
  http.stop();
  if (server) server->stop();  // stop accepting; associations finish the instance in flight
  sink.stop();                  // the last rows committed and flushed while the database is there
  reconcile.stop();
  housekeeping.stop();
#ifdef FIRSTREAD_HAVE_PIPELINE
  inference.workers.stop();  // each worker finishes the job in hand
#endif
  outbox.stop();
#ifdef FIRSTREAD_HAVE_PIPELINE
  inference.startup.wait();
#endif
  rt.pool.reset();
  if (rt.embedded) rt.embedded->stop();
  spdlog::info("stopped");
  return 0;
}

}  // namespace firstread::app
