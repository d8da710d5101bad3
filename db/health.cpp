#include "db/health.h"

namespace firstread::db {

void ping(ConnectionPool& pool) {
  pool.transact([](pqxx::work& txn) { txn.exec1("SELECT 1"); });
}

}  // namespace firstread::db
