// Subcommands that read or change the database: db migrate, studies, jobs,
// results, reprocess. The listings read the same db/ read models as HTTP
// (the same JSON), a page at a time: --limit N rows (50), or --all to stream
// every row page by page in bounded memory.
#include <nlohmann/json.hpp>

#include <iomanip>
#include <iostream>

#include "app/commands.h"
#include "dicom/uid.h"
#include "db/jobs.h"
#include "db/reports.h"
#include "db/studies.h"
#include "worklist/study_assembler.h"

namespace firstread::app {
namespace {

using json = nlohmann::json;

constexpr int kStreamPage = 1000;  // rows per query with --all

int listing_limit(const Args& args) {
  const auto text = args.value("--limit");
  if (!text) return 50;
  int n = 0;
  try {
    size_t used = 0;
    n = std::stoi(*text, &used);
    if (used != text->size()) n = 0;
  } catch (const std::exception&) {
    n = 0;
  }
  if (n < 1 || n > 100000) throw std::invalid_argument("--limit: '" + *text + "' is not a number of rows (1..100000)");
  return n;
}

std::string cell(const json& v) {
  if (v.is_null()) return "";
  if (v.is_string()) return v.get<std::string>();
  if (v.is_array()) {
    std::string out;
    for (const auto& e : v) out += (out.empty() ? "" : ",") + cell(e);
    return out;
  }
  return v.dump();
}

// Prints rows (JSON objects) as they come: a JSON array, or a table whose
// column widths are taken from the first page.
class RowPrinter {
 public:
  RowPrinter(std::vector<std::string> columns, bool json) : columns_(std::move(columns)), json_(json) {}
  void page(const json& rows) {
    for (const auto& row : rows) {
      if (json_) {
        std::cout << (count_ ? ",\n" : "[\n") << row.dump(2, ' ', false, json::error_handler_t::replace);
      } else {
        if (width_.empty()) header(rows);
        for (size_t c = 0; c < columns_.size(); ++c)
          std::cout << std::left << std::setw(static_cast<int>(width_[c] + 2)) << cell(row.value(columns_[c], json()));
        std::cout << "\n";
      }
      ++count_;
    }
  }
  void finish() {
    if (json_) {
      std::cout << (count_ ? "\n]\n" : "[]\n");
      return;
    }
    if (width_.empty()) header(json::array());
    std::cout << "(" << count_ << " row" << (count_ == 1 ? "" : "s") << ")\n";
  }

 private:
  void header(const json& rows) {
    for (const auto& c : columns_) {
      size_t w = c.size();
      for (const auto& row : rows) w = std::max(w, cell(row.value(c, json())).size());
      width_.push_back(w);
    }
    for (size_t c = 0; c < columns_.size(); ++c)
      std::cout << std::left << std::setw(static_cast<int>(width_[c] + 2)) << columns_[c];
    std::cout << "\n";
  }
  std::vector<std::string> columns_;
  bool json_;
  std::vector<size_t> width_;
  size_t count_ = 0;
};

}  // namespace

int run_db(const Args& args) {
  if (args.items.empty() || (args.items[0] != "migrate" && args.items[0] != "stop")) {
    std::cerr << "usage: firstread db migrate [--config FILE]\n"
                 "       firstread db stop [--config FILE]   (stops the embedded cluster)\n";
    return 2;
  }
  Runtime rt = Runtime::open(args.value("--config"), true);
  if (args.items[0] == "stop") {
    rt.pool.reset();
    if (rt.embedded) rt.embedded->stop_any();
    std::cout << "embedded PostgreSQL stopped\n";
    return 0;
  }
  auto lease = rt.pool->acquire();
  std::cout << "schema version " << db::schema_version(*lease) << "\n";
  return 0;
}

int run_studies(const Args& args) {
  const bool all = args.has("--all");
  const int limit = listing_limit(args);
  Runtime rt = Runtime::open(args.value("--config"), true);
  db::Studies studies(*rt.pool);
  db::StudyQuery query;
  query.state = args.value("--state").value_or("");
  query.limit = all ? kStreamPage : limit;
  RowPrinter out({"study_uid", "patient_id", "patient_name", "accession_number", "study_date", "modalities",
                  "instance_count", "calling_ae", "first_received_at", "last_received_at", "state"},
                 args.has("--json"));
  for (;;) {
    db::StudyPage page = studies.page(query);
    out.page(page.studies);
    if (!all || !page.next) break;
    query.after = page.next;
  }
  out.finish();
  return 0;
}

int run_jobs(const Args& args) {
  const bool all = args.has("--all");
  const int limit = listing_limit(args);
  Runtime rt = Runtime::open(args.value("--config"), true);
  db::Jobs jobs(*rt.pool);
  db::JobQuery query;
  query.state = args.value("--state").value_or("");
  query.limit = all ? kStreamPage : limit;
  RowPrinter out({"job_id", "study_uid", "route", "model", "state", "attempts", "error", "created_at", "started_at",
                  "finished_at"},
                 args.has("--json"));
  for (;;) {
    const json page = jobs.list(query);
    out.page(page);
    if (!all || static_cast<int>(page.size()) < query.limit) break;
    query.before_job_id = page.back()["job_id"].get<int64_t>();
  }
  out.finish();
  return 0;
}

namespace {

void print_report(const json& rep) {
  auto text = [](const json& v) { return v.is_string() ? v.get<std::string>() : std::string(); };
  std::cout << "report " << rep["report_id"] << "  study " << text(rep["study_uid"]) << "  " << text(rep["created_at"])
            << "  model " << text(rep["model"]) << " " << text(rep["model_version"]) << "\n";
  std::cout << "  SR " << text(rep["sr_sop_instance_uid"]);
  if (rep["latency_ms"].is_number()) std::cout << "  latency " << static_cast<long>(rep["latency_ms"].get<double>()) << " ms";
  std::cout << "\n  " << text(rep["text"]) << "\n";
  for (const auto& f : rep["findings"])
    std::cout << "  finding: " << text(f["label"]) << " on " << text(f["sop_instance_uid"]) << " [" << f["x1"] << ", "
              << f["y1"] << ", " << f["x2"] << ", " << f["y2"] << "]\n";
  for (const auto& e : rep["exports"])
    std::cout << "  export to " << text(e["destination"]) << ": " << text(e["state"])
              << (text(e["last_error"]).empty() ? "" : " (" + text(e["last_error"]) + ")") << "\n";
}

}  // namespace

int run_results(const Args& args) {
  const bool all = args.has("--all");
  const int limit = listing_limit(args);
  const auto study = args.value("--study");
  const auto since = args.value("--since");
  if (study && !dicom::is_valid_uid(*study)) throw std::invalid_argument("--study: '" + *study + "' is not a UID");
  Runtime rt = Runtime::open(args.value("--config"), true);
  db::Reports reports(*rt.pool);
  db::ReportQuery query;
  query.study_uid = study.value_or("");
  query.since = since.value_or("");
  query.newest_first = !study && !since;  // by default the latest reports; otherwise in time order
  query.limit = all ? kStreamPage : limit;
  const bool as_json = args.has("--json");
  size_t count = 0;
  if (as_json) std::cout << "[";
  for (;;) {
    db::ReportPage page;
    try {
      page = reports.read(query);
    } catch (const pqxx::data_exception& e) {
      throw std::invalid_argument("--since: '" + query.since + "' is not a time PostgreSQL can read");
    }
    for (const auto& rep : page.reports) {
      if (as_json)
        std::cout << (count ? ",\n" : "\n") << rep.dump(2, ' ', false, json::error_handler_t::replace);
      else
        print_report(rep);
      ++count;
    }
    if (!all || !page.next) break;
    query.after = page.next;
  }
  if (as_json) {
    std::cout << (count ? "\n]\n" : "]\n");
    return 0;
  }
  std::cout << "(" << count << " report" << (count == 1 ? "" : "s") << ")\n";
  return 0;
}

int run_reprocess(const Args& args) {
  if (args.items.empty() || args.items[0].rfind("--", 0) == 0) {
    std::cerr << "usage: firstread reprocess STUDY_UID [--config FILE]\n";
    return 2;
  }
  const std::string uid = args.items[0];
  if (!dicom::is_valid_uid(uid)) throw std::invalid_argument("'" + uid + "' is not a Study Instance UID");
  Runtime rt = Runtime::open(args.value("--config"), true);
  if (!worklist::request_rerun(*rt.pool, uid)) throw std::invalid_argument("no study " + uid);
  std::cout << "study " << uid << " will be processed again (its new report supersedes the current one)\n";
  return 0;
}

}  // namespace firstread::app
