// PostgreSQL access: a small libpqxx connection pool, the schema migrations and
// a retry-once transaction helper that survives a database restart.
#pragma once

#include <pqxx/pqxx>

#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

namespace firstread::db {

struct Migration {
  int version;
  std::string name;
  std::string sql;
};
// All migrations compiled into the binary, in version order (db/migrations/*.sql).
const std::vector<Migration>& migrations();

class DatabaseError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A fixed-size pool of connections to one database. Connections that break
// (server restart, network) are dropped and replaced on next use.
class ConnectionPool {
 public:
  ConnectionPool(std::string conninfo, int size);
  ~ConnectionPool();

  class Lease {
   public:
    Lease(ConnectionPool* pool, std::unique_ptr<pqxx::connection> c) : pool_(pool), conn_(std::move(c)) {}
    Lease(Lease&&) = default;
    ~Lease();
    pqxx::connection& operator*() { return *conn_; }
    pqxx::connection* operator->() { return conn_.get(); }
    // Marks the connection broken so that it is closed instead of returned.
    void discard() { broken_ = true; }

   private:
    ConnectionPool* pool_;
    std::unique_ptr<pqxx::connection> conn_;
    bool broken_ = false;
  };

  Lease acquire();
  const std::string& conninfo() const { return conninfo_; }
  // A connection of its own, outside the pool, set up as the pool's are: for
  // a client that must know its session lived on across several transactions
  // (the instance committer: a session that is still open proves the server
  // did not restart since its commits).
  std::unique_ptr<pqxx::connection> open_dedicated() const;

  // Runs fn in a transaction and commits it. A broken connection (database
  // restarted) is retried once on a fresh connection; other errors propagate.
  template <typename Fn>
  auto transact(Fn&& fn) -> decltype(fn(std::declval<pqxx::work&>())) {
    for (int attempt = 0;; ++attempt) {
      Lease lease = acquire();
      try {
        pqxx::work txn(*lease);
        if constexpr (std::is_void_v<decltype(fn(txn))>) {
          fn(txn);
          txn.commit();
          return;
        } else {
          auto result = fn(txn);
          txn.commit();
          return result;
        }
      } catch (const pqxx::broken_connection&) {
        lease.discard();
        if (attempt >= 1) throw;
      } catch (const pqxx::in_doubt_error&) {
        lease.discard();
        throw;
      }
    }
  }

  // Runs fn on a nontransaction (each statement commits by itself), with the
  // same retry on a broken connection. Only for idempotent statements.
  template <typename Fn>
  auto autocommit(Fn&& fn) -> decltype(fn(std::declval<pqxx::nontransaction&>())) {
    for (int attempt = 0;; ++attempt) {
      Lease lease = acquire();
      try {
        pqxx::nontransaction tx(*lease);
        return fn(tx);
      } catch (const pqxx::broken_connection&) {
        lease.discard();
        if (attempt >= 1) throw;
      }
    }
  }

 private:
  friend class Lease;
  void release(std::unique_ptr<pqxx::connection> c, bool broken);

  std::string conninfo_;
  int size_;
  int outstanding_ = 0;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::unique_ptr<pqxx::connection>> idle_;
};

// Applies the migrations not yet applied, each in its own transaction, under
// an advisory lock so that several firstread nodes starting together do not
// race. Returns the number applied.
int migrate(pqxx::connection& conn);
int schema_version(pqxx::connection& conn);

}  // namespace firstread::db
