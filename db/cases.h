// firstread.cases: the GSCo case library (issue 15). Cases are added in one
// transaction per import or confirmation (all or nothing), and every node
// follows the table by case_id to keep its retrieval index equal to the others'.
// Writers take one advisory lock until they commit, so case ids become visible
// in increasing order and a node reading "the rows above the newest I hold"
// never skips a row that a slower transaction commits later.
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
  std::string image_sha256;  // import: SHA-256 (hex) of the file's bytes, the image's identity
  int64_t report_id = 0;   // confirmed: the report; 0 = none
  std::vector<std::string> labels;  // at least one
  std::vector<float> feature;       // L2-normalised
};

struct CaseRow {
  int64_t case_id = 0;
  std::string source, source_ref, image_sha256;
  std::vector<std::string> labels;
  std::vector<float> feature;
};

// What an import or a confirmation did to the library, case by case.
struct CaseWrite {
  std::vector<int64_t> case_ids;  // one per case given, in order (a kept case keeps its id)
  std::vector<int64_t> replaced;  // earlier cases of the same images, now deleted
  int unchanged = 0;              // cases that were already there with the same labels
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
  // `firstread cases import` (source "import"): an image (image_sha256) is in
  // the library once per specialist, as with confirm: the same image again with
  // the same labels and specialist version is kept as it is, with other labels
  // or version it is replaced. One transaction. Throws std::invalid_argument
  // (nothing written) for a bad case, one without image_sha256, or one image
  // given twice for a specialist.
  CaseWrite add_imported(const std::vector<NewCase>& cases);
  // A radiologist's confirmation (source "confirmed", one case per image and
  // specialist): an image of a specialist is in the library once. An earlier
  // confirmed case of the same specialist and image (source_ref), from this or
  // another report of the study, with other labels or another specialist
  // version is replaced (deleted, the new one added: the labels were
  // corrected); with the same labels it is kept as it is (confirming twice
  // changes nothing). One transaction. Throws std::invalid_argument (nothing
  // written) for a bad case or one image given twice for a specialist.
  CaseWrite confirm(const std::vector<NewCase>& cases);
  // The specialist's cases with case_id > after_id, in id order, at most limit.
  // A replaced case is gone from the table; its replacement (same image: the
  // confirmed case's source_ref, the imported one's image_sha256; a higher id)
  // tells a node which case it held to drop.
  std::vector<CaseRow> after(const std::string& specialist, int64_t after_id, int limit);
  int64_t count(const std::string& specialist);
  // api.cases rows, newest first (specialist empty = any).
  nlohmann::json list(const std::string& specialist, int limit);
  std::optional<ReportTarget> report_target(int64_t report_id);

 private:
  CaseWrite write_once_per_image(const std::vector<NewCase>& cases, const std::string& source);
  ConnectionPool& pool_;
};

}  // namespace firstread::db
