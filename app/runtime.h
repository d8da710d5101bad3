// What every subcommand that touches the database needs: the configuration,
// logging, storage, and a connection pool to the configured or embedded
// PostgreSQL (started if needed, stopped again if we started it).
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

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

// A subcommand's arguments as app/main.cpp's CLI11 parser accepted them
// (unknown flags and missing values are refused there, before any run_*).
struct Args {
  std::vector<std::string> items;               // positional arguments, in order
  std::map<std::string, std::string> options;   // "--name" -> value
  std::set<std::string> flags;                  // "--name" of each flag given
  bool has(const std::string& flag) const;      // a flag given, or an option with a value
  std::optional<std::string> value(const std::string& option) const;
};

}  // namespace firstread::app
