// The instance index: the rows that record each stored instance and its study.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
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

 private:
  ConnectionPool& pool_;
};

}  // namespace firstread::db
