#include "db/stored_files.h"

namespace firstread::db {
namespace {

const char* column_of(StoredFileKind kind) { return kind == StoredFileKind::kInstance ? "file_path" : "sr_file_path"; }
const char* table_of(StoredFileKind kind) {
  return kind == StoredFileKind::kInstance ? "firstread.instances" : "firstread.reports";
}
const char* stamp_of(StoredFileKind kind) { return kind == StoredFileKind::kInstance ? "received_at" : "created_at"; }

}  // namespace

StoredPathCursor::StoredPathCursor(ConnectionPool& pool, StoredFileKind kind, double grace_seconds, int batch)
    : lease_(pool.acquire()), batch_(batch) {
  txn_ = std::make_unique<pqxx::work>(*lease_);
  const std::string col = column_of(kind);
  txn_->exec0("DECLARE stored_paths NO SCROLL CURSOR FOR SELECT " + col + ", " + stamp_of(kind) +
              " < now() - make_interval(secs => " + txn_->quote(grace_seconds) + ") FROM " + table_of(kind) +
              " WHERE " + col + " IS NOT NULL ORDER BY " + col + " COLLATE \"C\"");
}

StoredPathCursor::~StoredPathCursor() {
  try {
    if (txn_) txn_->commit();  // read only; ends the transaction and closes the cursor
  } catch (...) {
    lease_.discard();
  }
}

void StoredPathCursor::fetch() {
  rows_ = txn_->exec("FETCH " + std::to_string(batch_) + " FROM stored_paths");
  at_ = 0;
  if (rows_.empty()) done_ = true;
}

bool StoredPathCursor::next(std::string& path, bool& settled) {
  if (done_) return false;
  if (at_ >= rows_.size()) fetch();
  if (done_) return false;
  path = rows_[at_][0].c_str();
  settled = rows_[at_][1].as<bool>();
  ++at_;
  return true;
}

std::vector<std::string> indexed_among(ConnectionPool& pool, StoredFileKind kind, const std::vector<std::string>& paths) {
  std::vector<std::string> out;
  const std::string sql = std::string("SELECT ") + column_of(kind) + " FROM " + table_of(kind) + " WHERE " +
                          column_of(kind) + " = ANY($1::text[])";
  for (size_t start = 0; start < paths.size(); start += 1000) {
    const size_t end = std::min(paths.size(), start + 1000);
    std::string array = "{";
    for (size_t i = start; i < end; ++i) {
      if (i > start) array += ",";
      array += "\"";
      for (char c : paths[i]) {
        if (c == '"' || c == '\\') array += '\\';
        array += c;
      }
      array += "\"";
    }
    array += "}";
    pool.transact([&](pqxx::work& txn) {
      for (const auto& row : txn.exec_params(sql, array)) out.push_back(row[0].c_str());
    });
  }
  return out;
}

}  // namespace firstread::db
