// bench/db_scale: times the HTTP listings and filters, /metrics and the CLI
// listings on whatever archive the database holds (run.sh runs it on an
// empty database and again after fill.sql), median of 5 after one warm-up,
// against the goals of issue 18 (listing / filter / CLI page <= 50 ms,
// /metrics <= 100 ms). The HTTP API runs in this process, as in serve; the
// client is a plain Beast connection per request on loopback.
#include <sys/wait.h>

#include <algorithm>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <functional>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "app/http_api.h"
#include "db/database.h"
#include "storage/file_storage.h"

namespace beast = boost::beast;
namespace bhttp = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;
using namespace firstread;

namespace {

struct Answer {
  int status = 0;
  std::string body;
};

Answer get(int port, const std::string& target) {
  net::io_context io;
  tcp::socket socket(io);
  socket.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), static_cast<unsigned short>(port)));
  bhttp::request<bhttp::string_body> req{bhttp::verb::get, target, 11};
  req.set(bhttp::field::host, "127.0.0.1");
  bhttp::write(socket, req);
  beast::flat_buffer buffer;
  bhttp::response_parser<bhttp::string_body> parser;
  parser.body_limit(1 << 30);
  bhttp::read(socket, buffer, parser);
  return {static_cast<int>(parser.get().result_int()), parser.get().body()};
}

double ms(Clock::time_point since) { return std::chrono::duration<double, std::milli>(Clock::now() - since).count(); }

struct Timing {
  std::string what;
  double median = 0, min = 0, max = 0;
  double goal = 0;
  std::string note;
};

Timing time_it(const std::string& what, double goal, const std::function<std::string()>& once) {
  std::string note = once();  // warm-up
  std::vector<double> runs;
  for (int i = 0; i < 5; ++i) {
    const auto t = Clock::now();
    note = once();
    runs.push_back(ms(t));
  }
  std::sort(runs.begin(), runs.end());
  return {what, runs[2], runs.front(), runs.back(), goal, note};
}

std::string yesterday_iso() {
  std::time_t t = std::time(nullptr) - 86400;
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// Runs a command with its output thrown away; returns a note with its status.
std::string run_quietly(const std::string& command) {
  const int status = std::system((command + " >/dev/null 2>&1").c_str());
  return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? "" : "exit " + std::to_string(WEXITSTATUS(status));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 5) {
    std::cerr << "usage: bench_db_scale CONNINFO FIRSTREAD_BINARY CONFIG LABEL\n";
    return 2;
  }
  const std::string conninfo = argv[1], firstread = argv[2], config = argv[3], label = argv[4];
  db::ConnectionPool pool(conninfo, 4);
  const std::string storage_dir = "/tmp/firstread-dbscale-storage";
  storage::FileStorage storage(storage_dir, false);
  app::HttpApiOptions options;
  options.listen = "127.0.0.1:0";
  app::HttpApi api(options, pool, storage, [] { return std::string(); });
  api.start();
  const int port = api.port();

  auto http = [&](const std::string& target) {
    return [&, target] {
      const Answer a = get(port, target);
      if (a.status != 200) return "status " + std::to_string(a.status);
      if (a.body.front() != '{') return std::to_string(a.body.size()) + " bytes";
      const json j = json::parse(a.body);
      for (const char* list : {"studies", "jobs", "findings"})
        if (j.contains(list)) return std::to_string(j[list].size()) + " " + list;
      return std::string("ok");
    };
  };
  // A page to continue from, and one reported study.
  const json first = json::parse(get(port, "/api/v1/studies?limit=50").body);
  const std::string cursor = first["next_cursor"].is_string() ? first["next_cursor"].get<std::string>() : "";
  const json reported = json::parse(get(port, "/api/v1/studies?state=reported&limit=1").body)["studies"];
  const std::string study = reported.empty() ? "1.2.3" : reported[0]["study_uid"].get<std::string>();
  const std::string since = yesterday_iso();

  std::vector<Timing> t;
  t.push_back(time_it("GET /api/v1/studies?limit=50", 50, http("/api/v1/studies?limit=50")));
  if (!cursor.empty())
    t.push_back(time_it("GET /api/v1/studies?limit=50&cursor= (next page)", 50,
                        http("/api/v1/studies?limit=50&cursor=" + cursor)));
  for (const char* filter : {"state=failed", "state=receiving", "state=queued", "modality=CT", "modality=MG",
                             "modality=CT&state=failed"})
    t.push_back(time_it(std::string("GET /api/v1/studies?") + filter, 50,
                        http(std::string("/api/v1/studies?limit=50&") + filter)));
  t.push_back(time_it("GET /api/v1/studies?since=<24 h ago>", 50, http("/api/v1/studies?limit=50&since=" + since)));
  t.push_back(time_it("GET /api/v1/studies/{uid}", 50, http("/api/v1/studies/" + study)));
  t.push_back(time_it("GET /api/v1/studies/{uid}/report", 50, http("/api/v1/studies/" + study + "/report")));
  t.push_back(time_it("GET /api/v1/jobs", 50, http("/api/v1/jobs")));
  t.push_back(time_it("GET /api/v1/jobs?state=dead", 50, http("/api/v1/jobs?state=dead")));
  t.push_back(time_it("GET /metrics", 100, http("/metrics")));
  t.push_back(time_it("firstread studies (first page)", 50,
                      [&] { return run_quietly(firstread + " studies --config " + config); }));
  t.push_back(time_it("firstread results --since <24 h ago> (first page)", 50,
                      [&] { return run_quietly(firstread + " results --since " + since + " --config " + config); }));
  t.push_back(time_it("firstread jobs --state dead (first page)", 50,
                      [&] { return run_quietly(firstread + " jobs --state dead --config " + config); }));
  t.push_back(time_it("firstread version (process start, no database)", 0,
                      [&] { return run_quietly(firstread + " version"); }));
  // The README's example queries, as a user runs them (goal 100 ms).
  const std::vector<std::pair<std::string, std::string>> examples = {
      {"README: studies received today",
       "SELECT study_uid, modalities, instance_count, state FROM api.studies"
       " WHERE first_received_at > current_date ORDER BY last_received_at DESC"},
      {"README: jobs that died and why", "SELECT study_uid, route, attempts, error FROM api.jobs WHERE state = 'dead'"},
      {"README: CR nodules > 10 mm this week",
       "SELECT s.study_uid, f.label, f.x2 - f.x1 AS width_px FROM api.findings f JOIN api.reports r USING (report_id)"
       " JOIN api.studies s USING (study_uid) WHERE 'CR' = ANY (s.modalities) AND f.label ILIKE '%nodule%'"
       " AND f.x2 - f.x1 > 50 AND r.created_at > now() - interval '7 days'"},
      {"README: SRs not yet in the PACS",
       "SELECT r.study_uid, e.destination, e.attempts, e.last_error FROM api.exports e JOIN api.reports r"
       " USING (report_id) WHERE e.state <> 'sent'"}};
  for (const auto& [what, sql] : examples)
    t.push_back(time_it(what, 100, [&, sql = sql] {
      return pool.transact([&](pqxx::work& txn) { return std::to_string(txn.exec(sql).size()) + " rows"; });
    }));
  api.stop();

  std::printf("%-52s %10s %8s %8s %6s  %s\n", ("[" + label + "]").c_str(), "median ms", "min", "max", "goal",
              "answer");
  for (const auto& x : t)
    std::printf("%-52s %10.1f %8.1f %8.1f %6s  %s%s\n", x.what.c_str(), x.median, x.min, x.max,
                x.goal > 0 ? std::to_string(static_cast<int>(x.goal)).c_str() : "-", x.note.c_str(),
                x.goal > 0 && x.median > x.goal ? "  ABOVE GOAL" : "");
  return 0;
}
