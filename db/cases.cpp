#include "db/cases.h"

#include <algorithm>
#include <cstring>
#include <set>
#include <stdexcept>
#include <utility>

namespace firstread::db {
namespace {

// Held by every writer of firstread.cases until it commits ("cases" in ASCII).
constexpr long long kCaseWritersLock = 0x6361736573LL;

void check_cases(const std::vector<NewCase>& cases) {
  for (const NewCase& c : cases) {
    if (c.labels.empty()) throw std::invalid_argument("case " + c.source_ref + " has no label");
    if (c.feature.empty()) throw std::invalid_argument("case " + c.source_ref + " has no feature");
  }
}

void lock_case_writers(pqxx::work& txn) {
  txn.exec_params("SELECT pg_advisory_xact_lock($1)", kCaseWritersLock);
}

int64_t insert_case(pqxx::work& txn, const NewCase& c) {
  const pqxx::binarystring feature(c.feature.data(), c.feature.size() * sizeof(float));
  return txn.exec_params1(
                "INSERT INTO firstread.cases (specialist, specialist_version, source, source_ref, report_id,"
                " labels, feature_dim, feature)"
                " VALUES ($1, $2, $3, $4, NULLIF($5, 0), ARRAY(SELECT jsonb_array_elements_text($6::jsonb)),"
                " $7, $8) RETURNING case_id",
                c.specialist, c.specialist_version, c.source, c.source_ref, c.report_id,
                nlohmann::json(c.labels).dump(), static_cast<int>(c.feature.size()), feature)[0]
      .as<int64_t>();
}

std::vector<std::string> sorted(std::vector<std::string> v) {
  std::sort(v.begin(), v.end());
  return v;
}

}  // namespace

std::vector<int64_t> Cases::add(const std::vector<NewCase>& cases) {
  check_cases(cases);
  return pool_.transact([&](pqxx::work& txn) {
    lock_case_writers(txn);
    std::vector<int64_t> ids;
    for (const NewCase& c : cases) ids.push_back(insert_case(txn, c));
    return ids;
  });
}

ConfirmWrite Cases::confirm(const std::vector<NewCase>& cases) {
  check_cases(cases);
  std::set<std::pair<std::string, std::string>> images;
  for (const NewCase& c : cases) {
    if (c.source != "confirmed") throw std::invalid_argument("case " + c.source_ref + ": a confirmation adds confirmed cases");
    if (!images.insert({c.specialist, c.source_ref}).second)
      throw std::invalid_argument("image " + c.source_ref + " is given twice for specialist " + c.specialist);
  }
  return pool_.transact([&](pqxx::work& txn) {
    lock_case_writers(txn);
    ConfirmWrite w;
    for (const NewCase& c : cases) {
      const auto earlier = txn.exec_params(
          "SELECT case_id, specialist_version, to_jsonb(labels)::text FROM firstread.cases"
          " WHERE specialist = $1 AND source = 'confirmed' AND source_ref = $2 ORDER BY case_id",
          c.specialist, c.source_ref);
      if (earlier.size() == 1 && earlier[0][1].c_str() == c.specialist_version &&
          sorted(nlohmann::json::parse(earlier[0][2].c_str()).get<std::vector<std::string>>()) == sorted(c.labels)) {
        const int64_t id = earlier[0][0].as<int64_t>();
        txn.exec_params("UPDATE firstread.cases SET report_id = NULLIF($2, 0) WHERE case_id = $1", id, c.report_id);
        w.case_ids.push_back(id);
        ++w.unchanged;
        continue;
      }
      for (const auto& r : earlier) w.replaced.push_back(r[0].as<int64_t>());
      txn.exec_params("DELETE FROM firstread.cases WHERE specialist = $1 AND source = 'confirmed' AND source_ref = $2",
                      c.specialist, c.source_ref);
      w.case_ids.push_back(insert_case(txn, c));
    }
    return w;
  });
}

std::vector<CaseRow> Cases::after(const std::string& specialist, int64_t after_id, int limit) {
  return pool_.transact([&](pqxx::work& txn) {
    std::vector<CaseRow> out;
    for (const auto& r : txn.exec_params(
             "SELECT case_id, to_jsonb(labels)::text, feature, source, source_ref FROM firstread.cases"
             " WHERE specialist = $1 AND case_id > $2 ORDER BY case_id LIMIT $3",
             specialist, after_id, limit)) {
      CaseRow row;
      row.case_id = r[0].as<int64_t>();
      row.source = r[3].c_str();
      row.source_ref = r[4].c_str();
      row.labels = nlohmann::json::parse(r[1].c_str()).get<std::vector<std::string>>();
      const pqxx::binarystring bytes(r[2]);
      row.feature.resize(bytes.size() / sizeof(float));
      std::memcpy(row.feature.data(), bytes.data(), row.feature.size() * sizeof(float));
      out.push_back(std::move(row));
    }
    return out;
  });
}

int64_t Cases::count(const std::string& specialist) {
  return pool_.transact([&](pqxx::work& txn) {
    return txn.exec_params1("SELECT count(*) FROM firstread.cases WHERE specialist = $1", specialist)[0].as<int64_t>();
  });
}

nlohmann::json Cases::list(const std::string& specialist, int limit) {
  return pool_.transact([&](pqxx::work& txn) {
    txn.exec0("SET LOCAL TimeZone = 'UTC'");
    const auto r = txn.exec_params1(
        "SELECT coalesce(jsonb_agg(to_jsonb(c) ORDER BY c.case_id DESC), '[]')::text FROM"
        " (SELECT * FROM api.cases WHERE $1 = '' OR specialist = $1 ORDER BY case_id DESC LIMIT $2) c",
        specialist, limit);
    return nlohmann::json::parse(r[0].c_str());
  });
}

std::optional<ReportTarget> Cases::report_target(int64_t report_id) {
  return pool_.transact([&](pqxx::work& txn) -> std::optional<ReportTarget> {
    const auto r = txn.exec_params("SELECT study_uid, route FROM firstread.reports WHERE report_id = $1", report_id);
    if (r.empty()) return std::nullopt;
    return ReportTarget{report_id, r[0][0].c_str(), r[0][1].c_str()};
  });
}

}  // namespace firstread::db
