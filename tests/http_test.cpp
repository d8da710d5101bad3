// The HTTP API in-process against real PostgreSQL (the test cluster), with
// real clients: an asynchronous Beast client with timeouts, curl, raw sockets
// for the slow client, and DCMTK's storescu feeding an in-process DICOM node
// so that /metrics counters move as instances arrive.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "app/http/auth.h"
#include "app/http_api.h"
#include "db/instance_index.h"
#include "db/test_cluster.h"
#include "ingest/instance_ingest.h"
#include "metrics/registry.h"
#include "scp/dicom_server.h"
#include "scp/server_metrics.h"
#include "storage/file_storage.h"
#include "tests/service_harness.h"
#include "tests/test_pki.h"

namespace fs = std::filesystem;
namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using json = nlohmann::json;
using firstread::app::HttpApi;
using firstread::app::HttpApiOptions;
using firstread::db::testing::TestCluster;
using firstread::testing::connect_loopback;

namespace {

const std::string kCtSmall = "/usr/lib/python3/dist-packages/pydicom/data/test_files/CT_small.dcm";

// ---------------------------------------------------------------------------
// Clients.

struct Reply {
  int status = 0;  // 0: no answer (timeout or connection error, see error)
  std::string body;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string error;
  json body_json() const { return json::parse(body); }
  std::string header(const std::string& name) const {
    auto it = headers.find(name);
    return it == headers.end() ? "" : it->second;
  }
};

// One request on a fresh connection, with a deadline: a server that blocks
// makes this return status 0 instead of hanging the test.
Reply http_request(int port, http::verb method, const std::string& target, const std::string& token = "",
                   std::chrono::milliseconds timeout = std::chrono::seconds(15)) {
  net::io_context io;
  beast::tcp_stream stream(io);
  beast::flat_buffer buffer;
  http::request<http::string_body> request{method, target, 11};
  request.set(http::field::host, "127.0.0.1");
  request.set(http::field::connection, "close");
  if (!token.empty()) request.set(http::field::authorization, "Bearer " + token);
  request.prepare_payload();
  http::response_parser<http::string_body> parser;
  parser.body_limit(256 * 1024 * 1024);
  if (method == http::verb::head) parser.skip(true);
  Reply reply;
  stream.expires_after(timeout);
  stream.async_connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), static_cast<unsigned short>(port)),
                       [&](beast::error_code ec) {
                         if (ec) {
                           reply.error = "connect: " + ec.message();
                           return;
                         }
                         http::async_write(stream, request, [&](beast::error_code ec, size_t) {
                           if (ec) {
                             reply.error = "write: " + ec.message();
                             return;
                           }
                           http::async_read(stream, buffer, parser, [&](beast::error_code ec, size_t) {
                             if (ec) {
                               reply.error = "read: " + ec.message();
                               return;
                             }
                             auto& response = parser.get();
                             reply.status = static_cast<int>(response.result_int());
                             reply.body = response.body();
                             for (const auto& field : response) {
                               std::string name(field.name_string());
                               for (auto& c : name) c = static_cast<char>(std::tolower(c));
                               reply.headers[name] = std::string(field.value());
                             }
                           });
                         });
                       });
  io.run();
  return reply;
}

Reply get(int port, const std::string& target, const std::string& token = "") {
  return http_request(port, http::verb::get, target, token);
}

std::string shell_quote(const std::string& s) { return "'" + s + "'"; }

// Runs a command and returns its standard output.
std::string run_command(const std::string& command, int* exit_code = nullptr) {
  std::string output;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return output;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, pipe)) > 0) output.append(buf, n);
  const int status = pclose(pipe);
  if (exit_code) *exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return output;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// Reads until the peer closes or `seconds` pass; returns what came.
std::string read_until_close(int fd, int seconds, bool* closed) {
  timeval tv{seconds, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  std::string data;
  char buf[4096];
  *closed = false;
  for (;;) {
    const ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n == 0) {
      *closed = true;
      break;
    }
    if (n < 0) break;  // timeout
    data.append(buf, static_cast<size_t>(n));
  }
  return data;
}

// ---------------------------------------------------------------------------
// A Prometheus text-format parser (format 0.0.4): checks the syntax of every
// line, that each sample belongs to a family declared by # TYPE before it, and
// that histograms are cumulative with +Inf == _count. Returns the samples by
// "name{label="value",...}" with labels sorted by name.

struct Metrics {
  std::map<std::string, double> samples;
  std::map<std::string, std::string> types;  // family -> type
  std::vector<std::string> errors;
  double value(const std::string& key) const {
    auto it = samples.find(key);
    return it == samples.end() ? std::nan("") : it->second;
  }
  bool has(const std::string& key) const { return samples.count(key) > 0; }
};

bool parse_prometheus_value(const std::string& text, double* out) {
  if (text == "+Inf" || text == "Inf") return *out = INFINITY, true;
  if (text == "-Inf") return *out = -INFINITY, true;
  if (text == "NaN") return *out = NAN, true;
  static const std::regex number(R"([-+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?)");
  if (!std::regex_match(text, number)) return false;
  *out = std::stod(text);
  return true;
}

Metrics parse_prometheus(const std::string& text) {
  Metrics m;
  static const std::regex metric_name("[a-zA-Z_:][a-zA-Z0-9_:]*");
  static const std::regex label_name("[a-zA-Z_][a-zA-Z0-9_]*");
  std::set<std::string> helped;
  // histogram family -> label set without le -> (le -> count), plus _count
  std::map<std::string, std::map<std::string, std::vector<std::pair<double, double>>>> buckets;
  std::map<std::string, double> histogram_counts;
  std::istringstream lines(text);
  int line_number = 0;
  for (std::string line; std::getline(lines, line);) {
    ++line_number;
    const std::string where = "line " + std::to_string(line_number) + " '" + line + "': ";
    if (line.empty()) continue;
    if (line[0] == '#') {
      std::istringstream words(line.substr(1));
      std::string keyword, name;
      words >> keyword >> name;
      if (keyword == "HELP") {
        if (!std::regex_match(name, metric_name)) m.errors.push_back(where + "bad metric name in HELP");
        if (!helped.insert(name).second) m.errors.push_back(where + "second HELP for " + name);
      } else if (keyword == "TYPE") {
        std::string type;
        words >> type;
        if (!std::regex_match(name, metric_name)) m.errors.push_back(where + "bad metric name in TYPE");
        if (type != "counter" && type != "gauge" && type != "histogram" && type != "summary" && type != "untyped")
          m.errors.push_back(where + "unknown type " + type);
        if (m.types.count(name)) m.errors.push_back(where + "second TYPE for " + name);
        m.types[name] = type;
      }
      continue;  // other comments are allowed
    }
    // name{labels} value [timestamp]
    size_t pos = 0;
    while (pos < line.size() && line[pos] != '{' && line[pos] != ' ') ++pos;
    const std::string name = line.substr(0, pos);
    if (!std::regex_match(name, metric_name)) {
      m.errors.push_back(where + "bad metric name");
      continue;
    }
    std::map<std::string, std::string> labels;
    if (pos < line.size() && line[pos] == '{') {
      ++pos;
      bool ok = true;
      while (ok && pos < line.size() && line[pos] != '}') {
        size_t eq = line.find('=', pos);
        if (eq == std::string::npos) {
          ok = false;
          break;
        }
        const std::string label = line.substr(pos, eq - pos);
        if (!std::regex_match(label, label_name) || eq + 1 >= line.size() || line[eq + 1] != '"') {
          ok = false;
          break;
        }
        std::string value;
        pos = eq + 2;
        bool terminated = false;
        while (pos < line.size()) {
          char c = line[pos++];
          if (c == '\\') {
            if (pos >= line.size()) break;
            char e = line[pos++];
            if (e == 'n') value += '\n';
            else if (e == '\\' || e == '"') value += e;
            else {
              ok = false;
              break;
            }
          } else if (c == '"') {
            terminated = true;
            break;
          } else {
            value += c;
          }
        }
        if (!terminated) ok = false;
        if (labels.count(label)) ok = false;
        labels[label] = value;
        if (pos < line.size() && line[pos] == ',') ++pos;
      }
      if (!ok || pos >= line.size() || line[pos] != '}') {
        m.errors.push_back(where + "bad label set");
        continue;
      }
      ++pos;
    }
    if (pos >= line.size() || line[pos] != ' ') {
      m.errors.push_back(where + "no value");
      continue;
    }
    std::istringstream rest(line.substr(pos + 1));
    std::string value_text, timestamp;
    rest >> value_text >> timestamp;
    double value = 0;
    if (!parse_prometheus_value(value_text, &value)) {
      m.errors.push_back(where + "bad value '" + value_text + "'");
      continue;
    }
    // The family: the name itself, or for histograms the name without its suffix.
    std::string family = name;
    for (const std::string suffix : {"_bucket", "_sum", "_count"}) {
      if (name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0) {
        const std::string base = name.substr(0, name.size() - suffix.size());
        if (m.types.count(base) && m.types[base] == "histogram") family = base;
      }
    }
    if (!m.types.count(family)) m.errors.push_back(where + "sample before its # TYPE line");
    std::string key = name + "{";
    std::string key_without_le = "{";
    bool first = true, first_without_le = true;
    for (const auto& [k, v] : labels) {
      key += (first ? "" : ",") + k + "=\"" + v + "\"";
      first = false;
      if (k != "le") {
        key_without_le += (first_without_le ? "" : ",") + k + "=\"" + v + "\"";
        first_without_le = false;
      }
    }
    key += "}";
    key_without_le += "}";
    if (m.samples.count(key)) m.errors.push_back(where + "duplicate sample");
    m.samples[key] = value;
    if (family != name && m.types[family] == "histogram") {
      if (name == family + "_bucket") {
        double le = 0;
        if (!labels.count("le") || !parse_prometheus_value(labels["le"], &le))
          m.errors.push_back(where + "bucket without a numeric le");
        else
          buckets[family][key_without_le].emplace_back(le, value);
      } else if (name == family + "_count") {
        histogram_counts[family + key_without_le] = value;
      }
    }
  }
  for (const auto& [family, series] : buckets) {
    for (const auto& [labels, list] : series) {
      for (size_t i = 1; i < list.size(); ++i) {
        if (list[i].first <= list[i - 1].first) m.errors.push_back(family + labels + ": le not increasing");
        if (list[i].second < list[i - 1].second) m.errors.push_back(family + labels + ": buckets not cumulative");
      }
      if (list.empty() || !std::isinf(list.back().first)) {
        m.errors.push_back(family + labels + ": no +Inf bucket");
      } else if (!histogram_counts.count(family + labels) ||
                 histogram_counts[family + labels] != list.back().second) {
        m.errors.push_back(family + labels + ": +Inf bucket differs from _count");
      }
    }
  }
  return m;
}

// ---------------------------------------------------------------------------
// The fixture: the test cluster emptied, a private storage root, the server.

class HttpApiTest : public ::testing::Test {
 protected:
  void SetUp() override {
    TestCluster::get().truncate_all();
    dir_ = firstread::db::testing::make_temp_dir("firstread-http-test-");
    storage_ = std::make_unique<firstread::storage::FileStorage>(dir_ + "/var", false);
  }
  void TearDown() override {
    if (api_) api_->stop();
    api_.reset();
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  firstread::db::ConnectionPool& pool() { return TestCluster::get().pool(); }

  void start_server(const std::string& token = "", std::function<std::string()> models_status = {},
                    int read_timeout_seconds = 30) {
    HttpApiOptions options;
    options.token = token;
    options.read_timeout_seconds = read_timeout_seconds;
    start_server_with(options, std::move(models_status));
  }

  // options.listen is set here (a free loopback port).
  void start_server_with(HttpApiOptions options, std::function<std::string()> models_status = {}) {
    options.listen = "127.0.0.1:0";
    api_ = std::make_unique<HttpApi>(options, pool(), *storage_, std::move(models_status));
    api_->start();
    port_ = api_->port();
    ASSERT_GT(port_, 0);
  }

  // Records an instance row (and its study) as ingest does. With a file, the
  // DICOM file is copied under storage and its path recorded.
  void add_instance(const std::string& study, const std::string& series, const std::string& sop,
                    const std::string& modality, const std::string& source_file = "", int frames = 1) {
    firstread::db::InstanceRecord r;
    r.sop_instance_uid = sop;
    r.series_instance_uid = series;
    r.study_uid = study;
    r.sop_class_uid = "1.2.840.10008.5.1.4.1.1.2";
    r.transfer_syntax_uid = "1.2.840.10008.1.2.1";
    r.modality = modality;
    r.rows = 128;
    r.columns = 128;
    r.frames = frames;
    r.file_path = firstread::storage::FileStorage::instance_path(study, series, sop);
    r.calling_ae = "TESTSCU";
    r.patient_id = "PID-" + study.substr(study.size() - 3);
    r.patient_name = "Test^Patient";
    r.accession_number = "ACC" + study.substr(study.size() - 3);
    r.study_date = "20261125";
    if (!source_file.empty()) {
      r.file_size = static_cast<int64_t>(storage_->write_durably(
          r.file_path, [&](const std::string& temp) { fs::copy_file(source_file, temp); }));
    } else {
      r.file_size = 1000;
    }
    firstread::db::InstanceIndex index(pool());
    index.record(r);
  }

  // Marks a study assembled with one job in `state`; returns the job id.
  long long add_job(const std::string& study, const std::string& state, const std::string& error = "") {
    return pool().transact([&](pqxx::work& txn) {
      txn.exec_params("UPDATE firstread.studies SET assembly_pending = false WHERE study_uid = $1", study);
      auto r = txn.exec_params1(
          "INSERT INTO firstread.jobs (study_uid, generation, route, model, state, attempts, max_attempts, error, "
          "started_at, finished_at) VALUES ($1, 0, 'default', 'tiny', $2, 1, 3, NULLIF($3, ''), "
          "now() - interval '3 seconds', CASE WHEN $2 IN ('done', 'dead') THEN now() END) RETURNING job_id",
          study, state, error);
      return r[0].as<long long>();
    });
  }

  // A report with an SR file (the bytes given) for a done job; returns report_id.
  long long add_report(const std::string& study, long long job_id, const std::string& route, const std::string& text,
                       const std::string& sr_uid, const std::string& sr_bytes, double latency_ms) {
    const std::string sr_path = "reports/" + sr_uid + ".dcm";
    storage_->write_durably(sr_path, [&](const std::string& temp) {
      std::ofstream out(temp, std::ios::binary);
      out << sr_bytes;
    });
    return pool().transact([&](pqxx::work& txn) {
      auto r = txn.exec_params1(
          "INSERT INTO firstread.reports (study_uid, job_id, route, model, model_version, language, text, "
          "sr_sop_instance_uid, sr_series_instance_uid, sr_file_path, latency_ms, decode_ms, inference_ms, sr_ms, "
          "db_ms) VALUES ($1, $2, $3, 'tiny', 'v12-abc', 'en', $4, $5, $5::text || '.1', $6, $7, 20, 900, 15, 4) "
          "RETURNING report_id",
          study, job_id, route, text, sr_uid, sr_path, latency_ms);
      return r[0].as<long long>();
    });
  }

  std::string dir_;
  std::unique_ptr<firstread::storage::FileStorage> storage_;
  std::unique_ptr<HttpApi> api_;
  int port_ = 0;
};

void expect_json_error(const Reply& r, int status, const std::string& message_part = "") {
  EXPECT_EQ(r.status, status) << r.body << r.error;
  EXPECT_NE(r.header("content-type").find("application/json"), std::string::npos) << r.header("content-type");
  json body;
  ASSERT_NO_THROW(body = r.body_json()) << r.body;
  ASSERT_TRUE(body.contains("error") && body["error"].is_string()) << r.body;
  if (!message_part.empty())
    EXPECT_NE(body["error"].get<std::string>().find(message_part), std::string::npos) << r.body;
}

// ---------------------------------------------------------------------------

TEST_F(HttpApiTest, HealthzReadyzAndThePage) {
  std::string models_problem;
  start_server("", [&] { return models_problem; });
  auto health = get(port_, "/healthz");
  EXPECT_EQ(health.status, 200);
  EXPECT_EQ(health.body_json()["status"], "ok");

  auto ready = get(port_, "/readyz");
  EXPECT_EQ(ready.status, 200) << ready.body;
  EXPECT_EQ(ready.body_json()["ready"], true);
  EXPECT_EQ(ready.body_json()["checks"]["database"], "ok");
  EXPECT_EQ(ready.body_json()["checks"]["storage"], "ok");
  EXPECT_EQ(ready.body_json()["checks"]["models"], "ok");

  models_problem = "model tiny: not loaded yet";
  ready = get(port_, "/readyz");
  EXPECT_EQ(ready.status, 503) << ready.body;
  EXPECT_EQ(ready.body_json()["ready"], false);
  EXPECT_EQ(ready.body_json()["checks"]["models"], models_problem);
  models_problem.clear();

  fs::remove_all(storage_->root() + "/tmp");  // storage no longer writable where we write
  ready = get(port_, "/readyz");
  EXPECT_EQ(ready.status, 503) << ready.body;
  EXPECT_NE(ready.body_json()["checks"]["storage"].get<std::string>().find("cannot create"), std::string::npos);
  fs::create_directories(storage_->root() + "/tmp");
  EXPECT_EQ(get(port_, "/readyz").status, 200);

  auto page = get(port_, "/");
  EXPECT_EQ(page.status, 200);
  EXPECT_NE(page.header("content-type").find("text/html"), std::string::npos);
  EXPECT_NE(page.body.find("<title>firstread"), std::string::npos);
  EXPECT_NE(page.body.find("/web/app.js"), std::string::npos);
  auto script = get(port_, "/web/app.js");
  EXPECT_EQ(script.status, 200);
  EXPECT_NE(script.header("content-type").find("javascript"), std::string::npos);
  EXPECT_NE(script.body.find("/api/v1/studies"), std::string::npos);
  EXPECT_EQ(get(port_, "/web/style.css").status, 200);
  expect_json_error(get(port_, "/web/secrets.txt"), 404);

  // HEAD: headers only.
  auto head = http_request(port_, http::verb::head, "/healthz");
  EXPECT_EQ(head.status, 200);
  EXPECT_TRUE(head.body.empty());
}

TEST_F(HttpApiTest, StudiesPaginateWithAStableOpaqueCursor) {
  // 7 studies: 4 CT, 3 MR; three share first_received_at (ties by study_uid).
  std::vector<std::string> studies;
  for (int i = 1; i <= 7; ++i) {
    const std::string study = "1.2.826.0.1.3680043.10.1." + std::to_string(100 + i);
    studies.push_back(study);
    add_instance(study, study + ".1", study + ".1.1", i <= 4 ? "CT" : "MR");
  }
  pool().transact([&](pqxx::work& txn) {
    txn.exec("UPDATE firstread.studies SET first_received_at = '2026-11-20T10:00:00Z' WHERE study_uid IN ('" +
             studies[1] + "', '" + studies[2] + "', '" + studies[3] + "')");
  });
  start_server();

  auto expected = pool().transact([&](pqxx::work& txn) {
    std::vector<std::string> order;
    for (const auto& row : txn.exec("SELECT study_uid FROM api.studies ORDER BY first_received_at DESC, study_uid DESC"))
      order.push_back(row[0].c_str());
    return order;
  });
  ASSERT_EQ(expected.size(), 7u);

  std::vector<std::string> seen;
  std::string cursor;
  int pages = 0;
  for (;;) {
    auto r = get(port_, "/api/v1/studies?limit=3" + (cursor.empty() ? "" : "&cursor=" + cursor));
    ASSERT_EQ(r.status, 200) << r.body;
    auto body = r.body_json();
    ++pages;
    for (const auto& s : body["studies"]) {
      seen.push_back(s["study_uid"]);
      EXPECT_TRUE(s.contains("state") && s.contains("modalities") && s.contains("instance_count") &&
                  s.contains("first_received_at") && s.contains("patient_id"))
          << s.dump();
    }
    if (pages == 1) {
      // A study arriving while a client pages must not shift later pages.
      add_instance("1.2.826.0.1.3680043.10.1.999", "1.2.826.0.1.3680043.10.1.999.1",
                   "1.2.826.0.1.3680043.10.1.999.1.1", "CT");
    }
    if (body["next_cursor"].is_null()) break;
    cursor = body["next_cursor"];
    ASSERT_LT(pages, 10);
  }
  EXPECT_EQ(pages, 3);
  EXPECT_EQ(seen, expected);

  // Filters, also across pages.
  auto ct = get(port_, "/api/v1/studies?modality=CT&limit=2");
  ASSERT_EQ(ct.status, 200) << ct.body;
  EXPECT_EQ(ct.body_json()["studies"].size(), 2u);
  auto ct2 = get(port_, "/api/v1/studies?modality=CT&limit=2&cursor=" + ct.body_json()["next_cursor"].get<std::string>());
  ASSERT_EQ(ct2.status, 200) << ct2.body;
  auto ct3 = get(port_, "/api/v1/studies?modality=CT&limit=2&cursor=" + ct2.body_json()["next_cursor"].get<std::string>());
  ASSERT_EQ(ct3.status, 200) << ct3.body;
  EXPECT_EQ(ct2.body_json()["studies"].size() + ct3.body_json()["studies"].size(), 3u);  // 5 CT studies in all
  EXPECT_TRUE(ct3.body_json()["next_cursor"].is_null());
  for (const Reply& page : std::vector<Reply>{ct, ct2, ct3}) {
    const json body = page.body_json();
    for (const auto& s : body["studies"]) EXPECT_EQ(s["modalities"], json::array({"CT"}));
  }

  EXPECT_EQ(get(port_, "/api/v1/studies?modality=MR").body_json()["studies"].size(), 3u);
  EXPECT_EQ(get(port_, "/api/v1/studies?state=receiving").body_json()["studies"].size(), 8u);
  add_job(studies[0], "dead", "decode failed");
  auto failed = get(port_, "/api/v1/studies?state=failed").body_json()["studies"];
  ASSERT_EQ(failed.size(), 1u);
  EXPECT_EQ(failed[0]["study_uid"], studies[0]);
  EXPECT_EQ(get(port_, "/api/v1/studies?since=2099-01-01").body_json()["studies"].size(), 0u);
  EXPECT_EQ(get(port_, "/api/v1/studies?since=2020-01-01T00:00:00Z").body_json()["studies"].size(), 8u);
  EXPECT_EQ(get(port_, "/api/v1/studies?since=2020-01-01T00:00:00-05:00&limit=500").body_json()["studies"].size(), 8u);
  EXPECT_EQ(get(port_, "/api/v1/studies").body_json()["studies"].size(), 8u);
}

TEST_F(HttpApiTest, BadParametersAre400) {
  add_instance("1.2.3.4", "1.2.3.4.1", "1.2.3.4.1.1", "CT", kCtSmall);
  start_server();
  for (const std::string& target : std::vector<std::string>{"/api/v1/studies?limit=0", "/api/v1/studies?limit=501", "/api/v1/studies?limit=ten", "/api/v1/studies?limit=-1",
        "/api/v1/studies?state=done", "/api/v1/studies?modality=c%27t", "/api/v1/studies?modality=ct",
        "/api/v1/studies?since=yesterday", "/api/v1/studies?since=2026-13-45", "/api/v1/studies?since=2026-02-30T10:00",
        "/api/v1/studies?cursor=not-a-cursor!", "/api/v1/studies?cursor=djE6MTIzOmFiYw",  // v1:123:abc
        "/api/v1/studies?colour=blue", "/api/v1/studies/1.2.abc", "/api/v1/studies/..%2F..%2Fetc",
        "/api/v1/studies/1.2.3.4%27%3B%20DROP%20TABLE%20x", "/api/v1/studies/" + std::string(65, '1'),
        "/api/v1/studies/1.2.x/report", "/api/v1/studies/1.2.3.4/report?route=a%20b", "/api/v1/reports/abc/sr",
        "/api/v1/reports/0/sr", "/api/v1/reports/99999999999999999999/sr", "/api/v1/jobs?state=finished",
        "/api/v1/jobs?limit=0", "/api/v1/jobs?study=x", "/api/v1/instances/1.2.3.4.1.1/png?frame=-1",
        "/api/v1/instances/1.2.3.4.1.1/png?frame=one", "/api/v1/instances/1.2.3.4.1.1/png?frame=1",
        "/api/v1/instances/a.b/png", "/api/v1/studies?limit=%zz"}) {
    SCOPED_TRACE(target);
    expect_json_error(get(port_, target), 400);
  }
  expect_json_error(http_request(port_, http::verb::post, "/api/v1/studies/1.2.a/reprocess"), 400);
  EXPECT_EQ(pool().transact([](pqxx::work& txn) { return txn.exec1("SELECT count(*) FROM api.studies")[0].as<int>(); }),
            1);

  // Not HTTP at all: 400 and the connection closed.
  int fd = connect_loopback(port_);
  ASSERT_GE(fd, 0);
  const std::string garbage = "\x16\x03\x01 hello, this is not HTTP\r\n\r\n";
  ASSERT_EQ(send(fd, garbage.data(), garbage.size(), 0), static_cast<ssize_t>(garbage.size()));
  bool closed = false;
  const std::string answer = read_until_close(fd, 5, &closed);
  close(fd);
  EXPECT_TRUE(closed);
  EXPECT_EQ(answer.rfind("HTTP/1.1 400", 0), 0u) << answer;
}

TEST_F(HttpApiTest, UnknownThingsAre404AndWrongMethods405) {
  add_instance("1.2.3.5", "1.2.3.5.1", "1.2.3.5.1.1", "CT");
  start_server();
  expect_json_error(get(port_, "/api/v1/studies/1.2.3.999"), 404, "unknown study");
  expect_json_error(get(port_, "/api/v1/studies/1.2.3.999/report"), 404, "unknown study");
  expect_json_error(get(port_, "/api/v1/studies/1.2.3.5/report"), 404, "no report yet");
  expect_json_error(http_request(port_, http::verb::post, "/api/v1/studies/1.2.3.999/reprocess"), 404, "unknown study");
  expect_json_error(get(port_, "/api/v1/reports/12345/sr"), 404, "unknown report");
  expect_json_error(get(port_, "/api/v1/instances/1.2.3.999/png"), 404, "unknown instance");
  expect_json_error(get(port_, "/nope"), 404, "no such route");
  expect_json_error(get(port_, "/api/v2/studies"), 404);
  expect_json_error(get(port_, "/api/v1/studies/1.2.3.5/report/extra"), 404);

  auto post_health = http_request(port_, http::verb::post, "/healthz");
  expect_json_error(post_health, 405);
  EXPECT_EQ(post_health.header("allow"), "GET, HEAD");
  expect_json_error(http_request(port_, http::verb::delete_, "/api/v1/studies"), 405);
  auto get_reprocess = get(port_, "/api/v1/studies/1.2.3.5/reprocess");
  expect_json_error(get_reprocess, 405);
  EXPECT_EQ(get_reprocess.header("allow"), "POST");
  expect_json_error(http_request(port_, http::verb::put, "/api/v1/studies/1.2.3.5"), 405);
}

TEST_F(HttpApiTest, BearerTokenIsRequiredWhenConfigured) {
  add_instance("1.2.3.6", "1.2.3.6.1", "1.2.3.6.1.1", "CT");
  start_server("s3cret-token");
  auto missing = get(port_, "/api/v1/studies");
  expect_json_error(missing, 401, "missing");
  EXPECT_NE(missing.header("www-authenticate").find("Bearer"), std::string::npos);
  expect_json_error(get(port_, "/api/v1/studies", "wrong-token"), 401, "unknown");
  expect_json_error(get(port_, "/api/v1/studies", "s3cret-toke"), 401);
  expect_json_error(get(port_, "/api/v1/studies", "s3cret-token-and-more"), 401);
  expect_json_error(get(port_, "/metrics"), 401);
  expect_json_error(get(port_, "/readyz"), 401);
  expect_json_error(get(port_, "/api/v1/jobs"), 401);
  expect_json_error(get(port_, "/api/v1/studies/1.2.3.6"), 401);
  expect_json_error(http_request(port_, http::verb::post, "/api/v1/studies/1.2.3.6/reprocess"), 401);
  expect_json_error(get(port_, "/api/v1/instances/1.2.3.6.1.1/png"), 401);
  expect_json_error(get(port_, "/no-such-route"), 401);  // no route map for strangers

  auto accepted = get(port_, "/api/v1/studies", "s3cret-token");
  EXPECT_EQ(accepted.status, 200) << accepted.body;
  EXPECT_EQ(accepted.body_json()["studies"].size(), 1u);
  EXPECT_EQ(get(port_, "/metrics", "s3cret-token").status, 200);
  EXPECT_EQ(get(port_, "/readyz", "s3cret-token").status, 200);
  EXPECT_EQ(get(port_, "/healthz").status, 200);  // liveness needs no token
  EXPECT_EQ(get(port_, "/").status, 200);         // the page shell holds no data; it asks for the token

  // curl, a real client, with the header spelled out.
  int exit_code = -1;
  const std::string base = "curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:" + std::to_string(port_);
  EXPECT_EQ(run_command(base + "/api/v1/jobs", &exit_code), "401");
  EXPECT_EQ(run_command(base + "/api/v1/jobs -H 'Authorization: Bearer s3cret-token'", &exit_code), "200");
  EXPECT_EQ(run_command(base + "/api/v1/jobs -H 'Authorization: Basic czNjcmV0LXRva2Vu'", &exit_code), "401");
}

TEST_F(HttpApiTest, StudyReportSrJobsAndReprocess) {
  const std::string study = "1.2.826.0.1.3680043.10.2.1";
  add_instance(study, study + ".1", study + ".1.1", "CR", kCtSmall);
  add_instance(study, study + ".1", study + ".1.2", "CR", kCtSmall);
  const long long job1 = add_job(study, "done");
  const std::string sr_bytes_1 = std::string("DICM-first-sr\0\x01\x02", 16);
  const long long report1 = add_report(study, job1, "default", "old text", "1.2.826.0.1.3680043.10.2.900", sr_bytes_1, 4200);
  const long long job2 = add_job(study, "done");
  std::string sr_bytes_2(300000, '\0');
  for (size_t i = 0; i < sr_bytes_2.size(); ++i) sr_bytes_2[i] = static_cast<char>((i * 7919) & 0xFF);
  const long long report2 =
      add_report(study, job2, "chest", "Findings: nodule in the right upper lobe.\n肺结节", "1.2.826.0.1.3680043.10.2.901",
                 sr_bytes_2, 6100);
  pool().transact([&](pqxx::work& txn) {
    txn.exec_params("UPDATE firstread.reports SET supersedes_report_id = $1 WHERE report_id = $2", report1, report2);
    txn.exec_params(
        "INSERT INTO firstread.findings (report_id, label, text, sop_instance_uid, frame, x1, y1, x2, y2, confidence) "
        "VALUES ($1, 'nodule', 'right upper lobe nodule', $2, 0, 10.5, 20, 60.25, 70, 0.87), "
        "($1, 'effusion', NULL, $3, 0, 0, 64, 127, 127, NULL)",
        report2, study + ".1.1", study + ".1.2");
    txn.exec_params(
        "INSERT INTO firstread.exports (report_id, destination, ae_title, host, port, state, attempts, max_attempts, "
        "last_error, sent_at) VALUES ($1, 'pacs', 'PACS', '127.0.0.1', 104, 'sent', 1, 10, NULL, now()), "
        "($1, 'archive', 'ARCH', '127.0.0.1', 105, 'sending', 3, 10, 'association rejected', NULL)",
        report2);
  });
  const long long dead_job = add_job(study, "dead", "pixel data shorter than Rows x Columns promise");
  start_server();

  auto detail = get(port_, "/api/v1/studies/" + study);
  ASSERT_EQ(detail.status, 200) << detail.body;
  auto d = detail.body_json();
  EXPECT_EQ(d["study"]["study_uid"], study);
  EXPECT_EQ(d["study"]["instance_count"], 2);
  EXPECT_EQ(d["study"]["state"], "failed");
  EXPECT_EQ(d["instances"].size(), 2u);
  EXPECT_EQ(d["instances"][0]["rows"], 128);
  EXPECT_EQ(d["jobs"].size(), 3u);
  EXPECT_EQ(d["reports"].size(), 2u);
  EXPECT_EQ(d["reports"][1]["sr_sop_instance_uid"], "1.2.826.0.1.3680043.10.2.901");

  auto latest = get(port_, "/api/v1/studies/" + study + "/report");
  ASSERT_EQ(latest.status, 200) << latest.body;
  auto r = latest.body_json();
  EXPECT_EQ(r["report_id"], report2);
  EXPECT_EQ(r["text"], "Findings: nodule in the right upper lobe.\n肺结节");
  EXPECT_EQ(r["language"], "en");
  EXPECT_EQ(r["model"], "tiny");
  EXPECT_EQ(r["model_version"], "v12-abc");
  EXPECT_EQ(r["route"], "chest");
  EXPECT_EQ(r["sr_sop_instance_uid"], "1.2.826.0.1.3680043.10.2.901");
  EXPECT_EQ(r["supersedes_report_id"], report1);
  EXPECT_EQ(r["sr_url"], "/api/v1/reports/" + std::to_string(report2) + "/sr");
  EXPECT_FALSE(r.contains("sr_file_path"));
  EXPECT_DOUBLE_EQ(r["latency_ms"].get<double>(), 6100);
  ASSERT_EQ(r["findings"].size(), 2u);
  EXPECT_EQ(r["findings"][0]["label"], "nodule");
  EXPECT_EQ(r["findings"][0]["sop_instance_uid"], study + ".1.1");
  EXPECT_EQ(r["findings"][0]["frame"], 0);
  EXPECT_DOUBLE_EQ(r["findings"][0]["x1"].get<double>(), 10.5);
  EXPECT_DOUBLE_EQ(r["findings"][0]["y1"].get<double>(), 20);
  EXPECT_DOUBLE_EQ(r["findings"][0]["x2"].get<double>(), 60.25);
  EXPECT_DOUBLE_EQ(r["findings"][0]["y2"].get<double>(), 70);
  EXPECT_DOUBLE_EQ(r["findings"][0]["confidence"].get<double>(), 0.87);
  EXPECT_TRUE(r["findings"][1]["confidence"].is_null());
  ASSERT_EQ(r["exports"].size(), 2u);
  EXPECT_EQ(r["exports"][0]["destination"], "pacs");
  EXPECT_EQ(r["exports"][0]["state"], "sent");
  EXPECT_EQ(r["exports"][1]["state"], "pending");  // 'sending' is internal
  EXPECT_EQ(r["exports"][1]["last_error"], "association rejected");

  auto by_route = get(port_, "/api/v1/studies/" + study + "/report?route=default");
  ASSERT_EQ(by_route.status, 200);
  EXPECT_EQ(by_route.body_json()["report_id"], report1);
  expect_json_error(get(port_, "/api/v1/studies/" + study + "/report?route=spine"), 404, "no report yet");

  // The SR, byte for byte, with the Beast client and with curl.
  auto sr = get(port_, r["sr_url"].get<std::string>());
  ASSERT_EQ(sr.status, 200);
  EXPECT_EQ(sr.header("content-type"), "application/dicom");
  EXPECT_EQ(sr.body, sr_bytes_2);
  const std::string downloaded = dir_ + "/downloaded.dcm";
  int exit_code = -1;
  const std::string code = run_command("curl -s -o " + shell_quote(downloaded) + " -w '%{http_code}' http://127.0.0.1:" +
                                           std::to_string(port_) + "/api/v1/reports/" + std::to_string(report1) + "/sr",
                                       &exit_code);
  EXPECT_EQ(code, "200");
  EXPECT_EQ(read_file(downloaded), sr_bytes_1);
  // An SR row whose file is gone is a server-side fault, said as such.
  fs::remove(storage_->absolute("reports/1.2.826.0.1.3680043.10.2.900.dcm"));
  expect_json_error(get(port_, "/api/v1/reports/" + std::to_string(report1) + "/sr"), 500, "cannot open SR file");

  // Jobs.
  auto jobs = get(port_, "/api/v1/jobs");
  ASSERT_EQ(jobs.status, 200) << jobs.body;
  EXPECT_EQ(jobs.body_json()["jobs"].size(), 3u);
  EXPECT_EQ(jobs.body_json()["jobs"][0]["job_id"], dead_job);  // newest first
  auto dead = get(port_, "/api/v1/jobs?state=dead").body_json()["jobs"];
  ASSERT_EQ(dead.size(), 1u);
  EXPECT_EQ(dead[0]["error"], "pixel data shorter than Rows x Columns promise");
  EXPECT_EQ(dead[0]["study_uid"], study);
  EXPECT_EQ(get(port_, "/api/v1/jobs?state=done&limit=1").body_json()["jobs"].size(), 1u);
  EXPECT_EQ(get(port_, "/api/v1/jobs?study=1.2.3").body_json()["jobs"].size(), 0u);
  EXPECT_EQ(get(port_, "/api/v1/jobs?study=" + study + "&state=done").body_json()["jobs"].size(), 2u);

  // Reprocess: the study is assembled again (receiving until the next pass).
  auto rerun = http_request(port_, http::verb::post, "/api/v1/studies/" + study + "/reprocess");
  EXPECT_EQ(rerun.status, 202) << rerun.body;
  EXPECT_EQ(rerun.body_json()["study_uid"], study);
  EXPECT_EQ(get(port_, "/api/v1/studies/" + study).body_json()["study"]["state"], "receiving");
}

TEST_F(HttpApiTest, InstanceFramesRenderAsPng) {
  add_instance("1.2.3.7", "1.2.3.7.1", "1.2.3.7.1.1", "CT", kCtSmall);
  start_server();
  auto png = get(port_, "/api/v1/instances/1.2.3.7.1.1/png");
  ASSERT_EQ(png.status, 200) << png.body;
  EXPECT_EQ(png.header("content-type"), "image/png");
  ASSERT_GT(png.body.size(), 33u);
  EXPECT_EQ(png.body.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  EXPECT_EQ(png.body.substr(12, 4), "IHDR");
  auto be32 = [&](size_t at) {
    const auto* b = reinterpret_cast<const unsigned char*>(png.body.data() + at);
    return (uint32_t(b[0]) << 24) | (uint32_t(b[1]) << 16) | (uint32_t(b[2]) << 8) | b[3];
  };
  EXPECT_EQ(be32(16), 128u);  // CT_small is 128 x 128: the source frame, not resized
  EXPECT_EQ(be32(20), 128u);
  EXPECT_EQ(png.body[24], 8);  // bit depth
  EXPECT_EQ(png.body[25], 2);  // RGB
  EXPECT_EQ(get(port_, "/api/v1/instances/1.2.3.7.1.1/png?frame=0").body, png.body);

  // A row whose file is not DICOM: 422 naming the instance.
  add_instance("1.2.3.8", "1.2.3.8.1", "1.2.3.8.1.1", "CT");
  storage_->write_durably(firstread::storage::FileStorage::instance_path("1.2.3.8", "1.2.3.8.1", "1.2.3.8.1.1"),
                          [](const std::string& temp) {
                            std::ofstream out(temp);
                            out << "not a DICOM file";
                          });
  expect_json_error(get(port_, "/api/v1/instances/1.2.3.8.1.1/png"), 422, "1.2.3.8.1.1");
}

TEST_F(HttpApiTest, SlowClientsDoNotBlockOthers) {
  add_instance("1.2.3.9", "1.2.3.9.1", "1.2.3.9.1.1", "CT");
  start_server("", {}, /*read_timeout_seconds=*/3);
  // More half-sent requests than there are I/O and handler threads together.
  std::vector<int> slow;
  for (int i = 0; i < 24; ++i) {
    int fd = connect_loopback(port_);
    ASSERT_GE(fd, 0);
    const std::string half = "GET /api/v1/studies HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";
    ASSERT_EQ(send(fd, half.data(), half.size(), 0), static_cast<ssize_t>(half.size()));
    slow.push_back(fd);
  }
  // A connection that never sends anything at all.
  int silent = connect_loopback(port_);
  ASSERT_GE(silent, 0);
  for (int i = 0; i < 10; ++i) {
    const auto started = std::chrono::steady_clock::now();
    auto r = http_request(port_, http::verb::get, i % 2 ? "/api/v1/studies" : "/healthz", "", std::chrono::seconds(2));
    const auto took = std::chrono::steady_clock::now() - started;
    EXPECT_EQ(r.status, 200) << r.error;
    EXPECT_LT(took, std::chrono::seconds(1)) << "request " << i << " waited behind the slow clients";
  }
  // The slow clients are dropped after the read timeout, without an answer.
  for (int fd : slow) {
    bool closed = false;
    const std::string got = read_until_close(fd, 10, &closed);
    EXPECT_TRUE(closed);
    EXPECT_TRUE(got.empty()) << got;
    close(fd);
  }
  bool closed = false;
  read_until_close(silent, 10, &closed);
  EXPECT_TRUE(closed);
  close(silent);
  EXPECT_EQ(get(port_, "/healthz").status, 200);

  // Keep-alive: several requests on one connection.
  int fd = connect_loopback(port_);
  const std::string two = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  ASSERT_EQ(send(fd, two.data(), two.size(), 0), static_cast<ssize_t>(two.size()));
  const std::string both = read_until_close(fd, 5, &closed);
  close(fd);
  EXPECT_TRUE(closed);
  size_t answers = 0;
  for (size_t at = both.find("HTTP/1.1 200"); at != std::string::npos; at = both.find("HTTP/1.1 200", at + 1)) ++answers;
  EXPECT_EQ(answers, 2u) << both;
}

TEST_F(HttpApiTest, LivenessAnswersWhileEveryHandlerIsBusy) {
  // /readyz blocks in the models callback until released: four of them occupy
  // every handler thread; /healthz and the page still answer at once.
  std::atomic<bool> release{false};
  std::atomic<int> blocked{0};
  start_server("", [&] {
    ++blocked;
    for (int i = 0; i < 200 && !release; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    return std::string();
  });
  std::vector<std::thread> busy;
  std::vector<int> busy_status(4, 0);
  for (int i = 0; i < 4; ++i)
    busy.emplace_back([&, i] { busy_status[i] = http_request(port_, http::verb::get, "/readyz").status; });
  for (int i = 0; i < 100 && blocked < 4; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(blocked.load(), 4);
  const auto started = std::chrono::steady_clock::now();
  EXPECT_EQ(http_request(port_, http::verb::get, "/healthz", "", std::chrono::seconds(2)).status, 200);
  EXPECT_EQ(http_request(port_, http::verb::get, "/", "", std::chrono::seconds(2)).status, 200);
  EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(1));
  release = true;
  for (auto& t : busy) t.join();
  for (int status : busy_status) EXPECT_EQ(status, 200);
}

// A free TCP port on loopback (bound, read, released).
int free_port() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

TEST_F(HttpApiTest, MetricsParseAsPrometheusTextAndMoveAsInstancesArrive) {
  // A real DICOM node in this process feeding the same counters the API reports.
  firstread::db::InstanceIndex index(pool());
  firstread::ingest::InstanceIngest sink(*storage_, index);
  firstread::scp::ServerOptions dicom_options;
  dicom_options.ae_title = "FIRSTREAD";
  dicom_options.port = free_port();
  firstread::scp::DicomServer dicom(dicom_options, sink);
  dicom.start();
  // The node publishes its counters into the process's metrics registry, as in serve.
  firstread::scp::ServerMetrics dicom_metrics(dicom);
  HttpApiOptions options;
  options.listen = "127.0.0.1:0";
  api_ = std::make_unique<HttpApi>(options, pool(), *storage_, [] { return std::string(); });
  api_->start();
  port_ = api_->port();

  // A report, and its job's completion observed as the pipeline observes it
  // (pipeline/study_processor.cpp; web_page_test checks that observation end to end).
  add_instance("1.2.3.10", "1.2.3.10.1", "1.2.3.10.1.1", "CT");
  add_report("1.2.3.10", add_job("1.2.3.10", "done"), "default", "text", "1.2.3.10.900", "sr", 7300);
  firstread::metrics::observe_job({"tiny", 3.0, 7.3, 0.020, 0.900, 0.015, 0.004});

  auto scrape = [&] {
    auto r = get(port_, "/metrics");
    EXPECT_EQ(r.status, 200);
    EXPECT_NE(r.header("content-type").find("text/plain; version=0.0.4"), std::string::npos);
    Metrics m = parse_prometheus(r.body);
    for (const auto& e : m.errors) ADD_FAILURE() << e;
    return m;
  };
  Metrics before = scrape();
  EXPECT_EQ(before.types["firstread_dicom_associations_total"], "counter");
  EXPECT_EQ(before.types["firstread_jobs"], "gauge");
  EXPECT_EQ(before.types["firstread_report_latency_seconds"], "histogram");
  EXPECT_EQ(before.value("firstread_database_up{}"), 1);
  for (const std::string state : {"queued", "running", "done", "failed", "dead"})
    EXPECT_TRUE(before.has("firstread_jobs{state=\"" + state + "\"}")) << state;
  for (const std::string state : {"pending", "sent", "failed"})
    EXPECT_TRUE(before.has("firstread_exports{state=\"" + state + "\"}")) << state;
  EXPECT_EQ(before.value("firstread_jobs{state=\"done\"}"), 1);
  EXPECT_EQ(before.value("firstread_report_latency_seconds_count{model=\"tiny\"}"), 1);
  EXPECT_DOUBLE_EQ(before.value("firstread_report_latency_seconds_sum{model=\"tiny\"}"), 7.3);
  EXPECT_EQ(before.value("firstread_report_latency_seconds_bucket{le=\"5\",model=\"tiny\"}"), 0);
  EXPECT_EQ(before.value("firstread_report_latency_seconds_bucket{le=\"10\",model=\"tiny\"}"), 1);
  EXPECT_EQ(before.value("firstread_report_inference_seconds_count{model=\"tiny\"}"), 1);
  EXPECT_EQ(before.value("firstread_job_duration_seconds_count{model=\"tiny\"}"), 1);
  EXPECT_EQ(before.value("firstread_stored_instances{}"), 1);
  EXPECT_EQ(before.value("firstread_dicom_instances_received_total{outcome=\"stored\"}"), 0);

  // Two instances by storescu (new UIDs each).
  std::string files;
  for (int i = 0; i < 2; ++i) {
    const std::string copy = dir_ + "/send" + std::to_string(i) + ".dcm";
    fs::copy_file(kCtSmall, copy);
    int rc = -1;
    run_command("dcmodify -nb -gst -gse -gin " + shell_quote(copy) + " 2>&1", &rc);
    ASSERT_EQ(rc, 0);
    files += " " + shell_quote(copy);
  }
  int rc = -1;
  const std::string sent = run_command("storescu -aec FIRSTREAD 127.0.0.1 " + std::to_string(dicom_options.port) + files + " 2>&1", &rc);
  ASSERT_EQ(rc, 0) << sent;

  Metrics after = scrape();
  EXPECT_EQ(after.value("firstread_dicom_instances_received_total{outcome=\"stored\"}"), 2);
  // scp::DicomServer does not count bytes_received yet: the series exists and never goes back.
  EXPECT_GE(after.value("firstread_dicom_received_bytes_total{}"), before.value("firstread_dicom_received_bytes_total{}"));
  EXPECT_GE(after.value("firstread_dicom_associations_total{outcome=\"accepted\"}"),
            before.value("firstread_dicom_associations_total{outcome=\"accepted\"}") + 1);
  EXPECT_EQ(after.value("firstread_stored_instances{}"), 3);
  EXPECT_GT(after.value("firstread_stored_instance_bytes{}"), before.value("firstread_stored_instance_bytes{}"));
  EXPECT_EQ(after.value("firstread_studies{state=\"receiving\"}"), 2);
  EXPECT_GT(after.value("firstread_http_requests_total{code=\"200\"}"),
            before.value("firstread_http_requests_total{code=\"200\"}"));

  // The instance that arrived over DICOM renders through the page's route.
  auto sop = pool().transact([](pqxx::work& txn) {
    return std::string(txn.exec1("SELECT sop_instance_uid FROM api.instances WHERE study_uid <> '1.2.3.10' LIMIT 1")[0].c_str());
  });
  auto png = get(port_, "/api/v1/instances/" + sop + "/png");
  EXPECT_EQ(png.status, 200) << png.body;

  // A refused association counts as refused.
  run_command("echoscu -aec WRONGAE 127.0.0.1 " + std::to_string(dicom_options.port) + " 2>&1");
  Metrics refused = scrape();
  EXPECT_EQ(refused.value("firstread_dicom_associations_total{outcome=\"refused\"}"),
            after.value("firstread_dicom_associations_total{outcome=\"refused\"}") + 1);

  api_->stop();
  api_.reset();
  dicom.stop();
}

TEST_F(HttpApiTest, OpenApiDocumentDescribesTheServedRoutes) {
  start_server("s3cret-token");
  auto doc = get(port_, "/api/v1/openapi.json");  // no data: no token needed
  ASSERT_EQ(doc.status, 200) << doc.body;
  const json d = doc.body_json();
  EXPECT_EQ(d["openapi"], "3.0.3");
  // Every documented GET route without path parameters answers (with the token) rather than 404/405.
  for (const auto& [path, ops] : d["paths"].items()) {
    if (!ops.contains("get") || path.find('{') != std::string::npos) continue;
    SCOPED_TRACE(path);
    const int status = get(port_, path, "s3cret-token").status;
    EXPECT_TRUE(status == 200 || status == 503) << status;
  }
  EXPECT_TRUE(d["paths"]["/api/v1/studies"]["get"].contains("security"));
  expect_json_error(get(port_, "/api/v1/studies"), 401);
}

// ---------------------------------------------------------------------------
// Roles, the audit log and HTTPS (issue 17).

namespace {

struct TestUser {
  std::string name, role, token;
};

std::vector<TestUser> make_users(std::vector<firstread::config::HttpUser>& config_users) {
  std::vector<TestUser> users = {{"vera", "viewer", ""}, {"otto", "operator", ""}, {"sam", "sender", ""},
                                 {"ada", "admin", ""}};
  for (auto& u : users) {
    u.token = firstread::app::http::new_token();
    config_users.push_back({u.name, u.role, firstread::app::http::hash_token(u.token)});
  }
  return users;
}

std::vector<json> audit_lines(const std::string& path) {
  std::vector<json> lines;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) lines.push_back(json::parse(line));
  return lines;
}

}  // namespace

TEST_F(HttpApiTest, EachRoleReachesItsRoutesAndIsRefusedTheOthers) {
  const std::string study = "1.2.826.0.1.3680043.10.17.1", sop = study + ".1.1";
  add_instance(study, study + ".1", sop, "CT", kCtSmall);
  const long long job = add_job(study, "done");
  const long long report = add_report(study, job, "default", "No finding.", study + ".900", "DICM-sr", 1000);
  HttpApiOptions options;
  const auto users = make_users(options.users);
  options.audit_log = dir_ + "/audit.log";
  start_server_with(options);

  const std::string report_sr = "/api/v1/reports/" + std::to_string(report) + "/sr";
  struct Case {
    http::verb method;
    std::string target;
    // expected status for viewer, operator, sender, admin (written out, not derived from the code)
    int viewer, op, sender, admin;
  };
  const std::vector<Case> cases = {
      {http::verb::get, "/api/v1/studies", 200, 200, 403, 200},
      {http::verb::get, "/api/v1/studies/" + study, 200, 200, 403, 200},
      {http::verb::get, "/api/v1/studies/" + study + "/report", 200, 200, 403, 200},
      {http::verb::get, report_sr, 200, 200, 403, 200},
      {http::verb::get, "/api/v1/jobs", 200, 200, 403, 200},
      {http::verb::get, "/api/v1/instances/" + sop + "/png", 200, 200, 403, 200},
      {http::verb::get, "/readyz", 200, 200, 403, 200},
      {http::verb::get, "/metrics", 403, 403, 403, 200},
      {http::verb::post, "/api/v1/studies/" + study + "/reprocess", 403, 202, 403, 202},
      {http::verb::get, "/healthz", 200, 200, 200, 200},
      {http::verb::get, "/api/v1/openapi.json", 200, 200, 200, 200},
  };
  for (const Case& c : cases) {
    const int expected[] = {c.viewer, c.op, c.sender, c.admin};
    for (size_t u = 0; u < users.size(); ++u) {
      const Reply r = http_request(port_, c.method, c.target, users[u].token);
      EXPECT_EQ(r.status, expected[u]) << users[u].role << " " << c.target << ": " << r.body;
      if (expected[u] == 403) {
        expect_json_error(r, 403, "needs role");
        EXPECT_NE(r.body.find(users[u].name), std::string::npos) << r.body;  // says who was refused
      }
    }
    const bool is_public = c.target == "/healthz" || c.target == "/api/v1/openapi.json";
    EXPECT_EQ(http_request(port_, c.method, c.target).status, is_public ? 200 : 401) << c.target;
    EXPECT_EQ(http_request(port_, c.method, c.target, "not-" + users[0].token).status, is_public ? 200 : 401)
        << c.target;
  }
  // Unknown routes: 401 without a token (no map for strangers), 404 with one.
  EXPECT_EQ(get(port_, "/no-such-route").status, 401);
  EXPECT_EQ(get(port_, "/no-such-route", users[2].token).status, 404);

  // One audit line per answer that carried patient data: who, which study, when.
  const auto lines = audit_lines(dir_ + "/audit.log");
  std::map<std::string, std::vector<std::string>> targets_by_user;
  for (const auto& line : lines) {
    targets_by_user[line.at("user").get<std::string>()].push_back(line.at("target").get<std::string>());
    EXPECT_EQ(line.at("status"), 200) << line.dump();
    EXPECT_EQ(line.at("studies"), json::array({study})) << line.dump();
    EXPECT_EQ(line.at("remote"), "127.0.0.1");
    EXPECT_TRUE(std::regex_match(line.at("time").get<std::string>(),
                                 std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)")))
        << line.dump();
  }
  const std::vector<std::string> patient_data = {"/api/v1/studies", "/api/v1/studies/" + study,
                                                 "/api/v1/studies/" + study + "/report", report_sr,
                                                 "/api/v1/instances/" + sop + "/png"};
  for (const char* name : {"vera", "otto", "ada"}) EXPECT_EQ(targets_by_user[name], patient_data) << name;
  EXPECT_EQ(targets_by_user.count("sam"), 0u) << "refused requests carried no patient data";
  EXPECT_EQ(lines.size(), 15u);
  const std::string audit_text = read_file(dir_ + "/audit.log");
  for (const auto& u : users) EXPECT_EQ(audit_text.find(u.token), std::string::npos) << u.name << "'s token";
}

TEST_F(HttpApiTest, HttpsServesTheApiWithTheSharedTokenAsAdminAndRefusesPlainHttp) {
  firstread::testing::TestPki pki(dir_ + "/pki");
  const auto server = pki.issue("server", "localhost", "DNS:localhost,IP:127.0.0.1");
  add_instance("1.2.826.0.1.3680043.10.17.2", "1.2.826.0.1.3680043.10.17.2.1", "1.2.826.0.1.3680043.10.17.2.1.1",
               "CT");
  HttpApiOptions options;
  options.tls_certificate = server.cert;
  options.tls_private_key = server.key;
  options.token = "legacy-shared-token";  // http.token of earlier versions: the admin "token"
  start_server_with(options);
  const std::string port = std::to_string(port_);
  const std::string resolve = " --resolve localhost:" + std::to_string(port_) + ":127.0.0.1 ";
  const std::string curl = "curl -s -o /dev/null -w '%{http_code}'" + resolve + "--cacert " + pki.ca() + " ";
  int rc = -1;
  EXPECT_EQ(run_command(curl + "https://localhost:" + port + "/api/v1/studies -H 'Authorization: Bearer "
                               "legacy-shared-token'", &rc), "200");
  EXPECT_EQ(run_command(curl + "https://127.0.0.1:" + port + "/metrics -H 'Authorization: Bearer legacy-shared-token'",
                        &rc),
            "200");
  EXPECT_EQ(run_command(curl + "https://localhost:" + port + "/api/v1/studies", &rc), "401");
  const std::string body = run_command("curl -s" + resolve + "--cacert " + pki.ca() + " https://localhost:" + port +
                                       "/api/v1/studies -H 'Authorization: Bearer legacy-shared-token'");
  EXPECT_NE(body.find("1.2.826.0.1.3680043.10.17.2"), std::string::npos) << body;

  // A client that does not trust the server's CA, and plain HTTP on the HTTPS port.
  run_command("curl -s -o /dev/null" + resolve + "--cacert " + pki.other_ca() + " https://localhost:" + port + "/healthz",
              &rc);
  EXPECT_EQ(rc, 60) << "curl: peer certificate cannot be authenticated with the given CA";
  const std::string plain = run_command("curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:" + port + "/healthz",
                                        &rc);
  EXPECT_NE(rc, 0);
  EXPECT_NE(plain, "200");

  // TLS 1.2 negotiates a forward-secret AEAD suite; TLS 1.1 is refused by the server (its alert).
  const std::string tls12 = run_command("openssl s_client -connect 127.0.0.1:" + port + " -tls1_2 -CAfile " +
                                        pki.ca() + " </dev/null 2>&1");
  EXPECT_TRUE(std::regex_search(tls12, std::regex("Cipher is (ECDHE|DHE)-RSA-AES(128|256)-GCM-SHA(256|384)")))
      << tls12;
  const std::string tls11 = run_command("openssl s_client -connect 127.0.0.1:" + port +
                                        " -tls1_1 -cipher 'DEFAULT:@SECLEVEL=0' </dev/null 2>&1");
  EXPECT_NE(tls11.find("alert protocol version"), std::string::npos) << tls11;
}

TEST(PrometheusParser, RejectsMalformedText) {
  EXPECT_TRUE(parse_prometheus("# TYPE a counter\na 1\n").errors.empty());
  EXPECT_FALSE(parse_prometheus("a 1\n").errors.empty());                          // no TYPE
  EXPECT_FALSE(parse_prometheus("# TYPE a counter\na{x=1} 1\n").errors.empty());   // unquoted label
  EXPECT_FALSE(parse_prometheus("# TYPE a counter\na one\n").errors.empty());      // not a number
  EXPECT_FALSE(parse_prometheus("# TYPE 1a counter\n").errors.empty());            // bad name
  EXPECT_FALSE(parse_prometheus("# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\nh_sum 0\n")
                   .errors.empty());  // not cumulative
  EXPECT_FALSE(parse_prometheus("# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_count 3\nh_sum 0\n")
                   .errors.empty());  // +Inf != count
}

}  // namespace
