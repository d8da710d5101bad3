// Subcommands that read or change the database: db migrate, studies, jobs.
#include <nlohmann/json.hpp>

#include <iomanip>
#include <iostream>

#include "app/commands.h"
#include "dicom/uid.h"
#include "worklist/study_assembler.h"

namespace firstread::app {
namespace {

// Prints a query result as a table or as a JSON array of objects.
void print_rows(const pqxx::result& r, bool json) {
  if (json) {
    nlohmann::json out = nlohmann::json::array();
    for (const auto& row : r) {
      nlohmann::json obj;
      for (const auto& field : row) {
        if (field.is_null()) {
          obj[field.name()] = nullptr;
        } else {
          const auto type = field.type();
          // int2/int4/int8 (21, 23, 20) as numbers; everything else as text.
          if (type == 20 || type == 21 || type == 23)
            obj[field.name()] = field.as<long long>();
          else
            obj[field.name()] = field.c_str();
        }
      }
      out.push_back(obj);
    }
    std::cout << out.dump(2) << "\n";
    return;
  }
  std::vector<size_t> width(static_cast<size_t>(r.columns()), 0);
  for (pqxx::row::size_type c = 0; c < r.columns(); ++c) width[c] = std::string(r.column_name(c)).size();
  for (const auto& row : r)
    for (pqxx::row::size_type c = 0; c < r.columns(); ++c)
      width[c] = std::max(width[c], std::string(row[c].is_null() ? "" : row[c].c_str()).size());
  for (pqxx::row::size_type c = 0; c < r.columns(); ++c)
    std::cout << std::left << std::setw(static_cast<int>(width[c] + 2)) << r.column_name(c);
  std::cout << "\n";
  for (const auto& row : r) {
    for (pqxx::row::size_type c = 0; c < r.columns(); ++c)
      std::cout << std::left << std::setw(static_cast<int>(width[c] + 2)) << (row[c].is_null() ? "" : row[c].c_str());
    std::cout << "\n";
  }
  std::cout << "(" << r.size() << " row" << (r.size() == 1 ? "" : "s") << ")\n";
}

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
  Runtime rt = Runtime::open(args.value("--config"), true);
  const bool json = args.has("--json");
  auto r = rt.pool->transact([&](pqxx::work& txn) {
    if (auto state = args.value("--state"))
      return txn.exec_params(
          "SELECT study_uid, patient_id, patient_name, accession_number, study_date, modalities::text AS modalities,"
          " instance_count, calling_ae, first_received_at, last_received_at, state"
          " FROM api.studies WHERE state = $1 ORDER BY last_received_at DESC",
          *state);
    return txn.exec(
        "SELECT study_uid, patient_id, patient_name, accession_number, study_date, modalities::text AS modalities,"
        " instance_count, calling_ae, first_received_at, last_received_at, state"
        " FROM api.studies ORDER BY last_received_at DESC");
  });
  print_rows(r, json);
  return 0;
}

int run_jobs(const Args& args) {
  Runtime rt = Runtime::open(args.value("--config"), true);
  const bool json = args.has("--json");
  auto r = rt.pool->transact([&](pqxx::work& txn) {
    const std::string cols =
        "SELECT job_id, study_uid, route, model, state, attempts, error, created_at, started_at, finished_at FROM api.jobs";
    if (auto state = args.value("--state"))
      return txn.exec_params(cols + " WHERE state = $1 ORDER BY job_id", *state);
    return txn.exec(cols + " ORDER BY job_id");
  });
  print_rows(r, json);
  return 0;
}

}  // namespace firstread::app

namespace firstread::app {

int run_results(const Args& args) {
  Runtime rt = Runtime::open(args.value("--config"), true);
  const auto study = args.value("--study");
  const auto since = args.value("--since");
  if (study && !dicom::is_valid_uid(*study)) throw std::invalid_argument("--study: '" + *study + "' is not a UID");
  nlohmann::json out = nlohmann::json::array();
  rt.pool->transact([&](pqxx::work& txn) {
    pqxx::result reports;
    const std::string cols =
        "SELECT report_id, study_uid, created_at, route, model, model_version, language, text, sr_sop_instance_uid,"
        " latency_ms, supersedes_report_id FROM api.reports";
    if (study)
      reports = txn.exec_params(cols + " WHERE study_uid = $1 ORDER BY created_at", *study);
    else if (since)
      reports = txn.exec_params(cols + " WHERE created_at >= $1::timestamptz ORDER BY created_at", *since);
    else
      reports = txn.exec(cols + " ORDER BY created_at DESC LIMIT 50");
    for (const auto& r : reports) {
      nlohmann::json rep;
      rep["report_id"] = r[0].as<long long>();
      rep["study_uid"] = r[1].c_str();
      rep["created_at"] = r[2].c_str();
      rep["route"] = r[3].c_str();
      rep["model"] = r[4].c_str();
      rep["model_version"] = r[5].is_null() ? "" : r[5].c_str();
      rep["language"] = r[6].is_null() ? "" : r[6].c_str();
      rep["text"] = r[7].c_str();
      rep["sr_sop_instance_uid"] = r[8].c_str();
      rep["latency_ms"] = r[9].is_null() ? nlohmann::json(nullptr) : nlohmann::json(r[9].as<double>());
      rep["supersedes_report_id"] = r[10].is_null() ? nlohmann::json(nullptr) : nlohmann::json(r[10].as<long long>());
      rep["findings"] = nlohmann::json::array();
      for (const auto& f : txn.exec_params(
               "SELECT label, text, sop_instance_uid, frame, x1, y1, x2, y2, confidence FROM api.findings"
               " WHERE report_id = $1 ORDER BY finding_id",
               r[0].as<long long>())) {
        rep["findings"].push_back({{"label", f[0].is_null() ? "" : f[0].c_str()},
                                   {"text", f[1].is_null() ? "" : f[1].c_str()},
                                   {"sop_instance_uid", f[2].is_null() ? "" : f[2].c_str()},
                                   {"frame", f[3].is_null() ? nlohmann::json(nullptr) : nlohmann::json(f[3].as<int>())},
                                   {"box", {f[4].as<double>(), f[5].as<double>(), f[6].as<double>(), f[7].as<double>()}},
                                   {"confidence", f[8].is_null() ? nlohmann::json(nullptr) : nlohmann::json(f[8].as<double>())}});
      }
      rep["exports"] = nlohmann::json::array();
      for (const auto& e : txn.exec_params(
               "SELECT destination, state, attempts, last_error FROM api.exports WHERE report_id = $1 ORDER BY export_id",
               r[0].as<long long>())) {
        rep["exports"].push_back({{"destination", e[0].c_str()}, {"state", e[1].c_str()}, {"attempts", e[2].as<int>()},
                                  {"last_error", e[3].is_null() ? "" : e[3].c_str()}});
      }
      out.push_back(rep);
    }
  });
  if (args.has("--json")) {
    std::cout << out.dump(2) << "\n";
    return 0;
  }
  for (const auto& rep : out) {
    std::cout << "report " << rep["report_id"] << "  study " << rep["study_uid"].get<std::string>() << "  "
              << rep["created_at"].get<std::string>() << "  model " << rep["model"].get<std::string>() << " "
              << rep["model_version"].get<std::string>() << "\n";
    std::cout << "  SR " << rep["sr_sop_instance_uid"].get<std::string>();
    if (!rep["latency_ms"].is_null()) std::cout << "  latency " << static_cast<long>(rep["latency_ms"].get<double>()) << " ms";
    std::cout << "\n  " << rep["text"].get<std::string>() << "\n";
    for (const auto& f : rep["findings"])
      std::cout << "  finding: " << f["label"].get<std::string>() << " on " << f["sop_instance_uid"].get<std::string>()
                << " [" << f["box"][0] << ", " << f["box"][1] << ", " << f["box"][2] << ", " << f["box"][3] << "]\n";
    for (const auto& e : rep["exports"])
      std::cout << "  export to " << e["destination"].get<std::string>() << ": " << e["state"].get<std::string>()
                << (e["last_error"].get<std::string>().empty() ? "" : " (" + e["last_error"].get<std::string>() + ")")
                << "\n";
  }
  std::cout << "(" << out.size() << " report" << (out.size() == 1 ? "" : "s") << ")\n";
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
