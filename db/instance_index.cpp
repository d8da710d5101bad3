#include "db/instance_index.h"

#include <algorithm>
#include <numeric>

namespace firstread::db {
namespace {

constexpr const char* kRecordInstance =
    "firstread.record_instance($1, $2, $3, $4, $5, NULLIF($6,''), NULLIF($7,''), NULLIF($8,'')::int,"
    " NULLIF($9,'')::int, NULLIF($10,'')::int, NULLIF($11,'')::int, NULLIF($12,'')::int, $13, $14,"
    " NULLIF($15,''), NULLIF($16,''), NULLIF($17,''), NULLIF($18,''), NULLIF($19,''))";

// The same call with the values as quoted literals, for several rows in one statement.
template <typename Txn>
std::string record_instance_call(Txn& tx, const InstanceRecord& r) {
  auto text = [&](const std::string& v) { return tx.quote(v) + "::text"; };
  auto nullable = [&](const std::string& v) { return v.empty() ? std::string("NULL::text") : text(v); };
  auto integer = [](const std::optional<int>& v) { return v ? std::to_string(*v) + "::int" : "NULL::int"; };
  return "firstread.record_instance(" + text(r.sop_instance_uid) + ", " + text(r.series_instance_uid) + ", " +
         text(r.study_uid) + ", " + text(r.sop_class_uid) + ", " + text(r.transfer_syntax_uid) + ", " +
         nullable(r.modality) + ", " + nullable(r.body_part) + ", " + integer(r.series_number) + ", " +
         integer(r.instance_number) + ", " + integer(r.rows) + ", " + integer(r.columns) + ", " +
         integer(r.frames) + ", " + text(r.file_path) + ", " + std::to_string(r.file_size) + "::bigint, " +
         nullable(r.calling_ae) + ", " + nullable(r.patient_id) + ", " + nullable(r.patient_name) + ", " +
         nullable(r.accession_number) + ", " + nullable(r.study_date) + ")";
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

std::vector<bool> InstanceIndex::record_many(const std::vector<const InstanceRecord*>& records) {
  if (records.empty()) return {};
  if (records.size() == 1) return {record(*records[0])};
  std::vector<size_t> order(records.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    const InstanceRecord& x = *records[a];
    const InstanceRecord& y = *records[b];
    return x.study_uid != y.study_uid ? x.study_uid < y.study_uid : x.sop_instance_uid < y.sop_instance_uid;
  });
  // One statement, one round trip: each branch calls record_instance (a
  // volatile function: each call sees the rows of the calls before it, so the
  // same SOP Instance UID twice is an insert and then a refresh).
  return pool_.transact([&](pqxx::work& tx) {
    std::string sql;
    for (size_t k : order) {
      if (!sql.empty()) sql += " UNION ALL ";
      sql += "SELECT " + std::to_string(k) + " AS k, " + record_instance_call(tx, *records[k]);
    }
    std::vector<bool> is_new(records.size(), false);
    const pqxx::result rows = tx.exec(sql);
    if (rows.size() != records.size()) throw DatabaseError("record_many: row count differs from the records sent");
    for (const auto& row : rows) is_new.at(row[0].as<size_t>()) = row[1].as<bool>();
    return is_new;
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

GroupCommit::GroupCommit(InstanceIndex& index, size_t max_rows)
    : index_(index), max_rows_(std::max<size_t>(1, max_rows)), thread_([this] { run(); }) {}

GroupCommit::~GroupCommit() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

std::future<GroupCommit::Committed> GroupCommit::submit(const InstanceRecord& record) {
  Pending p{record, {}};
  std::future<Committed> done = p.done.get_future();
  {
    std::lock_guard<std::mutex> lock(mu_);
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

void GroupCommit::run() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping, nothing left
    // Everything that arrived while the previous group was committing.
    std::vector<Pending> group;
    while (!queue_.empty() && group.size() < max_rows_) {
      group.push_back(std::move(queue_.front()));
      queue_.pop_front();
    }
    // Counted before the rows' futures are ready.
    ++transactions_;
    rows_ += group.size();
    lock.unlock();
    commit_group(group);
    lock.lock();
  }
}

void GroupCommit::commit_group(std::vector<Pending>& group) {
  std::vector<const InstanceRecord*> records;
  for (const auto& p : group) records.push_back(&p.record);
  try {
    const std::vector<bool> is_new = index_.record_many(records);
    for (size_t i = 0; i < group.size(); ++i) group[i].done.set_value({is_new[i], group.size()});
    return;
  } catch (const pqxx::broken_connection&) {
    // The database is unreachable: every row fails now, the senders retry.
    for (auto& p : group) p.done.set_exception(std::current_exception());
    return;
  } catch (const pqxx::in_doubt_error&) {
    for (auto& p : group) p.done.set_exception(std::current_exception());
    return;
  } catch (const std::exception&) {
    if (group.size() == 1) {
      group[0].done.set_exception(std::current_exception());
      return;
    }
  }
  // One row may have failed the group: each row alone, so that it fails only itself.
  for (auto& p : group) {
    try {
      p.done.set_value({index_.record(p.record), 1});
    } catch (const std::exception&) {
      p.done.set_exception(std::current_exception());
    }
  }
}

}  // namespace firstread::db
