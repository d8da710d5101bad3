#include "db/tallies.h"

namespace firstread::db {

void Tallies::compact() {
  pool_.transact([](pqxx::work& txn) { txn.exec("SELECT firstread.compact_tallies()"); });
}

std::vector<Tally> Tallies::read() {
  compact();
  return pool_.transact([](pqxx::work& txn) {
    std::vector<Tally> out;
    // Changes appended since the compaction above count too.
    for (const auto& row : txn.exec(
             "SELECT name, key, sum(n)::bigint, sum(amount)::bigint FROM ("
             " SELECT name, key, n, amount FROM firstread.tallies"
             " UNION ALL SELECT name, key, n, amount FROM firstread.tally_changes) t"
             " GROUP BY name, key ORDER BY name, key"))
      out.push_back({row[0].c_str(), row[1].c_str(), row[2].as<int64_t>(), row[3].as<int64_t>()});
    return out;
  });
}

}  // namespace firstread::db
