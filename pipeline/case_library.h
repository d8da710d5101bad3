// Growing the GSCo case library (issue 15): `firstread cases import` (a
// directory of DICOM or PNG files with a labels.csv) and confirmations of
// reports (`firstread confirm`, POST /api/v1/reports/{id}/confirm), which add
// the images of the report's study with the labels a radiologist confirmed.
// Each call classifies every image first and then writes all its cases in one
// transaction: a bad file or label leaves nothing half-written.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "config/config.h"
#include "db/database.h"
#include "pipeline/gsco.h"
#include "storage/file_storage.h"

namespace firstread::pipeline {

// Why a request to grow the library was refused (nothing was written).
class CaseLibraryError : public std::runtime_error {
 public:
  enum class Kind { bad_input, unknown_report, not_applicable };
  CaseLibraryError(Kind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  Kind kind() const { return kind_; }

 private:
  Kind kind_;
};

// One labels.csv row: the file (relative to the directory) and its labels.
struct LabelledFile {
  int line = 0;
  std::string file;
  std::vector<std::string> labels;
};
// labels.csv: `file,label[;label...]` per line; a first line `file,labels`,
// empty lines and lines starting with '#' are skipped. Throws
// CaseLibraryError (bad_input) naming the file and line.
std::vector<LabelledFile> parse_labels_csv(const std::string& text, const std::string& path);
// A label as the library keeps it: trimmed, 1..64 bytes, no control
// characters, ',' or ';' (they separate labels in labels.csv and the prompt).
// Any such label is taken, also one outside the specialists' id2label (the
// demo library's `normal` for a phantom without findings; a site's own
// vocabulary): RAD repeats the neighbours' labels as they are.
// Throws CaseLibraryError (bad_input) naming `where`.
std::string checked_label(const std::string& label, const std::string& where);

struct ImportResult {
  std::vector<int64_t> case_ids;           // one per labels.csv line, in order (a kept case keeps its id)
  std::vector<int64_t> replaced_case_ids;  // earlier imports of these images with other labels or specialist version
  int unchanged = 0;                       // images already imported with these labels
  std::string specialist, specialist_version;
};
// Every file labels.csv names must exist in `dir` and decode (PNG/PPM/PGM by
// extension, else DICOM): otherwise CaseLibraryError naming all the missing
// ones (or the first undecodable one) and nothing is written. An image (the
// SHA-256 of its file) is in the library once per specialist: importing the
// same directory again, or the same file under another name, keeps its case
// when the labels are the same, and replaces it when they differ (a corrected
// labels.csv) or the specialist was retrained. Two lines naming the same bytes
// are refused.
ImportResult import_cases(const std::string& dir, const std::string& labels_csv, const std::string& specialist,
                          Specialists& specialists, db::ConnectionPool& pool);

struct ConfirmResult {
  int64_t report_id = 0;
  std::string study_uid, route;
  std::vector<std::string> labels;
  std::vector<int64_t> case_ids;           // one per image and specialist of the route
  std::vector<int64_t> replaced_case_ids;  // earlier confirmations of these images, replaced
  int unchanged = 0;                       // cases already confirmed with these labels
};
// The report's study images (as its route selects them) with `labels`, one
// case per image and specialist of the route. Confirming again corrects:
// an image already confirmed (through this report or another of its study)
// gets the new labels in place of the old ones; the same labels again change
// nothing (db::Cases::confirm).
// The HTTP answer and `firstread confirm --json`: report_id, study_uid, route,
// labels, case_ids, replaced_case_ids, unchanged_cases.
nlohmann::json confirm_json(const ConfirmResult& r);
ConfirmResult confirm_report(int64_t report_id, const std::vector<std::string>& labels, const config::Config& config,
                             db::ConnectionPool& pool, const storage::FileStorage& storage, Specialists& specialists);

}  // namespace firstread::pipeline
