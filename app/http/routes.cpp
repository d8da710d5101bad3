// The route table: every route's method, pattern, role, summary, handler and
// query parameters, in one place. Authentication, 404 / 405, the OpenAPI
// document and the README's route table are all derived from it.
#include <spdlog/spdlog.h>

#include <boost/beast/http/verb.hpp>

#include "app/http/api.h"
#include "app/http/parse.h"
#include "dicom/uid.h"
#include "metrics/registry.h"

namespace firstread::app::http {

const std::vector<std::string> kStudyStates = {"receiving", "queued", "processing", "reported", "failed", "unrouted"};
const std::vector<std::string> kJobStates = {"queued", "running", "done", "failed", "dead"};
const std::vector<std::string> kExportStates = {"pending", "sent", "failed"};

const std::vector<Route>& routes() {
  static const std::vector<Route> table = {
      {Verb::get, "/", Role::anyone, "The results page (app/web/index.html)", page_index, {}},
      {Verb::get, "/web/{file}", Role::anyone, "The page's script and style sheet", page_file, {}},
      {Verb::get, "/healthz", Role::anyone, "200 {\"status\":\"ok\"} while the process runs", healthz, {}},
      {Verb::get, "/readyz", Role::viewer,
       "200 when the database answers, storage is writable and the models are loaded; else 503 with each check's "
       "reason; `kernels` names the engine's kernel path (scalar / avx2 / avx512 / amx and why)",
       readyz, {}},
      {Verb::get, "/metrics", Role::admin,
       "Prometheus text: DICOM associations/instances/bytes, HTTP codes, exports sent, studies/jobs/exports by state, "
       "instances, reports by model, histograms of job duration, report latency and decode/inference/sr/db time",
       metrics, {}},
      {Verb::get, "/api/v1/openapi.json", Role::anyone, "This API as an OpenAPI 3 document", openapi, {}},
      {Verb::get, "/api/v1/studies", Role::viewer,
       "{\"studies\":[...],\"next_cursor\":...} newest first; pass next_cursor for the next page",
       list_studies,
       {{"since", "ISO 8601 date or time: studies with last_received_at >= since"},
        {"modality", "e.g. CT"},
        {"state", "receiving|queued|processing|reported|failed|unrouted"},
        {"limit", "1..500 (50)"},
        {"cursor", "next_cursor of the previous page (keyset: stable while studies arrive)"}},
       Audit::patient_data},
      {Verb::get, "/api/v1/studies/{study_uid}", Role::viewer, "The study, its instances, jobs and reports", get_study,
       {}, Audit::patient_data},
      {Verb::get, "/api/v1/studies/{study_uid}/report", Role::viewer,
       "The latest report: text, language, model, findings (x1,y1,x2,y2 in source pixels), SR UID, sr_url, exports "
       "(the same JSON as `firstread results --json`)",
       study_report, {{"route", "only reports of this route"}}, Audit::patient_data},
      {Verb::post, "/api/v1/studies/{study_uid}/reprocess", Role::operator_,
       "202: run the study again (the new SR supersedes the old)", reprocess_study, {}},
      {Verb::get, "/api/v1/reports/{report_id}/sr", Role::viewer, "The SR file (application/dicom)", report_sr, {},
       Audit::patient_data},
      {Verb::post, "/api/v1/reports/{report_id}/confirm", Role::operator_,
       "Body {\"labels\": [\"pneumonia\", ...]}: a radiologist's diagnosis of the report; its study's images join the "
       "GSCo case library, once per image: confirming again with other labels replaces the image's case (a "
       "correction), with the same labels changes nothing (200 {report_id, study_uid, route, labels, case_ids, "
       "replaced_case_ids, unchanged_cases}; 404 unknown report; 409 route without specialists; 400 bad labels)",
       confirm_report, {}, Audit::patient_data},
      {Verb::get, "/api/v1/jobs", Role::viewer, "{\"jobs\":[...]} newest first", list_jobs,
       {{"state", "queued|running|done|failed|dead"}, {"study", "a Study Instance UID"}, {"limit", "1..1000 (100)"}}},
      {Verb::get, "/api/v1/instances/{sop_instance_uid}/png", Role::viewer,
       "A frame as 8-bit RGB PNG through the model's pixel path, at source resolution (boxes map 1:1)", instance_png,
       {{"frame", "0-based frame (0)"}}, Audit::patient_data},
      // DICOMweb (PS3.18): STOW-RS in, QIDO-RS and WADO-RS on everything stored here, firstread's own SRs,
      // presentation states and key images included (each in its own series). OHIF: qidoRoot = wadoRoot =
      // http://HOST/dicomweb.
      {Verb::post, "/dicomweb/studies", Role::sender,
       "STOW-RS: multipart/related; type=\"application/dicom\" body, streamed to disk part by part; each instance "
       "stored durably (fsync + commit) before the DICOM JSON answer lists it in 00081199, failures in 00081198 "
       "with 00081197 (A700 out of resources, A900 does not match SOP class, C000 cannot understand)",
       stow_instances, {}, Audit::none, true},
      {Verb::post, "/dicomweb/studies/{study}", Role::sender,
       "STOW-RS into one study: instances of another study are refused with C122", stow_instances, {}, Audit::none, true},
      {Verb::get, "/dicomweb/studies", Role::viewer,
       "QIDO-RS studies (application/dicom+json), newest first", qido_studies,
       {{"PatientID", "exact"}, {"PatientName", "case-insensitive, * and ? wildcards"},
        {"StudyDate", "YYYYMMDD or a range YYYYMMDD-YYYYMMDD (either end open)"},
        {"ModalitiesInStudy", "e.g. CT (comma-separated: any of them)"}, {"AccessionNumber", "exact"},
        {"StudyInstanceUID", "one or a comma-separated list"}, {"limit", "1..1000 (100)"}, {"offset", "0.."},
        {"includefield", "tags or keywords to add (comma-separated), or all"}}, Audit::patient_data},
      {Verb::get, "/dicomweb/studies/{study}/series", Role::viewer, "QIDO-RS series of a study", qido_series,
       {{"Modality", "exact"}, {"SeriesInstanceUID", "exact"}, {"SeriesNumber", "exact"}, {"limit", "1..1000"},
        {"offset", "0.."}, {"includefield", "tags or keywords to add"}}, Audit::patient_data},
      {Verb::get, "/dicomweb/studies/{study}/instances", Role::viewer, "QIDO-RS instances of a study", qido_instances,
       {{"SOPInstanceUID", "exact"}, {"SOPClassUID", "exact"}, {"InstanceNumber", "exact"}, {"limit", "1..1000"},
        {"offset", "0.."}, {"includefield", "tags or keywords to add"}}, Audit::patient_data},
      {Verb::get, "/dicomweb/studies/{study}/series/{series}/instances", Role::viewer,
       "QIDO-RS instances of a series", qido_instances,
       {{"SOPInstanceUID", "exact"}, {"SOPClassUID", "exact"}, {"InstanceNumber", "exact"}, {"limit", "1..1000"},
        {"offset", "0.."}, {"includefield", "tags or keywords to add"}}, Audit::patient_data},
      {Verb::get, "/dicomweb/studies/{study}", Role::viewer,
       "WADO-RS: the study's instances, multipart/related; type=\"application/dicom\", as stored", wado_retrieve, {}, Audit::patient_data},
      {Verb::get, "/dicomweb/studies/{study}/series/{series}", Role::viewer, "WADO-RS: the series' instances",
       wado_retrieve, {}, Audit::patient_data},
      {Verb::get, "/dicomweb/studies/{study}/series/{series}/instances/{instance}", Role::viewer,
       "WADO-RS: one instance, byte for byte as stored (transfer-syntax * or the stored one)", wado_retrieve, {}, Audit::patient_data},
      {Verb::get, "/dicomweb/studies/{study}/metadata", Role::viewer,
       "WADO-RS metadata (DICOM JSON) of the study's instances; bulk data (pixels, large binary values) by "
       "BulkDataURI", wado_metadata, {}, Audit::patient_data},
      {Verb::get, "/dicomweb/studies/{study}/series/{series}/metadata", Role::viewer,
       "WADO-RS metadata of the series' instances", wado_metadata, {}, Audit::patient_data},
      {Verb::get, "/dicomweb/studies/{study}/series/{series}/instances/{instance}/metadata", Role::viewer,
       "WADO-RS metadata of one instance", wado_metadata, {}, Audit::patient_data},
      {Verb::get, "/dicomweb/studies/{study}/series/{series}/instances/{instance}/frames/{frames}", Role::viewer,
       "WADO-RS frames (1-based, comma-separated), multipart/related; type=\"application/octet-stream\": native "
       "pixel data as is, compressed frames as stored when transfer-syntax=* is accepted, else decompressed",
       wado_frames, {}, Audit::patient_data},
      {Verb::get, "/dicomweb/studies/{study}/series/{series}/instances/{instance}/rendered", Role::viewer,
       "WADO-RS rendered: the first frame as JPEG or PNG (Accept; 8-bit, window from the file)", wado_rendered,
       {{"quality", "JPEG quality 1..100 (90)"}}, Audit::patient_data},
      {Verb::get, "/dicomweb/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/rendered",
       Role::viewer, "WADO-RS rendered: one frame as JPEG or PNG", wado_rendered, {{"quality", "JPEG quality 1..100 (90)"}},
       Audit::patient_data},
      {Verb::get, "/dicomweb/studies/{study}/series/{series}/instances/{instance}/bulk/{tag}", Role::viewer,
       "WADO-RS bulk data: a top-level binary value (the BulkDataURI of the metadata) as application/octet-stream",
       wado_bulkdata, {}, Audit::patient_data},
  };
  return table;
}

namespace {

std::vector<std::string> split_pattern(const std::string& pattern) {
  std::vector<std::string> out;
  size_t start = 1;
  while (start <= pattern.size()) {
    const size_t end = pattern.find('/', start);
    const std::string part = pattern.substr(start, end == std::string::npos ? std::string::npos : end - start);
    if (!part.empty()) out.push_back(part);
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return out;
}

bool matches(const Route& route, const std::vector<std::string>& segments, std::map<std::string, std::string>* params) {
  const auto parts = split_pattern(route.pattern);
  if (parts.size() != segments.size()) return false;
  std::map<std::string, std::string> found;
  for (size_t i = 0; i < parts.size(); ++i) {
    if (parts[i].front() == '{')
      found[parts[i].substr(1, parts[i].size() - 2)] = segments[i];
    else if (parts[i] != segments[i])
      return false;
  }
  if (params) *params = std::move(found);
  return true;
}

ApiResponse unauthorized(const ApiRequest& req) {
  // Neither message repeats what was sent: the token stays out of answers and logs.
  if (req.authorization.empty()) {
    ApiResponse r = error_response(401, "missing Authorization: Bearer <token> (http.users / http.token are set)");
    r.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"firstread\"");
    return r;
  }
  ApiResponse r = error_response(401, "unknown bearer token");
  r.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"firstread\", error=\"invalid_token\"");
  return r;
}

std::string method_name(Verb v) { return std::string(boost::beast::http::to_string(v)); }

}  // namespace

bool streams_body(Verb method, const std::vector<std::string>& segments) {
  for (const Route& r : routes())
    if (r.streams_body && r.method == method && matches(r, segments, nullptr)) return true;
  return false;
}

ApiResponse dispatch(Context& ctx, ApiRequest& req) {
  std::vector<const Route*> on_path;
  for (const Route& r : routes())
    if (matches(r, req.segments, nullptr)) on_path.push_back(&r);
  // Strangers get no map of the routes: anything but a public path needs a token.
  bool public_path = !on_path.empty();
  for (const Route* r : on_path) public_path = public_path && r->role == Role::anyone;
  if (!ctx.access.enabled()) {
    req.user = Caller{"anonymous", Role::admin};  // no users configured: no authentication
  } else if (!public_path) {
    const auto caller = ctx.access.authenticate(req.authorization);
    if (!caller) return unauthorized(req);
    req.user = *caller;
  }
  if (on_path.empty()) throw HttpError(404, "no such route: " + req.path);
  for (const Route* r : on_path) {
    if (req.method == r->method || (r->method == Verb::get && req.method == Verb::head)) {
      if (!role_allows(req.user.role, r->role))
        throw HttpError(403, "user '" + req.user.name + "' (role " + role_name(req.user.role) + ") may not " +
                                 method_name(req.method) + " " + r->pattern + ": it needs role " + role_name(r->role) +
                                 (r->role == Role::admin ? "" : " or admin"));
      matches(*r, req.segments, &req.path_params);
      ApiResponse response = r->handler(ctx, req);
      if (r->audit == Audit::patient_data)
        ctx.audit.write(req.user, req.remote, method_name(req.method), req.target, response.status,
                        response.audit_studies);
      return response;
    }
  }
  std::string allow;
  for (const Route* r : on_path)
    allow += (allow.empty() ? "" : ", ") + method_name(r->method) + (r->method == Verb::get ? ", HEAD" : "");
  ApiResponse r = error_response(405, "method " + method_name(req.method) + " not allowed on " + req.path + "; use " +
                                          method_name(on_path.front()->method));
  r.headers.emplace_back("Allow", allow);
  return r;
}

json openapi_document() {
  json paths = json::object();
  for (const Route& r : routes()) {
    json op = {{"summary", r.summary}, {"x-firstread-role", role_name(r.role)},
               {"x-firstread-audit", r.audit == Audit::patient_data}};
    json params = json::array();
    for (const auto& part : split_pattern(r.pattern))
      if (part.front() == '{')
        params.push_back({{"name", part.substr(1, part.size() - 2)},
                          {"in", "path"},
                          {"required", true},
                          {"schema", {{"type", "string"}}}});
    for (const auto& q : r.query)
      params.push_back({{"name", q.name}, {"in", "query"}, {"description", q.description}, {"schema", {{"type", "string"}}}});
    if (!params.empty()) op["parameters"] = params;
    if (r.role != Role::anyone) op["security"] = json::array({json{{"bearer", json::array()}}});
    op["responses"] = {{"200", {{"description", "success"}}}, {"400", {{"description", "bad parameter"}}},
                       {"401", {{"description", "missing or unknown token (when http.users or http.token is set)"}}},
                       {"403", {{"description", "the token's role may not use this route"}}},
                       {"404", {{"description", "unknown route or resource"}}}};
    if (r.method == Verb::post) op["responses"]["202"] = {{"description", "accepted"}};
    std::string method = method_name(r.method);
    for (auto& c : method) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    paths[r.pattern][method] = op;
  }
  return {{"openapi", "3.0.3"},
          {"info", {{"title", "firstread"}, {"version", "1"}}},
          {"paths", paths},
          {"components", {{"securitySchemes", {{"bearer", {{"type", "http"}, {"scheme", "bearer"}}}}}}}};
}

std::string markdown_route_table() {
  std::string out = "| route | role | what |\n|---|---|---|\n";
  for (const Route& r : routes()) {
    std::string pattern = r.pattern;
    if (!r.query.empty()) {
      pattern += "?";
      for (size_t i = 0; i < r.query.size(); ++i) pattern += std::string(i ? "&" : "") + r.query[i].name + "=";
    }
    out += "| " + method_name(r.method) + " " + pattern + " | " + role_name(r.role) + " | " + r.summary + " |\n";
  }
  return out;
}

std::optional<std::string> query_param(const ApiRequest& req, const std::string& name) {
  auto it = req.query.find(name);
  if (it == req.query.end() || it->second.empty()) return std::nullopt;
  return it->second;
}

void refuse_unknown_params(const ApiRequest& req, const std::vector<std::string>& allowed) {
  for (const auto& [key, value] : req.query)
    if (!is_one_of(key, allowed)) throw HttpError(400, "unknown parameter '" + key + "' (" + join(allowed, ", ") + ")");
}

void require_uid(const std::string& what, const std::string& uid) {
  if (!dicom::is_valid_uid(uid))
    throw HttpError(400, what + " '" + uid.substr(0, 80) + "' is not a valid UID (digits and dots, at most 64)");
}

long long integer_param(const std::string& name, const std::string& text, long long min, long long max) {
  try {
    return http_parse::integer(name, text, min, max);
  } catch (const std::invalid_argument& e) {
    throw HttpError(400, e.what());
  }
}

bool is_one_of(const std::string& value, const std::vector<std::string>& allowed) {
  for (const auto& a : allowed)
    if (a == value) return true;
  return false;
}

std::string join(const std::vector<std::string>& items, const std::string& separator) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? separator : "") + items[i];
  return out;
}

ApiResponse json_response(unsigned status, const json& body) {
  ApiResponse r;
  r.status = status;
  r.body = body.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
  return r;
}

ApiResponse error_response(unsigned status, const std::string& message) {
  return json_response(status, json{{"error", message}});
}

void count_response(unsigned status) {
  metrics::registry()
      .counter("firstread_http_requests_total", "HTTP requests answered by this process, by status code",
               {{"code", std::to_string(status)}})
      .inc();
}

}  // namespace firstread::app::http
