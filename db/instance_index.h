// The instance index: the rows that record each stored instance and its study.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <future>
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

  // Records several instances in one transaction (one commit, one WAL flush),
  // in order of study and SOP Instance UID so that concurrent transactions
  // (other nodes) lock the study rows in the same order. Returns, for each
  // record in the order given, whether it was new. All or none: a failure
  // throws and commits nothing.
  std::vector<bool> record_many(const std::vector<const InstanceRecord*>& records);

  // Removes an instance's row (its file could not be stored after all).
  void forget(const std::string& sop_instance_uid);

  // All file paths known to the index (for start-up reconciliation).
  std::vector<std::string> all_file_paths();

 private:
  ConnectionPool& pool_;
};

// Group commit of instance rows, as PostgreSQL's WAL does it for its own
// commits: rows submitted by concurrent associations while a transaction is
// committing wait for it and are committed together in the next one, by one
// committer thread. One sender pays one commit per instance as before; N
// senders share one commit (and one flush of the WAL) among up to N rows, and
// no longer queue one behind the other on their study's row lock, held until
// each commit's flush. No delay is added to gather rows. A row is reported
// committed only after its transaction committed; a failed group transaction
// is retried row by row (a row that fails alone fails only itself), except
// when the database is unreachable (every row of the group fails).
class GroupCommit {
 public:
  explicit GroupCommit(InstanceIndex& index, size_t max_rows = 64);
  ~GroupCommit();  // commits what is queued, then stops
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
  uint64_t rows() const;          // rows they held

 private:
  struct Pending {
    InstanceRecord record;
    std::promise<Committed> done;
  };
  void run();
  void commit_group(std::vector<Pending>& group);

  InstanceIndex& index_;
  const size_t max_rows_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Pending> queue_;
  bool stop_ = false;
  uint64_t transactions_ = 0, rows_ = 0;
  std::thread thread_;
};

}  // namespace firstread::db
