// The file paths the index knows, streamed for start-up reconciliation with
// the storage walk (ingest/): a server-side cursor in byte order of the path,
// a batch of rows in memory at a time, whatever the size of the archive.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "db/database.h"

namespace firstread::db {

enum class StoredFileKind {
  kInstance,  // instances.file_path, settled by received_at
  kReport,    // reports.sr_file_path, settled by created_at
};

class StoredPathCursor {
 public:
  // Rows whose time stamp is older than grace_seconds by the database's clock are
  // "settled"; a younger row may belong to a transfer another node is still
  // committing, whose file may not be in place yet.
  StoredPathCursor(ConnectionPool& pool, StoredFileKind kind, double grace_seconds, int batch = 5000);
  ~StoredPathCursor();
  // The next path in byte order (COLLATE "C"); false at the end.
  bool next(std::string& path, bool& settled);

 private:
  void fetch();
  ConnectionPool::Lease lease_;
  std::unique_ptr<pqxx::work> txn_;
  pqxx::result rows_;
  pqxx::result::size_type at_ = 0;
  int batch_;
  bool done_ = false;
};

// Which of these paths have a row now (for files that were too young to judge
// during the walk).
std::vector<std::string> indexed_among(ConnectionPool& pool, StoredFileKind kind, const std::vector<std::string>& paths);

}  // namespace firstread::db
