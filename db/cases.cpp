#include "db/cases.h"

#include <algorithm>
#include <cstring>
#include <map>
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
                " labels, feature_dim, feature, image_sha256)"
                " VALUES ($1, $2, $3, $4, NULLIF($5, 0), ARRAY(SELECT jsonb_array_elements_text($6::jsonb)),"
                " $7, $8, NULLIF($9, '')) RETURNING case_id",
                c.specialist, c.specialist_version, c.source, c.source_ref, c.report_id,
                nlohmann::json(c.labels).dump(), static_cast<int>(c.feature.size()), feature, c.image_sha256)[0]
      .as<int64_t>();
}

std::vector<std::string> sorted(std::vector<std::string> v) {
  std::sort(v.begin(), v.end());
  return v;
}

// The image a case is of: a confirmed case's SOP Instance UID, an imported one's content digest.
const std::string& image_of(const NewCase& c) { return c.source == "import" ? c.image_sha256 : c.source_ref; }

// An import or a confirmation holds each image once per specialist, and only cases of its own source.
void check_once_per_image(const std::vector<NewCase>& cases, const std::string& source) {
  check_cases(cases);
  std::map<std::pair<std::string, std::string>, std::string> images;
  for (const NewCase& c : cases) {
    if (c.source != source) throw std::invalid_argument("case " + c.source_ref + ": this call adds " + source + " cases");
    if (image_of(c).empty()) throw std::invalid_argument("case " + c.source_ref + ": no image digest");
    const auto [at, added] = images.emplace(std::make_pair(c.specialist, image_of(c)), c.source_ref);
    if (!added) {
      if (at->second == c.source_ref)
        throw std::invalid_argument("image " + c.source_ref + " is given twice for specialist " + c.specialist);
      throw std::invalid_argument(at->second + " and " + c.source_ref + " are the same image (given twice for specialist " +
                                  c.specialist + ")");
    }
  }
}

// The earlier case of an image that this one repeats (one row, same specialist version, the same labels in any
// order): its id, else 0.
int64_t same_case(const pqxx::result& earlier, const NewCase& c) {
  if (earlier.size() == 1 && earlier[0][1].c_str() == c.specialist_version &&
      sorted(nlohmann::json::parse(earlier[0][2].c_str()).get<std::vector<std::string>>()) == sorted(c.labels))
    return earlier[0][0].as<int64_t>();
  return 0;
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

CaseWrite Cases::add_imported(const std::vector<NewCase>& cases) { return write_once_per_image(cases, "import"); }

CaseWrite Cases::confirm(const std::vector<NewCase>& cases) { return write_once_per_image(cases, "confirmed"); }

CaseWrite Cases::write_once_per_image(const std::vector<NewCase>& cases, const std::string& source) {
  check_once_per_image(cases, source);
  // The column that names the image: SQL text chosen here, never from input.
  const std::string image = source == "import" ? "image_sha256" : "source_ref";
  return pool_.transact([&](pqxx::work& txn) {
    lock_case_writers(txn);
    CaseWrite w;
    for (const NewCase& c : cases) {
      const auto earlier = txn.exec_params(
          "SELECT case_id, specialist_version, to_jsonb(labels)::text FROM firstread.cases"
          " WHERE specialist = $1 AND source = $2 AND " + image + " = $3 ORDER BY case_id",
          c.specialist, source, image_of(c));
      if (const int64_t kept = same_case(earlier, c)) {
        // A confirmation again through a later report of the study: the case now points at that report.
        if (source == "confirmed")
          txn.exec_params("UPDATE firstread.cases SET report_id = NULLIF($2, 0) WHERE case_id = $1", kept, c.report_id);
        w.case_ids.push_back(kept);
        ++w.unchanged;
        continue;
      }
      for (const auto& r : earlier) w.replaced.push_back(r[0].as<int64_t>());
      txn.exec_params("DELETE FROM firstread.cases WHERE specialist = $1 AND source = $2 AND " + image + " = $3",
                      c.specialist, source, image_of(c));
      w.case_ids.push_back(insert_case(txn, c));
    }
    return w;
  });
}

std::vector<CaseRow> Cases::after(const std::string& specialist, int64_t after_id, int limit) {
  return pool_.transact([&](pqxx::work& txn) {
    std::vector<CaseRow> out;
    for (const auto& r : txn.exec_params(
             "SELECT case_id, to_jsonb(labels)::text, feature, source, source_ref, coalesce(image_sha256, '')"
             " FROM firstread.cases"
             " WHERE specialist = $1 AND case_id > $2 ORDER BY case_id LIMIT $3",
             specialist, after_id, limit)) {
      CaseRow row;
      row.case_id = r[0].as<int64_t>();
      row.source = r[3].c_str();
      row.source_ref = r[4].c_str();
      row.image_sha256 = r[5].c_str();
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
