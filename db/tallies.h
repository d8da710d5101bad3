// firstread.tallies: counts kept on change (migration 0004) for /metrics:
// studies, jobs and exports by state, instances and their bytes, reports by
// model, over the whole database (all nodes).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "db/database.h"

namespace firstread::db {

struct Tally {
  std::string name;  // studies | instances | jobs | exports | reports
  std::string key;   // the state or model; '' for instances
  int64_t n = 0;
  int64_t amount = 0;  // instances: bytes
};

class Tallies {
 public:
  explicit Tallies(ConnectionPool& pool) : pool_(pool) {}
  // Folds the appended changes into the tallies (any node, any time).
  void compact();
  // Compacts, then reads every tally: a few dozen rows whatever the archive's size.
  std::vector<Tally> read();

 private:
  ConnectionPool& pool_;
};

}  // namespace firstread::db
