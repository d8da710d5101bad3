#include "app/runtime.h"

#include <spdlog/spdlog.h>

#include "config/logging.h"

namespace firstread::app {

bool Args::has(const std::string& flag) const {
  for (const auto& a : items)
    if (a == flag) return true;
  return false;
}

std::optional<std::string> Args::value(const std::string& flag) const {
  for (size_t i = 0; i < items.size(); ++i) {
    if (items[i] == flag) {
      if (i + 1 >= items.size()) throw std::invalid_argument(flag + " needs a value");
      return items[i + 1];
    }
    if (items[i].rfind(flag + "=", 0) == 0) return items[i].substr(flag.size() + 1);
  }
  return std::nullopt;
}

Runtime Runtime::open(const std::optional<std::string>& config_path, bool quiet) {
  Runtime rt;
  rt.config = config::load_config(config_path);
  config::LogConfig log = rt.config.log;
  if (quiet && log.level == "info") log.level = "warn";  // keep CLI output clean
  setup_logging(log);
  std::string conninfo = rt.config.database.url;
  if (conninfo.empty()) {
    rt.embedded = std::make_unique<db::EmbeddedPostgres>(rt.config.storage.path, rt.config.database.embedded_port);
    rt.embedded->start();
    conninfo = rt.embedded->conninfo();
  }
  rt.pool = std::make_unique<db::ConnectionPool>(conninfo, rt.config.database.pool_size);
  auto lease = rt.pool->acquire();
  db::migrate(*lease);
  return rt;
}

}  // namespace firstread::app
