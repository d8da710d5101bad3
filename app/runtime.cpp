#include "app/runtime.h"

#include <spdlog/spdlog.h>

#include "config/logging.h"

namespace firstread::app {

bool Args::has(const std::string& flag) const { return flags.count(flag) > 0 || options.count(flag) > 0; }

std::optional<std::string> Args::value(const std::string& option) const {
  auto it = options.find(option);
  if (it == options.end()) return std::nullopt;
  return it->second;
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
