#include "db/test_cluster.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <stdexcept>

namespace firstread::db::testing {

std::string make_temp_dir(const std::string& prefix) {
  std::string templ = "/tmp/" + prefix + "-XXXXXX";
  std::vector<char> buf(templ.begin(), templ.end());
  buf.push_back('\0');
  if (!mkdtemp(buf.data())) throw std::runtime_error("mkdtemp failed for " + templ);
  chmod(buf.data(), 0755);
  return buf.data();
}

TestCluster& TestCluster::get() {
  static TestCluster cluster;
  return cluster;
}

TestCluster::TestCluster() {
  dir_ = make_temp_dir("firstread-dbtest");
  // A port number per process keeps concurrently running test binaries apart
  // (the socket lives in the private directory anyway).
  pg_ = std::make_unique<EmbeddedPostgres>(dir_, 20000 + getpid() % 20000);
  pg_->start();
  pool_ = std::make_unique<ConnectionPool>(pg_->conninfo(), 8);
  auto lease = pool_->acquire();
  migrate(*lease);
}

void TestCluster::truncate_all() {
  pool_->transact([](pqxx::work& txn) {
    txn.exec0("TRUNCATE firstread.exports, firstread.findings, firstread.reports, firstread.jobs, firstread.instances, firstread.studies RESTART IDENTITY CASCADE");
  });
}

TestCluster::~TestCluster() {
  pool_.reset();
  try {
    pg_->stop_any();
  } catch (...) {
  }
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

}  // namespace firstread::db::testing
