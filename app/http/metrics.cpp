// GET /metrics: Prometheus text format 0.0.4 of this process's metrics
// registry (what scp, ingest, pipeline, export and http publish into) and of
// the database's tallies (all nodes), read in a few dozen rows whatever the
// archive's size.
#include <spdlog/spdlog.h>

#include <cmath>
#include <cstdio>
#include <map>
#include <sstream>

#include "app/http/api.h"
#include "db/tallies.h"
#include "metrics/registry.h"

namespace firstread::app::http {
namespace {

std::string escape_label(const std::string& value) {
  std::string out;
  for (char c : value) {
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}

std::string number(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (std::isnan(v)) return "NaN";
  char buf[64];
  if (v == std::floor(v) && std::fabs(v) < 9e15) snprintf(buf, sizeof buf, "%.0f", v);
  else snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

std::string labels_text(const metrics::Labels& labels, const std::string& extra = "") {
  std::string out;
  for (const auto& [k, v] : labels) out += (out.empty() ? "" : ",") + k + "=\"" + escape_label(v) + "\"";
  if (!extra.empty()) out += (out.empty() ? "" : ",") + extra;
  return out.empty() ? "" : "{" + out + "}";
}

void write_family(std::ostringstream& out, const metrics::Family& f) {
  out << "# HELP " << f.name << " " << f.help << "\n# TYPE " << f.name << " " << metrics::type_name(f.type) << "\n";
  for (const auto& s : f.samples) {
    if (f.type != metrics::Type::histogram) {
      out << f.name << labels_text(s.labels) << " " << number(s.value) << "\n";
      continue;
    }
    const auto& h = s.histogram;
    for (size_t b = 0; b < h.bounds.size(); ++b)
      out << f.name << "_bucket" << labels_text(s.labels, "le=\"" + number(h.bounds[b]) + "\"") << " "
          << number(h.cumulative[b]) << "\n";
    out << f.name << "_bucket" << labels_text(s.labels, "le=\"+Inf\"") << " " << number(h.count) << "\n";
    out << f.name << "_sum" << labels_text(s.labels) << " " << number(h.sum) << "\n";
    out << f.name << "_count" << labels_text(s.labels) << " " << number(h.count) << "\n";
  }
}

// The database's tallies as gauge families; states with no rows are 0.
std::vector<metrics::Family> database_families(const std::vector<db::Tally>& tallies) {
  using metrics::Family;
  using metrics::Type;
  std::map<std::string, std::map<std::string, double>> by;  // name -> key -> n
  for (const auto& s : kStudyStates) by["studies"][s] = 0;
  for (const auto& s : kJobStates) by["jobs"][s] = 0;
  for (const auto& s : kExportStates) by["exports"][s] = 0;
  double instances = 0, bytes = 0;
  for (const auto& t : tallies) {
    if (t.name == "instances") {
      instances = static_cast<double>(t.n);
      bytes = static_cast<double>(t.amount);
    } else {
      by[t.name][t.key] = static_cast<double>(t.n);
    }
  }
  auto family = [&](const std::string& name, const std::string& help, const std::string& table,
                    const std::string& label) {
    Family f{name, help, Type::gauge, {}};
    for (const auto& [key, n] : by[table]) f.samples.push_back({{{label, key}}, n, {}});
    return f;
  };
  return {family("firstread_studies", "studies in the database, by state (api.studies)", "studies", "state"),
          Family{"firstread_stored_instances", "instances stored (api.instances, all nodes)", Type::gauge,
                 {{{}, instances, {}}}},
          Family{"firstread_stored_instance_bytes", "bytes of instance files stored (api.instances)", Type::gauge,
                 {{{}, bytes, {}}}},
          family("firstread_jobs", "jobs by state (api.jobs): queued and failed are the queue depth", "jobs", "state"),
          family("firstread_exports", "SR exports by state (api.exports)", "exports", "state"),
          family("firstread_reports", "reports stored, by model (api.reports)", "reports", "model")};
}

}  // namespace

ApiResponse metrics(Context& ctx, const ApiRequest&) {
  std::ostringstream out;
  for (const auto& f : metrics::registry().snapshot()) write_family(out, f);
  bool database_up = true;
  try {
    for (const auto& f : database_families(db::Tallies(ctx.pool).read())) write_family(out, f);
  } catch (const std::exception& e) {
    spdlog::warn("http: /metrics: database part skipped: {}", e.what());
    database_up = false;
  }
  write_family(out, {"firstread_database_up", "1 if the database answered this scrape", metrics::Type::gauge,
                     {{{}, database_up ? 1.0 : 0.0, {}}}});
  ApiResponse r;
  r.content_type = "text/plain; version=0.0.4; charset=utf-8";
  r.body = out.str();
  return r;
}

}  // namespace firstread::app::http
