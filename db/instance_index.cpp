#include "db/instance_index.h"

#include <algorithm>
#include <numeric>

#include <spdlog/spdlog.h>

namespace firstread::db {
namespace {

constexpr const char* kRecordInstance =
    "firstread.record_instance($1, $2, $3, $4, $5, NULLIF($6,''), NULLIF($7,''), NULLIF($8,'')::int,"
    " NULLIF($9,'')::int, NULLIF($10,'')::int, NULLIF($11,'')::int, NULLIF($12,'')::int, $13, $14,"
    " NULLIF($15,''), NULLIF($16,''), NULLIF($17,''), NULLIF($18,''), NULLIF($19,''))";

struct WalPositions {
  uint64_t insert = 0, flush = 0;
};

// The WAL positions a group statement reads before its rows (as bytes).
constexpr const char* kWalPositions =
    "(pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint, (pg_current_wal_flush_lsn() - '0/0'::pg_lsn)::bigint";

// A PostgreSQL array literal ({"a","b",NULL}) of one column of the records,
// in the order given. A value is NULL where `null` says so.
template <typename Value, typename IsNull>
std::string array_literal(const std::vector<const InstanceRecord*>& records, const std::vector<size_t>& order,
                          Value value, IsNull null) {
  std::string out = "{";
  for (size_t k : order) {
    if (out.size() > 1) out += ',';
    const InstanceRecord& r = *records[k];
    if (null(r)) {
      out += "NULL";
      continue;
    }
    out += '"';
    for (char c : value(r)) {
      if (c == '"' || c == '\\') out += '\\';
      out += c;
    }
    out += '"';
  }
  return out + "}";
}

std::string optional_text(const std::optional<int>& v) { return v ? std::to_string(*v) : std::string(); }

// Every record of a group in one statement, prepared once per session: the
// rows travel as one array per column (instead of a UNION ALL of N calls with
// quoted literals, which PostgreSQL parsed and planned anew for every group).
// Two or more rows go to firstread.record_instances (migration 0012), which
// records them set-wise: each study row upserted and updated once per group,
// the instances in one INSERT (row by row where the group holds the same SOP
// Instance UID twice). One row goes straight to record_instance: the set-wise
// function's own overhead made a group of one 0.06-0.1 ms dearer
// (bench/ingest/group_sql.sh). The first branch reads the WAL positions
// before any row is written: an Append runs its branches in order, and the
// function scan yields the arrays' elements in order.
constexpr const char* kRecordRowsStatement = "firstread_record_rows";
constexpr const char* kRecordRowsAfterWalPositions =
    " UNION ALL"
    " SELECT r.row_key, r.row_is_new, NULL::bigint, NULL::bigint"
    " FROM firstread.record_instances($1::int[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],"
    " $7::text[], $8::text[], $9::int[], $10::int[], $11::int[], $12::int[], $13::int[], $14::text[], $15::bigint[],"
    " $16::text[], $17::text[], $18::text[], $19::text[], $20::text[]) AS r";
constexpr const char* kRecordRowStatement = "firstread_record_row";
constexpr const char* kRecordRowAfterWalPositions =
    " UNION ALL"
    " SELECT r.k, firstread.record_instance(r.sop, r.series, r.study, r.sop_class, r.transfer_syntax, r.modality,"
    " r.body_part, r.series_number, r.instance_number, r.rows, r.columns, r.frames, r.file_path, r.file_size,"
    " r.calling_ae, r.patient_id, r.patient_name, r.accession_number, r.study_date), NULL::bigint, NULL::bigint"
    " FROM unnest($1::int[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],"
    " $9::int[], $10::int[], $11::int[], $12::int[], $13::int[], $14::text[], $15::bigint[], $16::text[],"
    " $17::text[], $18::text[], $19::text[], $20::text[])"
    " AS r(k, sop, series, study, sop_class, transfer_syntax, modality, body_part, series_number,"
    " instance_number, rows, columns, frames, file_path, file_size, calling_ae, patient_id, patient_name,"
    " accession_number, study_date)";

// Records several instances in one statement (one round trip), in order of
// study and SOP Instance UID so that concurrent transactions (other nodes)
// lock the study rows in the same order; of the same SOP Instance UID twice,
// the one given first is recorded first (an insert, then a refresh). The
// session must have kRecordRowsStatement and kRecordRowStatement prepared. Returns, for each record in
// the order given, whether it was new.
std::vector<bool> record_rows(pqxx::work& tx, const std::vector<const InstanceRecord*>& records,
                              WalPositions& before) {
  std::vector<size_t> order(records.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    const InstanceRecord& x = *records[a];
    const InstanceRecord& y = *records[b];
    return x.study_uid != y.study_uid ? x.study_uid < y.study_uid : x.sop_instance_uid < y.sop_instance_uid;
  });
  using R = const InstanceRecord&;
  const auto never = [](R) { return false; };
  const auto text = [&](std::string InstanceRecord::*field) {
    return array_literal(records, order, [field](R r) -> const std::string& { return r.*field; }, never);
  };
  // Empty text is NULL, as InstanceIndex::record sends it (NULLIF).
  const auto nullable = [&](std::string InstanceRecord::*field) {
    return array_literal(
        records, order, [field](R r) -> const std::string& { return r.*field; },
        [field](R r) { return (r.*field).empty(); });
  };
  const auto integer = [&](std::optional<int> InstanceRecord::*field) {
    return array_literal(records, order, [field](R r) { return optional_text(r.*field); },
                         [field](R r) { return !(r.*field); });
  };
  std::string keys = "{";
  for (size_t k : order) keys += (keys.size() > 1 ? "," : "") + std::to_string(k);
  keys += "}";
  const pqxx::result rows = tx.exec_prepared(
      records.size() > 1 ? kRecordRowsStatement : kRecordRowStatement, keys, text(&InstanceRecord::sop_instance_uid), text(&InstanceRecord::series_instance_uid),
      text(&InstanceRecord::study_uid), text(&InstanceRecord::sop_class_uid),
      text(&InstanceRecord::transfer_syntax_uid), nullable(&InstanceRecord::modality),
      nullable(&InstanceRecord::body_part), integer(&InstanceRecord::series_number),
      integer(&InstanceRecord::instance_number), integer(&InstanceRecord::rows), integer(&InstanceRecord::columns),
      integer(&InstanceRecord::frames), text(&InstanceRecord::file_path),
      array_literal(records, order, [](R r) { return std::to_string(r.file_size); }, never),
      nullable(&InstanceRecord::calling_ae), nullable(&InstanceRecord::patient_id),
      nullable(&InstanceRecord::patient_name), nullable(&InstanceRecord::accession_number),
      nullable(&InstanceRecord::study_date));
  std::vector<bool> is_new(records.size(), false);
  if (rows.size() != records.size() + 1) throw DatabaseError("record_rows: row count differs from the records sent");
  for (const auto& row : rows) {
    const long long k = row[0].as<long long>();
    if (k < 0) {
      before.insert = static_cast<uint64_t>(row[2].as<long long>());
      before.flush = static_cast<uint64_t>(row[3].as<long long>());
    } else {
      is_new.at(static_cast<size_t>(k)) = row[1].as<bool>();
    }
  }
  return is_new;
}

}  // namespace

bool InstanceIndex::record(const InstanceRecord& r) {
  auto opt = [](const std::optional<int>& v) { return v ? std::to_string(*v) : std::string(); };
  // One statement in autocommit mode: the function runs as one transaction.
  return pool_.autocommit([&](pqxx::nontransaction& tx) {
    auto row = tx.exec_params1(std::string("SELECT ") + kRecordInstance, r.sop_instance_uid, r.series_instance_uid,
                               r.study_uid, r.sop_class_uid, r.transfer_syntax_uid, r.modality, r.body_part,
                               opt(r.series_number), opt(r.instance_number), opt(r.rows), opt(r.columns),
                               opt(r.frames), r.file_path, r.file_size, r.calling_ae, r.patient_id, r.patient_name,
                               r.accession_number, r.study_date);
    return row[0].as<bool>();
  });
}

void InstanceIndex::forget(const std::string& sop_instance_uid) {
  pool_.transact([&](pqxx::work& txn) {
    txn.exec_params0("DELETE FROM firstread.instances WHERE sop_instance_uid = $1", sop_instance_uid);
  });
}

std::vector<std::string> InstanceIndex::all_file_paths() {
  return pool_.transact([&](pqxx::work& txn) {
    std::vector<std::string> out;
    for (const auto& row : txn.exec("SELECT file_path FROM firstread.instances")) out.push_back(row[0].c_str());
    return out;
  });
}

GroupCommit::GroupCommit(InstanceIndex& index, Options options)
    : index_(index), options_(options), thread_([this] { run(); }) {}

GroupCommit::~GroupCommit() { stop(); }

void GroupCommit::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

std::future<GroupCommit::Committed> GroupCommit::submit(const InstanceRecord& record) {
  Pending p{record, {}};
  std::future<Committed> done = p.done.get_future();
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_) {
      p.done.set_exception(std::make_exception_ptr(DatabaseError("the instance committer has stopped")));
      return done;
    }
    queue_.push_back(std::move(p));
  }
  cv_.notify_one();
  return done;
}

uint64_t GroupCommit::transactions() const {
  std::lock_guard<std::mutex> lock(mu_);
  return transactions_;
}

uint64_t GroupCommit::rows() const {
  std::lock_guard<std::mutex> lock(mu_);
  return rows_;
}

size_t GroupCommit::unconfirmed() const {
  std::lock_guard<std::mutex> lock(mu_);
  return unconfirmed_count_;
}

uint64_t GroupCommit::recorded_again() const {
  std::lock_guard<std::mutex> lock(mu_);
  return recorded_again_;
}

void GroupCommit::run() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    const bool waiting_rows = !unconfirmed_.empty() || !again_.empty();
    if (waiting_rows)
      cv_.wait_for(lock, options_.confirm_interval, [&] { return stop_ || !queue_.empty(); });
    else
      cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
    std::vector<Pending> group;
    // Everything that arrived while the previous group was committing.
    while (!queue_.empty() && group.size() < options_.max_rows) {
      group.push_back(std::move(queue_.front()));
      queue_.pop_front();
    }
    if (group.empty() && stop_) {
      lock.unlock();
      flush_barrier();
      return;
    }
    if (!group.empty()) {
      // Counted before the rows' futures are ready.
      ++transactions_;
      rows_ += group.size();
    }
    lock.unlock();
    if (!group.empty() || !again_.empty())
      commit_group(group);
    else if (!unconfirmed_.empty())
      confirm_now();
    publish(0);
    lock.lock();
  }
}

void GroupCommit::publish(size_t recorded_again) {
  std::lock_guard<std::mutex> lock(mu_);
  unconfirmed_count_ = unconfirmed_.size() + again_.size();
  recorded_again_ += recorded_again;
}

pqxx::connection& GroupCommit::session() {
  if (session_ && !session_->is_open()) session_broke();
  if (!session_) {
    session_ = index_.pool().open_dedicated();
    // The commit point is the commit, not its flush: see the class comment.
    session_->set_variable("synchronous_commit", "off");
    session_->set_variable("application_name", "'firstread instance committer'");
    const std::string wal_positions = std::string("SELECT -1 AS k, NULL::boolean AS is_new, ") + kWalPositions;
    session_->prepare(kRecordRowsStatement, wal_positions + kRecordRowsAfterWalPositions);
    session_->prepare(kRecordRowStatement, wal_positions + kRecordRowAfterWalPositions);
  }
  return *session_;
}

void GroupCommit::session_broke() {
  session_.reset();
  if (unconfirmed_.empty()) return;
  spdlog::warn("ingest: the committer's database session broke with {} committed rows not yet known to be flushed; "
               "they are recorded again as soon as PostgreSQL answers",
               unconfirmed_.size());
  for (auto& u : unconfirmed_) again_.push_back(std::move(u.record));
  unconfirmed_.clear();
}

void GroupCommit::confirm(uint64_t insert_lsn, uint64_t flush_lsn) {
  for (auto& u : unconfirmed_)
    if (u.before_lsn == 0) u.before_lsn = insert_lsn;
  unconfirmed_.erase(std::remove_if(unconfirmed_.begin(), unconfirmed_.end(),
                                    [&](const Unconfirmed& u) { return u.before_lsn <= flush_lsn; }),
                     unconfirmed_.end());
}

bool GroupCommit::confirm_now() {
  try {
    pqxx::nontransaction tx(session());
    const pqxx::row row = tx.exec1(std::string("SELECT ") + kWalPositions);
    confirm(static_cast<uint64_t>(row[0].as<long long>()), static_cast<uint64_t>(row[1].as<long long>()));
    return true;
  } catch (const pqxx::broken_connection&) {
    session_broke();
  } catch (const std::exception& e) {
    spdlog::warn("ingest: cannot read the WAL flush position: {}", e.what());
  }
  return false;
}

std::vector<bool> GroupCommit::commit_rows(const std::vector<const InstanceRecord*>& records) {
  pqxx::work tx(session());
  WalPositions before;
  std::vector<bool> is_new = record_rows(tx, records, before);
  tx.commit();
  // Read before this transaction's rows: they cover the earlier ones.
  confirm(before.insert, before.flush);
  return is_new;
}

void GroupCommit::commit_group(std::vector<Pending>& group) {
  // A session that broke while idle (the server restarted) is found by the
  // first attempt; the second runs on a new session, led by the rows the old
  // one left unconfirmed.
  for (int attempt = 0;; ++attempt) {
    std::vector<const InstanceRecord*> records;
    size_t again = 0;
    try {
      session();  // first: finding it broken moves its unconfirmed rows into again_
      for (const auto& r : again_) records.push_back(&r);
      for (const auto& p : group) records.push_back(&p.record);
      again = again_.size();
      const std::vector<bool> is_new = commit_rows(records);
      for (auto& r : again_) unconfirmed_.push_back({std::move(r), 0});
      again_.clear();
      for (const auto& p : group) unconfirmed_.push_back({p.record, 0});
      if (again > 0) spdlog::warn("ingest: recorded again {} rows the broken database session had left unconfirmed", again);
      publish(again);
      for (size_t i = 0; i < group.size(); ++i) group[i].done.set_value({is_new[again + i], group.size()});
      return;
    } catch (const pqxx::broken_connection&) {
      session_broke();
      if (attempt == 0) continue;
      publish(0);
      // The database is unreachable: every row fails now, the senders retry.
      for (auto& p : group) p.done.set_exception(std::current_exception());
      return;
    } catch (const pqxx::in_doubt_error&) {
      // Committed or not: not acknowledged either way (the sender retries);
      // rows recorded again stay to be recorded again.
      session_broke();
      publish(0);
      for (auto& p : group) p.done.set_exception(std::current_exception());
      return;
    } catch (const std::exception&) {
      if (records.size() == 1 && !group.empty()) {
        group[0].done.set_exception(std::current_exception());
        return;
      }
      break;
    }
  }
  // One row may have failed the group: each row alone (synchronous commits
  // through the pool: durable once they return), so that it fails only itself.
  std::vector<InstanceRecord> still;
  for (auto& r : again_) {
    try {
      index_.record(r);
    } catch (const pqxx::broken_connection&) {
      still.push_back(std::move(r));
    } catch (const std::exception& e) {
      spdlog::error("ingest: sop={}: cannot record its row again: {} (its file is kept; start-up reconciliation "
                    "indexes it)",
                    r.sop_instance_uid, e.what());
    }
  }
  again_ = std::move(still);
  publish(0);
  for (auto& p : group) {
    try {
      p.done.set_value({index_.record(p.record), 1});
    } catch (const std::exception&) {
      p.done.set_exception(std::current_exception());
    }
  }
}

void GroupCommit::flush_barrier() {
  if (!again_.empty()) {
    std::vector<Pending> none;
    commit_group(none);
  }
  if (!unconfirmed_.empty()) {
    try {
      // A commit that waits for its flush flushes every earlier commit too.
      pqxx::work tx(session());
      tx.exec0("SET LOCAL synchronous_commit = on");
      tx.exec("SELECT txid_current()");
      tx.commit();
      unconfirmed_.clear();
    } catch (const std::exception& e) {
      session_broke();
      spdlog::warn("ingest: cannot wait for the database's WAL flush at shutdown: {}", e.what());
    }
  }
  if (!again_.empty())
    spdlog::warn("ingest: {} acknowledged rows may be missing from the database (it went away before flushing them); "
                 "their files are kept and start-up reconciliation indexes them",
                 again_.size());
}

}  // namespace firstread::db
