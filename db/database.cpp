#include "db/database.h"

#include <spdlog/spdlog.h>

namespace firstread::db {
namespace {

// Every connection of the service plans without JIT: the queries are short
// index lookups, and the planner's cost estimates on a large archive would
// otherwise switch JIT on and spend more time compiling than running them.
// random_page_cost as for SSD storage (migration 0007 says why).
std::unique_ptr<pqxx::connection> open_connection(const std::string& conninfo) {
  auto c = std::make_unique<pqxx::connection>(conninfo);
  c->set_variable("jit", "off");
  c->set_variable("random_page_cost", "1.1");
  return c;
}

}  // namespace

ConnectionPool::ConnectionPool(std::string conninfo, int size) : conninfo_(std::move(conninfo)), size_(size) {
  // Connect once now so that a wrong URL or a server that is down is a clear
  // start-up error rather than the first C-STORE failing.
  try {
    idle_.push_back(open_connection(conninfo_));
  } catch (const std::exception& e) {
    throw DatabaseError(std::string("cannot connect to PostgreSQL: ") + e.what());
  }
}

ConnectionPool::~ConnectionPool() = default;

std::unique_ptr<pqxx::connection> ConnectionPool::open_dedicated() const { return open_connection(conninfo_); }

ConnectionPool::Lease::~Lease() {
  if (pool_ && conn_) pool_->release(std::move(conn_), broken_);
}

ConnectionPool::Lease ConnectionPool::acquire() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return !idle_.empty() || outstanding_ < size_; });
  ++outstanding_;
  if (!idle_.empty()) {
    auto c = std::move(idle_.back());
    idle_.pop_back();
    if (c->is_open()) return Lease(this, std::move(c));
  }
  lock.unlock();
  try {
    return Lease(this, open_connection(conninfo_));
  } catch (...) {
    std::lock_guard<std::mutex> relock(mu_);
    --outstanding_;
    cv_.notify_one();
    throw;
  }
}

void ConnectionPool::release(std::unique_ptr<pqxx::connection> c, bool broken) {
  std::lock_guard<std::mutex> lock(mu_);
  --outstanding_;
  if (!broken && c->is_open()) idle_.push_back(std::move(c));
  cv_.notify_one();
}

int schema_version(pqxx::connection& conn) {
  pqxx::work txn(conn);
  auto exists = txn.exec1("SELECT to_regclass('firstread.schema_migrations') IS NOT NULL");
  if (!exists[0].as<bool>()) return 0;
  auto r = txn.exec1("SELECT COALESCE(max(version), 0) FROM firstread.schema_migrations");
  return r[0].as<int>();
}

int migrate(pqxx::connection& conn) {
  int applied = 0;
  {
    pqxx::work txn(conn);
    txn.exec("SELECT pg_advisory_xact_lock(7461726474)");
    txn.exec0("CREATE SCHEMA IF NOT EXISTS firstread");
    txn.exec0(
        "CREATE TABLE IF NOT EXISTS firstread.schema_migrations ("
        " version integer PRIMARY KEY, name text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now())");
    txn.commit();
  }
  for (const Migration& m : migrations()) {
    pqxx::work txn(conn);
    txn.exec("SELECT pg_advisory_xact_lock(7461726474)");
    auto done = txn.exec_params("SELECT name FROM firstread.schema_migrations WHERE version = $1", m.version);
    if (!done.empty()) {
      // Same version, other file: this database was migrated by a build whose
      // migration of that number is not this one, so this one never ran.
      const std::string recorded = done[0][0].as<std::string>();
      if (recorded != m.name)
        throw DatabaseError("migration version " + std::to_string(m.version) + ": the database applied '" + recorded +
                            "' but this build's is '" + m.name + "'; the schema is not the one this build expects");
      continue;
    }
    try {
      txn.exec0(m.sql);
    } catch (const std::exception& e) {
      throw DatabaseError("migration " + m.name + " failed: " + e.what());
    }
    txn.exec_params0("INSERT INTO firstread.schema_migrations (version, name) VALUES ($1, $2)", m.version,
                     m.name);
    txn.commit();
    spdlog::info("database: applied migration {}", m.name);
    ++applied;
  }
  return applied;
}

}  // namespace firstread::db
