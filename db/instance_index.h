// The instance index: the rows that record each stored instance and its study.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "db/database.h"

namespace firstread::db {

struct InstanceRecord {
  std::string sop_instance_uid;
  std::string series_instance_uid;
  std::string study_uid;
  std::string sop_class_uid;
  std::string transfer_syntax_uid;
  std::string modality;
  std::string body_part;
  std::optional<int> series_number;
  std::optional<int> instance_number;
  std::optional<int> rows;
  std::optional<int> columns;
  std::optional<int> frames;
  std::string file_path;  // relative to storage.path
  int64_t file_size = 0;
  std::string calling_ae;
  // study attributes
  std::string patient_id;
  std::string patient_name;
  std::string accession_number;
  std::string study_date;
};

class InstanceIndex {
 public:
  explicit InstanceIndex(ConnectionPool& pool) : pool_(pool) {}

  // Records the instance and its study in one transaction. A new instance marks
  // its study as receiving again (a late instance after a report leads to a
  // re-run); the same SOP Instance UID again only refreshes its row.
  // Returns true if the instance was new.
  bool record(const InstanceRecord& r);

  // Removes an instance's row (its file could not be stored after all).
  void forget(const std::string& sop_instance_uid);

  // All file paths known to the index (for start-up reconciliation).
  std::vector<std::string> all_file_paths();

  ConnectionPool& pool() { return pool_; }

 private:
  ConnectionPool& pool_;
};

// Group commit of instance rows, as PostgreSQL's WAL does it for its own
// commits: rows submitted by concurrent associations while a transaction is
// committing wait for it and are committed together in the next one, by one
// committer thread on a connection of its own. No delay is added to gather
// rows. A failed group transaction is retried row by row (a row that fails
// alone fails only itself), except when the database is unreachable (every
// row of the group fails).
//
// Commit point. A group's transaction commits with synchronous_commit=off: a
// row is reported committed once its transaction has committed (visible to
// every session), without waiting for the WAL flush. The ingest acknowledges
// an instance only when, besides, its file and name are durable. The rows not
// yet known to be flushed are kept in memory until pg_current_wal_flush_lsn(),
// read on the same session, passes the WAL position their commit ended
// before: a session still open proves the server did not restart in between
// (a crash-restart ends every session), so the commit is durable. When the
// session breaks, those rows are recorded again (a refresh where the server
// kept them, an insert where it lost them) before any new row. If firstread
// stops or dies too before that, start-up reconciliation indexes their files
// (durable, complete, without a row). A resend of one of them meanwhile is
// committed after the row it refreshes.
class GroupCommit {
 public:
  struct Options {
    size_t max_rows = 64;  // rows per transaction
    // While rows wait for their flush and no new row comes, the flush
    // position is read this often.
    std::chrono::milliseconds confirm_interval{100};
  };
  explicit GroupCommit(InstanceIndex& index) : GroupCommit(index, Options{}) {}
  GroupCommit(InstanceIndex& index, Options options);
  // Commits what is queued, waits for one synchronous commit (which flushes
  // every earlier one), then stops; rows submitted later fail. Call it while
  // the database is still there (the destructor calls it too).
  void stop();
  ~GroupCommit();
  GroupCommit(const GroupCommit&) = delete;
  GroupCommit& operator=(const GroupCommit&) = delete;

  struct Committed {
    bool is_new = false;   // InstanceIndex::record's answer
    size_t group_rows = 1;  // rows in the transaction that committed it
  };
  // Queues the row; the future is ready once it is committed, or throws the
  // commit's error.
  std::future<Committed> submit(const InstanceRecord& record);

  uint64_t transactions() const;  // group transactions run so far (failed ones included)
  uint64_t rows() const;          // rows they held (rows recorded again not counted)
  size_t unconfirmed() const;     // committed rows not yet known to be flushed
  uint64_t recorded_again() const;  // rows recorded again after the session broke

 private:
  struct Pending {
    InstanceRecord record;
    std::promise<Committed> done;
  };
  // A committed row whose flush is not yet confirmed.
  struct Unconfirmed {
    InstanceRecord record;
    uint64_t before_lsn = 0;  // its commit ended before this WAL position; 0: not yet read
  };
  void run();
  void commit_group(std::vector<Pending>& group);
  // Records again, as the next transaction's first rows, what a broken
  // session left unconfirmed; true when they are committed.
  bool record_again();
  // Reads the insert and flush positions (standalone, or as the first branch
  // of a group statement) and drops the rows the flush has passed.
  void confirm(uint64_t insert_lsn, uint64_t flush_lsn);
  bool confirm_now();
  // The rows' transaction on the committer's session; throws as libpqxx does.
  std::vector<bool> commit_rows(const std::vector<const InstanceRecord*>& records);
  pqxx::connection& session();
  void session_broke();
  void flush_barrier();
  // Makes the counts readable by other threads (before a row's future is ready).
  void publish(size_t recorded_again);

  InstanceIndex& index_;
  const Options options_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Pending> queue_;
  bool stop_ = false;
  uint64_t transactions_ = 0, rows_ = 0, recorded_again_ = 0;
  size_t unconfirmed_count_ = 0;
  // Committer thread only.
  std::unique_ptr<pqxx::connection> session_;
  std::vector<Unconfirmed> unconfirmed_;
  std::vector<InstanceRecord> again_;  // left unconfirmed by a broken session
  std::thread thread_;
};

}  // namespace firstread::db
