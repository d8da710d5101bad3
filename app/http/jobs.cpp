// /api/v1/jobs: the queue as users see it (api.jobs), newest first.
#include "app/http/api.h"
#include "db/jobs.h"

namespace firstread::app::http {

ApiResponse list_jobs(Context& ctx, const ApiRequest& req) {
  refuse_unknown_params(req, {"state", "study", "limit"});
  db::JobQuery query;
  query.state = query_param(req, "state").value_or("");
  query.study_uid = query_param(req, "study").value_or("");
  if (const auto limit = query_param(req, "limit")) query.limit = static_cast<int>(integer_param("limit", *limit, 1, 1000));
  if (!query.state.empty() && !is_one_of(query.state, kJobStates))
    throw HttpError(400, "state: '" + query.state.substr(0, 40) + "' is not one of " + join(kJobStates, ", "));
  if (!query.study_uid.empty()) require_uid("study", query.study_uid);
  return json_response(200, json{{"jobs", db::Jobs(ctx.pool).list(query)}});
}

}  // namespace firstread::app::http
