// firstread.studies (with firstread.instances as the study's content): the
// study row carries its state, modalities and instance count (migration 0004
// keeps them in the transactions that change them), so the listings below
// read one row per study through the indexes.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "db/database.h"

namespace firstread::db {

// A quiet study the assembler has locked (FOR UPDATE SKIP LOCKED) in its transaction.
struct QuietStudy {
  std::string study_uid;
  std::string calling_ae;
  int generation = 0;  // of the last assembly; the new one is generation + 1
};

// What routing looks at.
struct StudyContent {
  std::set<std::string> modalities;
  std::set<std::string> body_parts;
};

// One instance as a job reads it, in series / instance order.
struct StudyInstance {
  std::string sop_instance_uid, sop_class_uid, series_instance_uid, file_path;
  int series_number = 0, instance_number = 0, frames = 1;
  bool has_rows_and_columns = false;
};

struct InstanceFile {
  std::string file_path;
  int frames = 1;
  std::string study_uid;  // for the HTTP audit log
};

// Keyset position in the newest-first order (first_received_at, study_uid).
struct StudyCursor {
  long long first_received_us = 0;  // microseconds since the epoch
  std::string study_uid;
};

struct StudyQuery {
  std::string since;     // ISO 8601; studies with last_received_at >= since (empty: any)
  std::string modality;  // empty: any
  std::string state;     // empty: any
  int limit = 50;
  std::optional<StudyCursor> after;
};

struct StudyPage {
  nlohmann::json studies = nlohmann::json::array();  // api.studies rows
  std::optional<StudyCursor> next;                  // set when more rows follow
};

class Studies {
 public:
  explicit Studies(ConnectionPool& pool) : pool_(pool) {}

  // --- assembly (in the assembler's transaction)
  static std::vector<QuietStudy> lock_quiet(pqxx::work& txn, double stable_seconds, int limit);
  static StudyContent content(pqxx::work& txn, const std::string& study_uid);
  static void mark_assembled(pqxx::work& txn, const std::string& study_uid, int generation, int routed_jobs);

  // A user's reprocess: assembled again at the next pass. False if unknown.
  bool request_rerun(const std::string& study_uid);

  // --- reads
  std::vector<StudyInstance> instances(const std::string& study_uid);
  std::optional<InstanceFile> instance_file(const std::string& sop_instance_uid);
  // A page of api.studies, newest first. Throws pqxx::data_exception for a
  // `since` PostgreSQL cannot read as a time.
  StudyPage page(const StudyQuery& query);
  // {"study", "instances", "jobs", "reports"}, or nothing for an unknown study.
  std::optional<nlohmann::json> detail(const std::string& study_uid);
  bool exists(const std::string& study_uid);

 private:
  ConnectionPool& pool_;
};

}  // namespace firstread::db
