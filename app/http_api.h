// The HTTP API and the results page (issue 6), on Boost.Beast / Boost.Asio.
//
// Connections are read and written asynchronously by a few I/O threads; each
// request is then handled (database queries, file reads, PNG rendering) on a
// separate pool of handler threads. A client that sends half a request holds
// no thread, only a socket, and is dropped after the read timeout.
//
// Everything is read through the public views of schema `api`; the only write
// is POST .../reprocess (worklist::request_rerun).
//
// Authentication: when http.token is set, every route except /healthz and the
// static page shell (GET /, GET /web/*, which carry no data) needs
// `Authorization: Bearer <token>`; otherwise 401. The page asks for the token
// and sends it with its API calls.
//
// Errors are JSON `{"error": "..."}`: 400 bad parameter (malformed UID,
// limit, cursor, state, since, frame), 401 missing or wrong token, 404 unknown
// route or unknown study / report / instance, 405 known route with the wrong
// method (with an Allow header), 422 an instance whose pixels cannot be
// decoded, 500 an internal error (logged), 503 /readyz not ready or the
// database unreachable.
//
// Routes (timestamps are ISO 8601 in UTC; UIDs are digits and dots, <= 64):
//
//   GET  /healthz
//        200 {"status":"ok"} while the process runs. No authentication.
//   GET  /readyz
//        200 {"ready":true,"checks":{"database":"ok","storage":"ok","models":"ok"}}
//        or 503 with the failing checks' reasons: database answers SELECT 1,
//        a file can be written and removed under <storage.path>/tmp, and the
//        models callback reports the models loaded.
//   GET  /metrics
//        Prometheus text format 0.0.4. This process: DICOM associations
//        (accepted / refused / failed / active), echoes, instances stored and
//        failed, bytes received, HTTP requests by status code. The database
//        (all nodes): studies by state, instances and bytes stored, jobs by
//        state (queue depth), exports by state, reports by model, histograms
//        of job duration (started -> finished), report latency (last instance
//        received -> SR stored) and the per-stage model timings (decode,
//        inference, sr, db).
//   GET  /api/v1/studies?since=&modality=&state=&limit=&cursor=
//        {"studies":[<api.studies row>...],"next_cursor":"..."|null}, newest
//        first (first_received_at, then study_uid, descending). since: ISO
//        8601 date or time, studies with last_received_at >= since; modality:
//        e.g. CT; state: receiving|queued|processing|reported|failed|unrouted;
//        limit: 1..500 (50); cursor: next_cursor of the previous page (keyset
//        pagination: stable while new studies arrive).
//   GET  /api/v1/studies/{study_uid}
//        {"study":<api.studies row>,"instances":[...],"jobs":[...],"reports":[...]}
//   GET  /api/v1/studies/{study_uid}/report?route=
//        The latest report of the study (of one route if given): report_id,
//        route, model, model_version, language, text, sr_sop_instance_uid,
//        sr_url, supersedes_report_id, created_at, latency_ms, timings,
//        "findings":[{finding_id,label,text,sop_instance_uid,frame,
//        x1,y1,x2,y2 (source pixels),confidence}], "exports":[{destination,
//        state,attempts,last_error,next_attempt_at,sent_at}].
//        404 if the study is unknown or has no report yet.
//   GET  /api/v1/reports/{report_id}/sr
//        The SR file, Content-Type application/dicom.
//   GET  /api/v1/jobs?state=&study=&limit=
//        {"jobs":[<api.jobs row>...]}, newest first; state:
//        queued|running|done|failed|dead; limit 1..1000 (100).
//   POST /api/v1/studies/{study_uid}/reprocess
//        202 {"study_uid":...,"status":"rerun requested"}: the study is
//        assembled again at the next pass; its new reports supersede the old.
//   GET  /api/v1/instances/{sop_instance_uid}/png?frame=
//        The frame (0-based, default 0) as an 8-bit RGB PNG, through the same
//        pixel path the model gets (dicom::decode_dicom_frame), at the source
//        resolution, so finding boxes (source pixels) map 1:1.
//   GET  /            The results page (app/web/index.html).
//   GET  /web/{file}  The page's script and style sheet.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "config/config.h"
#include "db/database.h"
#include "scp/dicom_server.h"
#include "storage/file_storage.h"

namespace firstread::app {

struct HttpApiOptions {
  std::string listen = "127.0.0.1:8080";  // host:port; port 0 picks a free port (tests)
  std::string token;                      // empty = no authentication
  int io_threads = 2;                     // socket reads and writes
  int handler_threads = 4;                // request handling (database, files, PNG)
  int read_timeout_seconds = 30;          // a request must arrive completely within this
  int max_connections = 256;              // further connections are closed at once
};

// From the configuration's http section.
HttpApiOptions http_api_options(const config::HttpConfig& http);

class HttpApi {
 public:
  // models_status: "" when the models are loaded, else the reason (for
  // /readyz); may be empty (no inference on this node: always ready).
  // dicom_counters: null on a node without a DICOM port. pool, storage and
  // the counters must outlive the HttpApi.
  HttpApi(HttpApiOptions options, db::ConnectionPool& pool, const storage::FileStorage& storage,
          const scp::ServerCounters* dicom_counters, std::function<std::string()> models_status);
  ~HttpApi();  // stop()s
  HttpApi(const HttpApi&) = delete;
  HttpApi& operator=(const HttpApi&) = delete;

  // Binds options.listen (throws std::runtime_error naming the address if it
  // cannot) and starts serving on background threads.
  void start();
  // Stops accepting, closes every connection, joins the threads. Idempotent.
  void stop();

  int port() const { return bound_port_; }  // the bound port, after start()

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
  int bound_port_ = 0;
};

}  // namespace firstread::app
