// The GSCo case library's subcommands (issue 15): `firstread cases import`,
// `firstread cases list`, `firstread confirm`. Import and confirm classify
// every image with the specialist first and then add all cases in one
// transaction (pipeline/case_library): a refused input writes nothing.
#include <nlohmann/json.hpp>

#include <iostream>

#include "app/commands.h"
#include "db/cases.h"
#include "pipeline/case_library.h"
#include "storage/file_storage.h"

namespace firstread::app {
namespace {

using json = nlohmann::json;

int64_t report_id_argument(const std::string& text) {
  size_t used = 0;
  long long id = 0;
  try {
    id = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != text.size() || id < 1) throw std::invalid_argument("'" + text + "' is not a report id");
  return id;
}

}  // namespace

int run_cases_import(const Args& args) {
  const std::string dir = args.items.at(0);
  const std::string labels = *args.value("--labels"), specialist = *args.value("--specialist");
  Runtime rt = Runtime::open(args.value("--config"), true);
  if (!rt.config.specialists.count(specialist))
    throw std::invalid_argument("--specialist: no specialist named '" + specialist + "' in the configuration's specialists");
  pipeline::Specialists specialists(rt.config.specialists);
  const pipeline::ImportResult r = pipeline::import_cases(dir, labels, specialist, specialists, *rt.pool);
  if (args.has("--json")) {
    std::cout << json{{"specialist", r.specialist},
                      {"specialist_version", r.specialist_version},
                      {"case_ids", r.case_ids},
                      {"replaced_case_ids", r.replaced_case_ids},
                      {"unchanged_cases", r.unchanged}}
                     .dump(2)
              << "\n";
    return 0;
  }
  const size_t added = r.case_ids.size() - size_t(r.unchanged);
  std::cout << "imported " << added << " cases for specialist " << r.specialist;
  if (!r.replaced_case_ids.empty())
    std::cout << ", replacing " << r.replaced_case_ids.size() << " imported earlier with other labels or specialist version";
  if (r.unchanged) std::cout << "; " << r.unchanged << " already in the library with these labels, unchanged";
  std::cout << "\n";
  return 0;
}

int run_cases_list(const Args& args) {
  Runtime rt = Runtime::open(args.value("--config"), true);
  const json rows = db::Cases(*rt.pool).list(args.value("--specialist").value_or(""), 100000);
  if (args.has("--json")) {
    std::cout << rows.dump(2, ' ', false, json::error_handler_t::replace) << "\n";
    return 0;
  }
  for (const auto& r : rows) {
    std::string labels;
    for (const auto& l : r["labels"]) labels += (labels.empty() ? "" : ";") + l.get<std::string>();
    std::cout << r["case_id"].get<int64_t>() << "  " << r["specialist"].get<std::string>() << "  "
              << r["source"].get<std::string>() << "  " << r["source_ref"].get<std::string>() << "  " << labels << "\n";
  }
  std::cout << "(" << rows.size() << " case" << (rows.size() == 1 ? "" : "s") << ")\n";
  return 0;
}

int run_confirm(const Args& args) {
  if (args.items.size() < 2) {
    std::cerr << "usage: firstread confirm REPORT_ID LABEL... [--config FILE]\n";
    return 2;
  }
  const int64_t report_id = report_id_argument(args.items[0]);
  const std::vector<std::string> labels(args.items.begin() + 1, args.items.end());
  Runtime rt = Runtime::open(args.value("--config"), true);
  storage::FileStorage storage(rt.config.storage.path, rt.config.storage.fsync);
  pipeline::Specialists specialists(rt.config.specialists);
  const pipeline::ConfirmResult r =
      pipeline::confirm_report(report_id, labels, rt.config, *rt.pool, storage, specialists);
  if (args.has("--json")) {
    std::cout << pipeline::confirm_json(r).dump(2) << "\n";
    return 0;
  }
  const size_t added = r.case_ids.size() - size_t(r.unchanged);
  std::cout << "report " << r.report_id << " (study " << r.study_uid << ") confirmed: ";
  if (added == 0) {
    std::cout << "already in the library with these labels, nothing changed\n";
    return 0;
  }
  std::cout << added << " cases added to the library";
  if (!r.replaced_case_ids.empty())
    std::cout << ", replacing " << r.replaced_case_ids.size() << " confirmed earlier with other labels";
  if (r.unchanged) std::cout << ", " << r.unchanged << " unchanged";
  std::cout << "\n";
  return 0;
}

}  // namespace firstread::app
