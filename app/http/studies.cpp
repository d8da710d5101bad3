// /api/v1/studies: the newest-first keyset listing with its filters, one
// study, and reprocess. The opaque cursor is base64url of
// "v1:<first_received_at in µs since the epoch>:<study_uid>".
#include <spdlog/spdlog.h>

#include "app/http/api.h"
#include "app/http/parse.h"
#include "dicom/uid.h"
#include "db/studies.h"

namespace firstread::app::http {
namespace {

std::string encode_cursor(const db::StudyCursor& c) {
  return http_parse::base64url_encode("v1:" + std::to_string(c.first_received_us) + ":" + c.study_uid);
}

db::StudyCursor decode_cursor(const std::string& text) {
  const HttpError bad(400, "cursor: not a cursor this server issued (use next_cursor of the previous page)");
  if (text.size() > 200) throw bad;
  const auto decoded = http_parse::base64url_decode(text);
  if (!decoded || decoded->rfind("v1:", 0) != 0) throw bad;
  const size_t colon = decoded->find(':', 3);
  if (colon == std::string::npos) throw bad;
  db::StudyCursor c;
  c.study_uid = decoded->substr(colon + 1);
  if (!dicom::is_valid_uid(c.study_uid)) throw bad;
  try {
    c.first_received_us = http_parse::integer("cursor", decoded->substr(3, colon - 3), -(1LL << 62), 1LL << 62);
  } catch (const std::invalid_argument&) {
    throw bad;
  }
  return c;
}

bool is_modality(const std::string& m) {
  bool ok = m.size() <= 16;
  for (char c : m) ok = ok && ((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_');
  return ok;
}

}  // namespace

ApiResponse list_studies(Context& ctx, const ApiRequest& req) {
  refuse_unknown_params(req, {"since", "modality", "state", "limit", "cursor"});
  db::StudyQuery query;
  query.since = query_param(req, "since").value_or("");
  query.modality = query_param(req, "modality").value_or("");
  query.state = query_param(req, "state").value_or("");
  if (const auto limit = query_param(req, "limit")) query.limit = static_cast<int>(integer_param("limit", *limit, 1, 500));
  if (!query.since.empty() && !http_parse::looks_like_iso8601(query.since))
    throw HttpError(400, "since: '" + query.since.substr(0, 40) +
                             "' is not an ISO 8601 date or time (e.g. 2026-11-25T08:00:00Z)");
  if (!is_modality(query.modality))
    throw HttpError(400, "modality: '" + query.modality.substr(0, 40) + "' is not a DICOM modality (e.g. CT, CR, MR)");
  if (!query.state.empty() && !is_one_of(query.state, kStudyStates))
    throw HttpError(400, "state: '" + query.state.substr(0, 40) + "' is not one of " + join(kStudyStates, ", "));
  if (const auto cursor = query_param(req, "cursor")) query.after = decode_cursor(*cursor);
  db::StudyPage page;
  try {
    page = db::Studies(ctx.pool).page(query);
  } catch (const pqxx::data_exception& e) {
    // The only client-supplied value PostgreSQL parses here is `since`.
    throw HttpError(400, "since: '" + query.since + "' is not a valid time: " + e.what());
  }
  ApiResponse r = json_response(200, json{{"studies", page.studies},
                                          {"next_cursor", page.next ? json(encode_cursor(*page.next)) : json(nullptr)}});
  for (const auto& study : page.studies) r.audit_studies.push_back(study.value("study_uid", ""));
  return r;
}

ApiResponse get_study(Context& ctx, const ApiRequest& req) {
  const std::string& study_uid = req.path_params.at("study_uid");
  require_uid("study UID", study_uid);
  auto detail = db::Studies(ctx.pool).detail(study_uid);
  if (!detail) throw HttpError(404, "unknown study " + study_uid);
  ApiResponse r = json_response(200, *detail);
  r.audit_studies.push_back(study_uid);
  return r;
}

ApiResponse reprocess_study(Context& ctx, const ApiRequest& req) {
  const std::string& study_uid = req.path_params.at("study_uid");
  require_uid("study UID", study_uid);
  if (!db::Studies(ctx.pool).request_rerun(study_uid)) throw HttpError(404, "unknown study " + study_uid);
  spdlog::info("http: reprocess requested for study {}", study_uid);
  return json_response(202, json{{"study_uid", study_uid}, {"status", "rerun requested"}});
}

}  // namespace firstread::app::http
