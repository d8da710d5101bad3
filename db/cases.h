// firstread.cases: the GSCo case library (issue 15). Cases are added in one
// transaction per import or confirmation (all or nothing), and every node
// follows the table by case_id to keep its retrieval index equal to the others'.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "db/database.h"

namespace firstread::db {

struct NewCase {
  std::string specialist, specialist_version;
  std::string source;      // "import" | "confirmed"
  std::string source_ref;  // the file as labels.csv names it, or the SOP Instance UID
  int64_t report_id = 0;   // confirmed: the report; 0 = none
  std::vector<std::string> labels;  // at least one
  std::vector<float> feature;       // L2-normalised
};

struct CaseRow {
  int64_t case_id = 0;
  std::vector<std::string> labels;
  std::vector<float> feature;
};

// What a confirmation needs of its report.
struct ReportTarget {
  int64_t report_id = 0;
  std::string study_uid, route;
};

class Cases {
 public:
  explicit Cases(ConnectionPool& pool) : pool_(pool) {}
  // Inserts every case in one transaction; returns their ids in order.
  // Throws std::invalid_argument (nothing written) for a case without labels
  // or feature.
  std::vector<int64_t> add(const std::vector<NewCase>& cases);
  // The specialist's cases with case_id > after_id, in id order, at most limit.
  std::vector<CaseRow> after(const std::string& specialist, int64_t after_id, int limit);
  int64_t count(const std::string& specialist);
  // api.cases rows, newest first (specialist empty = any).
  nlohmann::json list(const std::string& specialist, int limit);
  std::optional<ReportTarget> report_target(int64_t report_id);

 private:
  ConnectionPool& pool_;
};

}  // namespace firstread::db
