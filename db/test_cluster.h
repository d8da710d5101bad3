// Test support: a private embedded PostgreSQL cluster for one test binary, in a
// temporary directory, on a Unix socket only, migrated, stopped at exit.
#pragma once

#include <memory>
#include <string>

#include "db/database.h"
#include "db/embedded_postgres.h"

namespace firstread::db::testing {

class TestCluster {
 public:
  // The cluster of this test binary, started on first use.
  static TestCluster& get();
  ConnectionPool& pool() { return *pool_; }
  std::string conninfo() const { return pg_->conninfo(); }
  const std::string& dir() const { return dir_; }
  // Empties every firstread table (between tests).
  void truncate_all();
  ~TestCluster();

 private:
  TestCluster();
  std::string dir_;
  std::unique_ptr<EmbeddedPostgres> pg_;
  std::unique_ptr<ConnectionPool> pool_;
};

// A fresh temporary directory that the postgres account can traverse.
std::string make_temp_dir(const std::string& prefix);

}  // namespace firstread::db::testing
