// Subcommands that read or change the database: db migrate, studies, jobs.
#include <nlohmann/json.hpp>

#include <iomanip>
#include <iostream>

#include "app/commands.h"

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
