// The HTTP API and the results page on Boost.Beast / Boost.Asio. The routes
// (method, pattern, role, summary, handler) are one table in
// app/http/routes.cpp, served as GET /api/v1/openapi.json and listed in the
// README; one file per resource under app/http/.
//
// Authentication (app/http/auth.h): when http.users (or http.tokens_file) or
// the shared http.token is set, every route but those of role anyone needs
// `Authorization: Bearer <token>` (401 otherwise, also for unknown routes),
// and the token's role must reach the route's (403 otherwise): viewer reads,
// operator reads and changes, sender stores (STOW-RS), admin does everything.
// Routes of role anyone (/healthz, the page shell, the OpenAPI document) carry
// no patient data. Requests that return patient data are audit lines in
// http.audit_log. With http.tls, the same over HTTPS only.
//
// Errors are JSON `{"error": "..."}`: 400 bad parameter, 401 missing or wrong
// token, 404 unknown route or resource, 405 known route with the wrong method
// (with an Allow header), 422 an instance whose pixels cannot be decoded, 500
// an internal error (logged), 503 /readyz not ready or the database
// unreachable. Timestamps are ISO 8601 in UTC; UIDs are digits and dots, <= 64.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "config/config.h"
#include "db/database.h"
#include "storage/file_storage.h"

namespace firstread::ingest {
class InstanceIngest;
}

namespace firstread::app {

struct HttpApiOptions {
  std::string listen = "127.0.0.1:8080";  // host:port; port 0 picks a free port (tests)
  std::string token;                      // the shared token (user "token", admin); with users empty: no authentication
  std::vector<config::HttpUser> users;    // http.users and the tokens file's
  std::string tls_certificate, tls_private_key;  // HTTPS when set (PEM)
  std::string audit_log;                  // empty = no audit log
  int io_threads = 2;                     // socket reads and writes
  int handler_threads = 4;                // request handling (database, files, PNG)
  int read_timeout_seconds = 30;          // a request must arrive completely within this
  int max_connections = 256;              // further connections are closed at once
  std::string kernels;                    // the engine's kernel path, named by /readyz (empty: no engine here)
  std::vector<std::string> cors_origins;  // http.cors_origins: browser origins allowed (CORS); "*" = any
};

// From the configuration's http section; the audit log defaults to
// <storage_path>/audit.log.
HttpApiOptions http_api_options(const config::HttpConfig& http, const std::string& storage_path);

// POST /api/v1/reports/{id}/confirm (GSCo, issue 15): adds the report's
// images to the case library with the labels; returns the answer's JSON.
// Throws ConfirmRefused for input the caller must change (nothing written).
using ConfirmReport = std::function<nlohmann::json(int64_t report_id, const std::vector<std::string>& labels)>;
class ConfirmRefused : public std::runtime_error {
 public:
  ConfirmRefused(unsigned status, const std::string& message) : std::runtime_error(message), status_(status) {}
  unsigned status() const { return status_; }

 private:
  unsigned status_;
};

class HttpApi {
 public:
  // models_status: "" when the models are loaded, else the reason (for
  // /readyz); may be empty (no inference on this node: always ready). pool
  // and storage must outlive the HttpApi. /metrics prints the process's
  // metrics::registry() and the database's tallies.
  HttpApi(HttpApiOptions options, db::ConnectionPool& pool, const storage::FileStorage& storage,
          std::function<std::string()> models_status);
  ~HttpApi();  // stop()s
  HttpApi(const HttpApi&) = delete;
  HttpApi& operator=(const HttpApi&) = delete;

  // Binds options.listen (throws std::runtime_error naming the address if it
  // cannot) and starts serving on background threads.
  void start();
  // Stops accepting, closes every connection, joins the threads. Idempotent.
  void stop();

  int port() const { return bound_port_; }  // the bound port, after start()
  // Before start(): what POST /api/v1/reports/{id}/confirm runs (else it answers 503).
  void set_confirm_report(ConfirmReport fn);

  // Enables STOW-RS (POST /dicomweb/studies): instances go through `ingest`
  // (the C-STORE path); `admission` is the new-association check ("" = room).
  // Call before start(). Without it STOW-RS answers 503 (a worker-only node).
  void receive_instances(ingest::InstanceIngest& ingest, std::function<std::string()> admission);

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
  int bound_port_ = 0;
};

}  // namespace firstread::app
