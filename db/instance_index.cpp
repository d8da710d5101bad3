#include "db/instance_index.h"

namespace firstread::db {

bool InstanceIndex::record(const InstanceRecord& r) {
  auto opt = [](const std::optional<int>& v) { return v ? std::to_string(*v) : std::string(); };
  // One statement in autocommit mode: the function runs as one transaction.
  return pool_.autocommit([&](pqxx::nontransaction& tx) {
    auto row = tx.exec_params1(
        "SELECT firstread.record_instance($1, $2, $3, $4, $5, NULLIF($6,''), NULLIF($7,''), NULLIF($8,'')::int,"
        " NULLIF($9,'')::int, NULLIF($10,'')::int, NULLIF($11,'')::int, NULLIF($12,'')::int, $13, $14,"
        " NULLIF($15,''), NULLIF($16,''), NULLIF($17,''), NULLIF($18,''), NULLIF($19,''))",
        r.sop_instance_uid, r.series_instance_uid, r.study_uid, r.sop_class_uid, r.transfer_syntax_uid, r.modality,
        r.body_part, opt(r.series_number), opt(r.instance_number), opt(r.rows), opt(r.columns), opt(r.frames),
        r.file_path, r.file_size, r.calling_ae, r.patient_id, r.patient_name, r.accession_number, r.study_date);
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

}  // namespace firstread::db
