#include "db/instance_index.h"

namespace firstread::db {

bool InstanceIndex::record(const InstanceRecord& r) {
  return pool_.transact([&](pqxx::work& txn) {
    txn.exec_params0(
        "INSERT INTO firstread.studies AS s (study_uid, patient_id, patient_name, accession_number, study_date,"
        " calling_ae) VALUES ($1, NULLIF($2,''), NULLIF($3,''), NULLIF($4,''), NULLIF($5,''), NULLIF($6,''))"
        " ON CONFLICT (study_uid) DO UPDATE SET"
        "  patient_id = COALESCE(s.patient_id, EXCLUDED.patient_id),"
        "  patient_name = COALESCE(s.patient_name, EXCLUDED.patient_name),"
        "  accession_number = COALESCE(s.accession_number, EXCLUDED.accession_number),"
        "  study_date = COALESCE(s.study_date, EXCLUDED.study_date),"
        "  calling_ae = COALESCE(s.calling_ae, EXCLUDED.calling_ae)",
        r.study_uid, r.patient_id, r.patient_name, r.accession_number, r.study_date, r.calling_ae);
    auto opt = [](const std::optional<int>& v) { return v ? std::to_string(*v) : std::string(); };
    auto res = txn.exec_params1(
        "INSERT INTO firstread.instances (sop_instance_uid, series_instance_uid, study_uid, sop_class_uid,"
        " transfer_syntax_uid, modality, body_part, series_number, instance_number, rows, columns, frames,"
        " file_path, file_size, calling_ae)"
        " VALUES ($1, $2, $3, $4, $5, NULLIF($6,''), NULLIF($7,''), NULLIF($8,'')::int, NULLIF($9,'')::int,"
        " NULLIF($10,'')::int, NULLIF($11,'')::int, NULLIF($12,'')::int, $13, $14, NULLIF($15,''))"
        " ON CONFLICT (sop_instance_uid) DO UPDATE SET series_instance_uid = EXCLUDED.series_instance_uid,"
        "  sop_class_uid = EXCLUDED.sop_class_uid, transfer_syntax_uid = EXCLUDED.transfer_syntax_uid,"
        "  modality = EXCLUDED.modality, body_part = EXCLUDED.body_part, rows = EXCLUDED.rows,"
        "  columns = EXCLUDED.columns, frames = EXCLUDED.frames, file_path = EXCLUDED.file_path,"
        "  file_size = EXCLUDED.file_size, received_at = now()"
        " RETURNING (xmax = 0) AS inserted",
        r.sop_instance_uid, r.series_instance_uid, r.study_uid, r.sop_class_uid, r.transfer_syntax_uid,
        r.modality, r.body_part, opt(r.series_number), opt(r.instance_number), opt(r.rows), opt(r.columns),
        opt(r.frames), r.file_path, r.file_size, r.calling_ae);
    const bool inserted = res[0].as<bool>();
    if (inserted) {
      txn.exec_params0(
          "UPDATE firstread.studies SET last_received_at = now(), assembly_pending = true WHERE study_uid = $1",
          r.study_uid);
    }
    return inserted;
  });
}

std::vector<std::string> InstanceIndex::all_file_paths() {
  return pool_.transact([&](pqxx::work& txn) {
    std::vector<std::string> out;
    for (const auto& row : txn.exec("SELECT file_path FROM firstread.instances")) out.push_back(row[0].c_str());
    return out;
  });
}

bool InstanceIndex::has_instance(const std::string& sop_instance_uid) {
  return pool_.transact([&](pqxx::work& txn) {
    return !txn.exec_params("SELECT 1 FROM firstread.instances WHERE sop_instance_uid = $1", sop_instance_uid)
                .empty();
  });
}

}  // namespace firstread::db
