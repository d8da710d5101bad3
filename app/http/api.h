// What the route handlers share: requests and responses as they see them,
// the error they throw for answers other than 2xx, the server's state, and
// the route table (routes.cpp) from which authentication, 405 answers,
// /api/v1/openapi.json and the README's route table all come.
#pragma once

#include <boost/beast/http/verb.hpp>
#include <nlohmann/json.hpp>

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "app/http/auth.h"
#include "app/http_api.h"
#include "db/database.h"
#include "storage/file_storage.h"

namespace firstread::ingest {
class InstanceIngest;
}

namespace firstread::app::http {

using json = nlohmann::json;
using Verb = boost::beast::http::verb;

struct ApiRequest {
  Verb method = Verb::unknown;
  std::string path;                          // as sent (for messages)
  std::vector<std::string> segments;         // path split at '/', empty ones dropped, each percent-decoded
  std::map<std::string, std::string> query;  // percent-decoded; '+' is taken literally
  std::map<std::string, std::string> path_params;  // {name} segments of the matched route
  std::string authorization;                 // the header as sent: never logged
  std::string target;                        // path and query as sent (for the audit log)
  std::string remote;                        // the client's IP address
  Caller user;                               // set by dispatch() once the token is checked
  std::string content_type;  // Content-Type header
  std::string accept;        // Accept header
  std::string base_url;      // scheme://Host of the request, for absolute URLs in answers (DICOMweb RetrieveURL)
  std::string body;          // the body of a request of a route that does not stream
  // Routes with streams_body: reads the next bytes of the body into out (at
  // most n), returns 0 at its end; throws BodyReadError when the client stops
  // sending (timeout, reset). Empty for other routes.
  std::function<size_t(char* out, size_t n)> read_body;
};

class BodyReadError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct ApiResponse {
  unsigned status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
  // Routes with Audit::patient_data: the Study Instance UIDs whose data this
  // answer carries, for the audit line dispatch() writes.
  std::vector<std::string> audit_studies;
};

// Thrown by handlers for answers other than 200: status and message.
class HttpError : public std::runtime_error {
 public:
  HttpError(unsigned status, const std::string& message) : std::runtime_error(message), status_(status) {}
  unsigned status() const { return status_; }

 private:
  unsigned status_;
};

ApiResponse json_response(unsigned status, const json& body);
ApiResponse error_response(unsigned status, const std::string& message);

// The server's state, shared by every handler.
struct Context {
  HttpApiOptions options;
  db::ConnectionPool& pool;
  const storage::FileStorage& storage;
  std::function<std::string()> models_status;
  std::atomic<uint64_t> readyz_probe_counter{0};
  Access access;   // tokens and their users (auth.h); empty = no authentication
  AuditLog audit;  // closed = no audit log (tests that do not ask for one)
  ConfirmReport confirm_report;  // GSCo (issue 15); empty on a node without the pipeline
  // STOW-RS (HttpApi::receive_instances): where received instances go, and
  // the same admission check as new DICOM associations ("" = room to store).
  ingest::InstanceIngest* ingest = nullptr;
  std::function<std::string()> admission;
};

// --- the route table
// Role (auth.h): the least role a route needs. anyone: no token (liveness, the
// page shell, the API's description: no patient data).
// Audit::patient_data: the answer carries patient data; each such request is
// an audit line (who, what studies, when) in http.audit_log.
enum class Audit { none, patient_data };

struct QueryParam {
  const char* name;
  const char* description;
};

using Handler = ApiResponse (*)(Context&, const ApiRequest&);

struct Route {
  Verb method;
  const char* pattern;  // "/api/v1/studies/{study_uid}/report": {name} matches one segment
  Role role;
  const char* summary;
  Handler handler;
  std::vector<QueryParam> query;
  Audit audit = Audit::none;
  // The handler reads the body itself as it arrives (ApiRequest::read_body),
  // with no size limit (STOW-RS); other routes get at most 64 KiB in body.
  bool streams_body = false;
};

const std::vector<Route>& routes();
// Whether the request to this path goes to a route that streams its body.
bool streams_body(Verb method, const std::vector<std::string>& segments);

// Authentication, 404 / 405 and dispatch to the route's handler.
ApiResponse dispatch(Context& ctx, ApiRequest& req);
// The OpenAPI 3 document of the route table.
json openapi_document();
// The README's "| route | what |" rows, from the route table.
std::string markdown_route_table();

// --- helpers for handlers
// Query parameter or nothing; an empty value counts as absent.
std::optional<std::string> query_param(const ApiRequest& req, const std::string& name);
// 400 for a query parameter the route does not document.
void refuse_unknown_params(const ApiRequest& req, const std::vector<std::string>& allowed);
// 400 unless a DICOM UID (digits and dots, at most 64).
void require_uid(const std::string& what, const std::string& uid);
// A decimal integer in [min, max], else 400 naming the parameter.
long long integer_param(const std::string& name, const std::string& text, long long min, long long max);
bool is_one_of(const std::string& value, const std::vector<std::string>& allowed);
std::string join(const std::vector<std::string>& items, const std::string& separator);

extern const std::vector<std::string> kStudyStates;
extern const std::vector<std::string> kJobStates;
extern const std::vector<std::string> kExportStates;

// --- the handlers, one file per resource
ApiResponse page_index(Context&, const ApiRequest&);      // page.cpp
ApiResponse page_file(Context&, const ApiRequest&);       // page.cpp
ApiResponse healthz(Context&, const ApiRequest&);         // system.cpp
ApiResponse readyz(Context&, const ApiRequest&);          // system.cpp
ApiResponse openapi(Context&, const ApiRequest&);         // system.cpp
ApiResponse metrics(Context&, const ApiRequest&);         // metrics.cpp
ApiResponse list_studies(Context&, const ApiRequest&);    // studies.cpp
ApiResponse get_study(Context&, const ApiRequest&);       // studies.cpp
ApiResponse reprocess_study(Context&, const ApiRequest&); // studies.cpp
ApiResponse study_report(Context&, const ApiRequest&);    // reports.cpp
ApiResponse report_sr(Context&, const ApiRequest&);       // reports.cpp
ApiResponse confirm_report(Context&, const ApiRequest&);  // reports.cpp
ApiResponse list_jobs(Context&, const ApiRequest&);       // jobs.cpp
ApiResponse instance_png(Context&, const ApiRequest&);    // instances.cpp
// DICOMweb (PS3.18) on /dicomweb: STOW-RS, QIDO-RS, WADO-RS
ApiResponse stow_instances(Context&, const ApiRequest&);   // dicomweb_stow.cpp
ApiResponse qido_studies(Context&, const ApiRequest&);     // dicomweb_qido.cpp
ApiResponse qido_series(Context&, const ApiRequest&);      // dicomweb_qido.cpp
ApiResponse qido_instances(Context&, const ApiRequest&);   // dicomweb_qido.cpp
ApiResponse wado_retrieve(Context&, const ApiRequest&);    // dicomweb_wado.cpp
ApiResponse wado_metadata(Context&, const ApiRequest&);    // dicomweb_wado.cpp
ApiResponse wado_frames(Context&, const ApiRequest&);      // dicomweb_wado.cpp
ApiResponse wado_rendered(Context&, const ApiRequest&);    // dicomweb_wado.cpp
ApiResponse wado_bulkdata(Context&, const ApiRequest&);    // dicomweb_wado.cpp

// An 8-bit RGB image as PNG, or as baseline JPEG of quality 1..100 (instances.cpp).
std::string encode_png_rgb8(const uint8_t* rgb, int width, int height);
std::string encode_jpeg_rgb8(const uint8_t* rgb, int width, int height, int quality);

// Counts one answer by status code (firstread_http_requests_total).
void count_response(unsigned status);

}  // namespace firstread::app::http
