// The results page (app/web/, embedded at build time). The shell carries no
// data: it asks for the token and sends it with its API calls.
#include "app/http/api.h"
#include "app/web/web_assets.h"

namespace firstread::app::http {
namespace {

std::string content_type_for(const std::string& name) {
  auto ends_with = [&](const std::string& suffix) {
    return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  if (ends_with(".html")) return "text/html; charset=utf-8";
  if (ends_with(".js")) return "text/javascript; charset=utf-8";
  if (ends_with(".css")) return "text/css; charset=utf-8";
  return "application/octet-stream";
}

ApiResponse web_file(const std::string& name) {
  for (const WebAsset* a = kWebAssets; a->name != nullptr; ++a) {
    if (name == a->name) {
      ApiResponse r;
      r.content_type = content_type_for(name);
      r.body.assign(reinterpret_cast<const char*>(a->data), a->size);
      r.headers.emplace_back("Cache-Control", "no-cache");
      return r;
    }
  }
  throw HttpError(404, "no such page file: " + name);
}

}  // namespace

ApiResponse page_index(Context&, const ApiRequest&) { return web_file("index.html"); }
ApiResponse page_file(Context&, const ApiRequest& req) { return web_file(req.path_params.at("file")); }

}  // namespace firstread::app::http
