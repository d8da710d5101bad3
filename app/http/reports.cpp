// A study's latest report (the read model shared with `firstread results`)
// and the SR file itself.
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "app/http/api.h"
#include "db/reports.h"
#include "db/studies.h"

namespace firstread::app::http {
namespace {

bool is_route_name(const std::string& name) {
  bool ok = name.size() <= 64;
  for (char c : name)
    ok = ok && ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-' ||
                c == '.');
  return ok;
}

}  // namespace

ApiResponse study_report(Context& ctx, const ApiRequest& req) {
  const std::string& study_uid = req.path_params.at("study_uid");
  require_uid("study UID", study_uid);
  refuse_unknown_params(req, {"route"});
  const std::string route = query_param(req, "route").value_or("");
  if (!is_route_name(route)) throw HttpError(400, "route: '" + route.substr(0, 40) + "' is not a route name");
  if (!db::Studies(ctx.pool).exists(study_uid)) throw HttpError(404, "unknown study " + study_uid);
  db::ReportQuery query;
  query.study_uid = study_uid;
  query.route = route;
  query.newest_first = true;
  query.limit = 1;
  const db::ReportPage page = db::Reports(ctx.pool).read(query);
  if (page.reports.empty())
    throw HttpError(404, "study " + study_uid + " has no report yet" + (route.empty() ? "" : " for route " + route));
  ApiResponse r = json_response(200, page.reports[0]);
  r.audit_studies.push_back(study_uid);
  return r;
}

ApiResponse report_sr(Context& ctx, const ApiRequest& req) {
  const long long report_id = integer_param("report id", req.path_params.at("report_id"), 1, 999999999999999999LL);
  const auto found = db::Reports(ctx.pool).sr_file(report_id);
  if (!found) throw HttpError(404, "unknown report " + std::to_string(report_id));
  const std::string path = ctx.storage.absolute(found->file_path);
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw std::runtime_error("report " + std::to_string(report_id) + ": cannot open SR file " + path + ": " +
                             std::strerror(errno));
  std::ostringstream bytes;
  bytes << in.rdbuf();
  if (in.bad()) throw std::runtime_error("report " + std::to_string(report_id) + ": cannot read SR file " + path);
  ApiResponse r;
  r.content_type = "application/dicom";
  r.body = bytes.str();
  r.headers.emplace_back("Content-Disposition", "attachment; filename=\"" + found->sr_sop_instance_uid + ".dcm\"");
  r.audit_studies.push_back(found->study_uid);
  return r;
}

ApiResponse confirm_report(Context& ctx, const ApiRequest& req) {
  const long long report_id = integer_param("report id", req.path_params.at("report_id"), 1, 999999999999999999LL);
  refuse_unknown_params(req, {});
  json body;
  try {
    body = json::parse(req.body);
  } catch (const json::exception&) {
    throw HttpError(400, "the body must be JSON: {\"labels\": [\"label\", ...]}");
  }
  if (!body.is_object() || !body.contains("labels") || !body["labels"].is_array() || body["labels"].empty())
    throw HttpError(400, "the body must hold \"labels\": a non-empty list of label strings");
  for (const auto& key : body.items())
    if (key.key() != "labels") throw HttpError(400, "unknown key '" + key.key() + "' in the body (only labels)");
  std::vector<std::string> labels;
  for (const auto& l : body["labels"]) {
    if (!l.is_string()) throw HttpError(400, "labels: every label must be a string, got " + l.dump());
    labels.push_back(l.get<std::string>());
  }
  if (!ctx.confirm_report) throw HttpError(503, "this node runs no specialists (role ingest or no pipeline)");
  try {
    return json_response(200, ctx.confirm_report(report_id, labels));
  } catch (const ConfirmRefused& e) {
    throw HttpError(e.status(), e.what());
  }
}

}  // namespace firstread::app::http
