// `firstread serve`: the long-running service.
#include <signal.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <functional>
#include <map>
#include <set>
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
// At start-up (GSCo, issue 15): load every specialist a route names and build
// the case index of each one that retrieval searches; a failure is reported
// through `fail` (shown by /readyz) and its jobs fail with the same reason.
void load_gsco(const config::Config& cfg, pipeline::Specialists& specialists, retrieval::CaseLibrary& library,
               const std::function<void(const std::string&, const std::string&)>& fail) {
  std::set<std::string> named, searched;
  for (const auto& r : cfg.routes) {
    named.insert(r.specialists.begin(), r.specialists.end());
    if (!r.specialists.empty() && (r.gsco == config::GscoMode::rad || r.gsco == config::GscoMode::both))
      searched.insert(r.specialists.front());
  }
  for (const auto& name : named) {
    try {
      specialists.identity(name);
    } catch (const std::exception& e) {
      spdlog::error("specialists: {}", e.what());
      fail("specialist " + name, e.what());
    }
  }
  for (const auto& name : searched) {
    try {
      const size_t n = library.sync(name);
      spdlog::info("case library: {} cases of specialist {} indexed", n, name);
    } catch (const std::exception& e) {
      spdlog::error("case library: {}", e.what());
      fail("case library " + name, e.what());
    }
  }
}

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

  ingest::InstanceIngest sink(storage, index);
  const uint64_t min_free = cfg.storage.min_free_bytes;
  auto admission = [&storage, min_free]() -> std::string {
    const uint64_t free = storage.free_bytes();
    if (free < min_free)
      return "storage " + storage.root() + " has " + human_bytes(free) + " free, below storage.min_free_bytes (" +
             human_bytes(min_free) + ")";
    return "";
  };
  std::unique_ptr<scp::DicomServer> server;
  if (role != "worker") {
    server = std::make_unique<scp::DicomServer>(server_options(cfg), sink, admission);
    server->start();
  }

  // Reconciliation runs beside the service, so that a large archive does not
  // delay the first association; it leaves what is younger than the grace
  // period (this node's and other nodes' transfers in flight) alone.
  std::atomic<bool> reconcile_stop{false};
  std::thread reconciler([&] {
    try {
      ingest::reconcile(storage, index, *rt.pool, {cfg.storage.reconcile_grace_seconds, &reconcile_stop});
    } catch (const std::exception& e) {
      spdlog::error("reconcile: {}", e.what());
    }
  });
  struct StopReconciler {
    std::atomic<bool>& stop;
    std::thread& t;
    ~StopReconciler() {
      stop = true;
      if (t.joinable()) t.join();
    }
  } stop_reconciler{reconcile_stop, reconciler};

  const std::string conninfo = rt.pool->conninfo();
  // Models load on first use; say now if one cannot, rather than at the first study.
  for (const auto& [name, model] : cfg.models) {
    if (model.backend == "local" && !std::filesystem::is_directory(model.path))
      spdlog::warn("models: '{}' directory {} does not exist: jobs routed to it will fail", name, model.path);
  }
#ifdef FIRSTREAD_HAVE_PIPELINE
  pipeline::ModelRegistry models(cfg.models);
  pipeline::InferenceBackends backends(cfg.models, models);
  // GSCo (issue 15): specialists load on first use; each node's case index is
  // rebuilt from firstread.cases and follows it by case_id.
  pipeline::Specialists specialists(cfg.specialists);
  retrieval::CaseLibrary case_library(*rt.pool, {cfg.case_library.flat_max, cfg.case_library.hnsw_m,
                                                 cfg.case_library.hnsw_ef_search, cfg.case_library.hnsw_ef_construction});
  pipeline::StudyProcessor processor(cfg, *rt.pool, storage, backends, &specialists, &case_library);
  pipeline::WorkerPool workers(role == "ingest" ? 0 : cfg.worklist.workers, cfg.worklist.lease_seconds, queue,
                               processor, conninfo);
  workers.start();
#else
  if (role != "ingest" && cfg.worklist.workers > 0)
    spdlog::warn("this build has no inference pipeline: jobs stay queued");
#endif
  reports::ExportOutbox outbox(*rt.pool, storage, cfg.exports, conninfo);
  outbox.start();

  // Models are loaded in the background at start-up, so that the first study
  // does not wait for them and /readyz tells when they are there.
  std::mutex model_status_mu;
  std::map<std::string, std::string> model_errors;
  std::set<std::string> routed_models, remote_models;  // local ones load here; remote ones are polled
  for (const auto& r : cfg.routes) {
    if (cfg.models.at(r.model).backend == "local") routed_models.insert(r.model);
    else remote_models.insert(r.model);
  }
  std::function<std::string()> models_status;
  std::thread model_loader;
  // A start-up failure below (say the HTTP port is taken) unwinds through
  // here: wait for the loader rather than let a joinable thread terminate.
  struct JoinOnExit {
    std::thread& t;
    ~JoinOnExit() {
      if (t.joinable()) t.join();
    }
  } join_model_loader{model_loader};
#ifdef FIRSTREAD_HAVE_PIPELINE
  if (role != "ingest" && cfg.worklist.workers > 0) {
    model_loader = std::thread([&] {
      for (const auto& name : routed_models) {
        try {
          models.get(name);
        } catch (const std::exception& e) {
          spdlog::error("models: {}", e.what());
          std::lock_guard<std::mutex> lock(model_status_mu);
          model_errors[name] = e.what();
        }
      }
      load_gsco(cfg, specialists, case_library, [&](const std::string& what, const std::string& error) {
        std::lock_guard<std::mutex> lock(model_status_mu);
        model_errors[what] = error;
        routed_models.insert(what);
      });
    });
    models_status = [&]() -> std::string {
      {
        std::lock_guard<std::mutex> lock(model_status_mu);
        for (const auto& name : routed_models) {
          if (model_errors.count(name)) return model_errors[name];
          if (cfg.models.count(name) && !models.loaded(name)) return "model '" + name + "' is loading";
        }
      }
      // Remote models: the server answers GET /v1/models and lists the model.
      return backends.readiness(std::vector<std::string>(remote_models.begin(), remote_models.end()));
    };
  }
#endif
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
    return confirm_as_json(report_id, labels, cfg, *rt.pool, storage, specialists);
  });
#endif
  http.start();

  // Study assembly and lease expiry: a poll against the database clock, so any
  // node may do it and nothing depends on this process's memory.
  db::Tallies tallies(*rt.pool);  // /metrics' counts, folded here so that a scrape has little to fold
  std::atomic<bool> stopping{false};
  std::mutex stop_mu;
  std::condition_variable stop_cv;
  std::thread housekeeping([&] {
    while (!stopping) {
      try {
        assembler.assemble_ready();
        queue.expire_leases();
        tallies.compact();
      } catch (const std::exception& e) {
        spdlog::error("worklist: {}", e.what());
      }
      std::unique_lock<std::mutex> lock(stop_mu);
      stop_cv.wait_for(lock, std::chrono::duration<double>(cfg.worklist.poll_seconds), [&] { return stopping.load(); });
    }
  });

  std::cout << "firstread " << kVersion << " serving (role " << role << ")\n";
  if (server && (!cfg.dicom.tls.enabled || cfg.dicom.tls.keep_plain_port))
    std::cout << "  DICOM: AE title " << cfg.dicom.ae_title << " on port " << cfg.dicom.port
              << "  (try: echoscu -aec " << cfg.dicom.ae_title << " localhost " << cfg.dicom.port
              << "; storescu -aec " << cfg.dicom.ae_title << " localhost " << cfg.dicom.port << " FILE.dcm)\n";
  if (server && cfg.dicom.tls.enabled)
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

  int sig = 0;
  sigwait(&signals, &sig);
  spdlog::info("received {}, shutting down", sig == SIGTERM ? "SIGTERM" : "SIGINT");
  http.stop();
  if (server) server->stop();  // stop accepting; associations finish the instance in flight
  reconcile_stop = true;
  if (reconciler.joinable()) reconciler.join();
  {
    std::lock_guard<std::mutex> lock(stop_mu);
    stopping = true;
  }
  stop_cv.notify_all();
  housekeeping.join();
#ifdef FIRSTREAD_HAVE_PIPELINE
  workers.stop();  // each worker finishes the job in hand
#endif
  outbox.stop();
  if (model_loader.joinable()) model_loader.join();
  rt.pool.reset();
  if (rt.embedded) rt.embedded->stop();
  spdlog::info("stopped");
  return 0;
}

}  // namespace firstread::app
