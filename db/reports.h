// firstread.reports, firstread.findings and firstread.exports: a report is
// committed with its findings, its export rows and its job's completion in
// one transaction; the export outbox then claims and settles the exports.
// One read model (Reports::read) answers HTTP /report and `firstread results`
// with the same JSON.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "db/database.h"

namespace firstread::db {

// NOTIFY channel of firstread.exports: an export became due.
inline constexpr const char* kExportsChannel = "firstread_exports";

// An object a report sends beside its SR (issue 16): a GSPS/CSPS per source
// series or a key image, stored like the SR.
struct NewObject {
  std::string kind;  // "gsps", "csps", "key_image"
  std::string source_uid;  // the source series (presentation state) or image (key image)
  std::string sop_class_uid, sop_instance_uid, series_instance_uid, file_path;  // path relative to storage.path
  int instance_number = 1;
};

struct NewReport {
  std::string study_uid, route, model, model_version, language, text;
  std::string sr_sop_instance_uid, sr_series_instance_uid, sr_file_path;  // path relative to storage.path
  int64_t supersedes_report_id = 0;                                      // 0: none
  double decode_ms = 0, inference_ms = 0, sr_ms = 0;                      // db_ms is measured by commit
  std::vector<NewObject> objects;                                        // beside the SR
  // Who answered (issue 14): local | openai, the model id a remote server
  // gave, its token usage, and whether the text stopped at the token limit.
  std::string backend = "local", served_model;
  int prompt_tokens = 0, completion_tokens = 0;
  bool truncated = false;
  // GSCo (issue 15): the prompt as assembled for the generalist (empty: the
  // route's own) and, as JSON text, what the specialists said and how many
  // cases were retrieved (empty: GSCo off).
  std::string prompt, gsco;
};

struct NewFinding {
  std::string label, text, sop_instance_uid;
  int frame = 0;  // 1-based frame of a multi-frame image; 0: not multi-frame
  double x1 = 0, y1 = 0, x2 = 0, y2 = 0;  // source-image pixels
  std::optional<double> confidence;
};

struct NewExport {
  std::string destination, ae_title, host;
  int port = 0;
  int max_attempts = 1;
  int object_index = -1;  // -1: the SR; else which of NewReport::objects this row sends
};

// An object of an earlier report (a re-run continues its series).
struct ReportObjectRow {
  std::string kind, source_uid, series_instance_uid;
  int instance_number = 1;
};

// The job the report completes and the worker that holds its lease.
struct JobLease {
  int64_t job_id = 0;
  std::string owner;
};

struct CommittedReport {
  int64_t report_id = 0;
  double latency_ms = 0;   // last instance received -> report committed (database clock)
  double db_ms = 0;        // this transaction up to the inserts
  double job_seconds = 0;  // the job's start -> finish
};

// The latest report of a study and route, which a new one supersedes.
struct Predecessor {
  int64_t report_id = 0;
  std::string sr_series_instance_uid, sr_sop_instance_uid;
};

struct ReportCursor {
  long long created_us = 0;  // microseconds since the epoch
  int64_t report_id = 0;
};

struct ReportQuery {
  std::string study_uid;  // empty: any
  std::string route;      // empty: any
  std::string since;      // ISO 8601 or anything PostgreSQL reads as timestamptz; empty: any
  bool newest_first = false;
  int limit = 50;
  std::optional<ReportCursor> after;  // keyset, in the query's order
};

struct ReportPage {
  // Each: the api.reports columns but sr_file_path, "sr_url", "findings"
  // (api.findings rows: x1, y1, x2, y2 in source pixels) and "exports"
  // (api.exports rows).
  nlohmann::json reports = nlohmann::json::array();
  std::optional<ReportCursor> next;
};

struct SrFile {
  std::string file_path, sr_sop_instance_uid;
  std::string study_uid;  // for the HTTP audit log
};

class Reports {
 public:
  explicit Reports(ConnectionPool& pool) : pool_(pool) {}

  std::optional<Predecessor> latest_for_route(const std::string& study_uid, const std::string& route);
  // The presentation states and key images of a report.
  std::vector<ReportObjectRow> objects_of(int64_t report_id);
  // SOP Instance UIDs of everything firstread made for the study (SRs,
  // presentation states, key images): when a PACS sends them back they are
  // stored, but the model does not read them.
  std::vector<std::string> own_instances(const std::string& study_uid);

  // Commits the report, its findings and exports and completes the job, in
  // the caller's transaction. Throws LeaseLost if the job is no longer ours
  // (a worker whose lease expired must not report twice).
  static CommittedReport commit(const NewReport& report, const std::vector<NewFinding>& findings,
                                const std::vector<NewExport>& exports, const JobLease& job, pqxx::work& txn);
  // The same in a transaction of its own.
  CommittedReport commit(const NewReport& report, const std::vector<NewFinding>& findings,
                         const std::vector<NewExport>& exports, const JobLease& job);

  // The read model. Throws pqxx::data_exception for a `since` PostgreSQL cannot read.
  ReportPage read(const ReportQuery& query);
  std::optional<SrFile> sr_file(int64_t report_id);

 private:
  ConnectionPool& pool_;
};

class LeaseLost : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// One export claimed for sending (state 'sending' under a lease).
struct DueExport {
  int64_t export_id = 0;
  std::string destination, ae_title, host;
  int port = 0;
  std::string sr_file_path, sr_sop_instance_uid;  // the file and UID this row sends (the SR's or an object's)
  std::string object = "sr";                      // sr, gsps, csps, key_image
  int attempts = 0;  // including this one
  int max_attempts = 0;
};

class Exports {
 public:
  explicit Exports(ConnectionPool& pool) : pool_(pool) {}
  // Claims the next due export (a sender that died leaves 'sending' with an
  // expired lease, which is due again), or nothing.
  std::optional<DueExport> claim_due(int lease_seconds = 300);
  // Sent, or failed: back to pending after backoff * 2^(attempts-1) seconds,
  // or failed for good after max_attempts. Returns the new state.
  std::string settle(int64_t export_id, bool sent, const std::string& error, double backoff_seconds);

 private:
  ConnectionPool& pool_;
};

}  // namespace firstread::db
