// Liveness, readiness and the API's own description.
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "app/http/api.h"
#include "db/health.h"

namespace firstread::app::http {

ApiResponse healthz(Context&, const ApiRequest&) { return json_response(200, json{{"status", "ok"}}); }

ApiResponse readyz(Context& ctx, const ApiRequest&) {
  json checks = json::object();
  bool ready = true;
  try {
    db::ping(ctx.pool);
    checks["database"] = "ok";
  } catch (const std::exception& e) {
    checks["database"] = std::string("unreachable: ") + e.what();
    ready = false;
  }
  const std::string probe = ctx.storage.root() + "/tmp/readyz-" + std::to_string(getpid()) + "-" +
                            std::to_string(ctx.readyz_probe_counter.fetch_add(1));
  if (FILE* f = std::fopen(probe.c_str(), "wb")) {
    const bool written = std::fputs("readyz\n", f) >= 0;
    const bool closed = std::fclose(f) == 0;
    std::remove(probe.c_str());
    checks["storage"] = written && closed ? "ok" : "cannot write " + probe;
    ready = ready && written && closed;
  } else {
    checks["storage"] = "cannot create " + probe + ": " + std::strerror(errno);
    ready = false;
  }
  std::string models_problem;
  try {
    if (ctx.models_status) models_problem = ctx.models_status();
  } catch (const std::exception& e) {
    models_problem = e.what();
  }
  checks["models"] = models_problem.empty() ? "ok" : models_problem;
  if (!models_problem.empty()) ready = false;
  json body{{"ready", ready}, {"checks", checks}};
  // Which compute kernels the engine runs (scalar / avx2 / avx512 / amx, and why).
  if (!ctx.options.kernels.empty()) body["kernels"] = ctx.options.kernels;
  return json_response(ready ? 200 : 503, body);
}

ApiResponse openapi(Context&, const ApiRequest&) { return json_response(200, openapi_document()); }

}  // namespace firstread::app::http
