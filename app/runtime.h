// What every subcommand that touches the database needs: the configuration,
// logging, storage, and a connection pool to the configured or embedded
// PostgreSQL (started if needed, stopped again if we started it).
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "config/config.h"
#include "db/database.h"
#include "db/embedded_postgres.h"

namespace firstread::app {

struct Runtime {
  config::Config config;
  std::unique_ptr<db::EmbeddedPostgres> embedded;  // null when database.url is set
  std::unique_ptr<db::ConnectionPool> pool;

  // Opens the database (starting the embedded cluster when database.url is
  // empty) and applies migrations.
  static Runtime open(const std::optional<std::string>& config_path, bool quiet);
};

// Small argument helpers shared by the subcommands.
struct Args {
  std::vector<std::string> items;
  bool has(const std::string& flag) const;
  std::optional<std::string> value(const std::string& flag) const;  // --flag VALUE or --flag=VALUE
};

}  // namespace firstread::app
