// The HTTP API and the results page: see http_api.h for the routes.
#include "app/http_api.h"

#include <png.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <stdexcept>

#include "app/web/web_assets.h"
#include "dicom/pixels.h"
#include "dicom/uid.h"
#include "worklist/study_assembler.h"

namespace firstread::app {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using json = nlohmann::json;

namespace {

// ---------------------------------------------------------------------------
// Requests, responses and errors as the route handlers see them.

struct ApiRequest {
  http::verb method = http::verb::unknown;
  std::string path;                          // as sent (for messages)
  std::vector<std::string> segments;         // path split at '/', empty ones dropped
  std::map<std::string, std::string> query;  // percent-decoded; '+' is taken literally
  std::string authorization;
};

struct ApiResponse {
  unsigned status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
};

// Thrown by handlers for answers other than 200: status and message.
class HttpError : public std::runtime_error {
 public:
  HttpError(unsigned status, const std::string& message) : std::runtime_error(message), status_(status) {}
  unsigned status() const { return status_; }

 private:
  unsigned status_;
};

std::string dump_json(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

ApiResponse json_response(unsigned status, const json& body) {
  ApiResponse r;
  r.status = status;
  r.body = dump_json(body) + "\n";
  return r;
}

ApiResponse error_response(unsigned status, const std::string& message) {
  return json_response(status, json{{"error", message}});
}

// ---------------------------------------------------------------------------
// Parsing and validation of what clients send.

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Percent-decoding; throws HttpError 400 on a malformed escape.
std::string percent_decode(const std::string& in) {
  std::string out;
  out.reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '%') {
      out += in[i];
      continue;
    }
    if (i + 2 >= in.size()) throw HttpError(400, "malformed percent escape in URL");
    const int hi = hex_value(in[i + 1]), lo = hex_value(in[i + 2]);
    if (hi < 0 || lo < 0) throw HttpError(400, "malformed percent escape in URL");
    out += static_cast<char>(hi * 16 + lo);
    i += 2;
  }
  return out;
}

ApiRequest parse_target(http::verb method, const std::string& target) {
  ApiRequest r;
  r.method = method;
  const size_t question = target.find('?');
  r.path = target.substr(0, question);
  // Split first, then decode: an escaped '/' (%2F) stays inside its segment.
  std::stringstream path_stream(r.path);
  for (std::string segment; std::getline(path_stream, segment, '/');)
    if (!segment.empty()) r.segments.push_back(percent_decode(segment));
  if (question != std::string::npos) {
    std::stringstream query_stream(target.substr(question + 1));
    for (std::string pair; std::getline(query_stream, pair, '&');) {
      if (pair.empty()) continue;
      const size_t eq = pair.find('=');
      const std::string key = percent_decode(pair.substr(0, eq));
      r.query[key] = eq == std::string::npos ? "" : percent_decode(pair.substr(eq + 1));
    }
  }
  return r;
}

void require_uid(const std::string& what, const std::string& uid) {
  if (!dicom::is_valid_uid(uid))
    throw HttpError(400, what + " '" + uid.substr(0, 80) + "' is not a valid UID (digits and dots, at most 64)");
}

// Query parameter or empty optional; an empty value counts as absent.
std::optional<std::string> query_param(const ApiRequest& req, const std::string& name) {
  auto it = req.query.find(name);
  if (it == req.query.end() || it->second.empty()) return std::nullopt;
  return it->second;
}

long long parse_integer(const std::string& name, const std::string& text, long long min, long long max) {
  if (text.empty() || text.size() > 18) throw HttpError(400, name + ": '" + text.substr(0, 40) + "' is not an integer");
  size_t i = 0;
  bool negative = false;
  if (text[0] == '-') {
    negative = true;
    i = 1;
  }
  if (i == text.size()) throw HttpError(400, name + ": '" + text + "' is not an integer");
  long long value = 0;
  for (; i < text.size(); ++i) {
    if (text[i] < '0' || text[i] > '9') throw HttpError(400, name + ": '" + text.substr(0, 40) + "' is not an integer");
    value = value * 10 + (text[i] - '0');
  }
  if (negative) value = -value;
  if (value < min || value > max)
    throw HttpError(400, name + ": " + text + " is out of range " + std::to_string(min) + ".." + std::to_string(max));
  return value;
}

bool is_one_of(const std::string& value, const std::vector<std::string>& allowed) {
  for (const auto& a : allowed)
    if (a == value) return true;
  return false;
}

std::string join(const std::vector<std::string>& items, const std::string& separator) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? separator : "") + items[i];
  return out;
}

const std::vector<std::string> kStudyStates = {"receiving", "queued", "processing", "reported", "failed", "unrouted"};
const std::vector<std::string> kJobStates = {"queued", "running", "done", "failed", "dead"};
const std::vector<std::string> kExportStates = {"pending", "sent", "failed"};

// ISO 8601 date or date-time, optional fraction and offset. PostgreSQL then
// checks the field ranges (a 13th month is a 400 as well).
bool looks_like_iso8601(const std::string& s) {
  auto digits = [&](size_t pos, size_t n) {
    if (pos + n > s.size()) return false;
    for (size_t i = pos; i < pos + n; ++i)
      if (s[i] < '0' || s[i] > '9') return false;
    return true;
  };
  if (!(digits(0, 4) && s.size() >= 10 && s[4] == '-' && digits(5, 2) && s[7] == '-' && digits(8, 2))) return false;
  size_t p = 10;
  if (p == s.size()) return true;
  if (s[p] != 'T' && s[p] != 't' && s[p] != ' ') return false;
  ++p;
  if (!(digits(p, 2) && p + 2 < s.size() && s[p + 2] == ':' && digits(p + 3, 2))) return false;
  p += 5;
  if (p < s.size() && s[p] == ':') {
    if (!digits(p + 1, 2)) return false;
    p += 3;
    if (p < s.size() && s[p] == '.') {
      size_t n = 0;
      ++p;
      while (p < s.size() && s[p] >= '0' && s[p] <= '9' && n < 9) ++p, ++n;
      if (n == 0) return false;
    }
  }
  if (p == s.size()) return true;
  if ((s[p] == 'Z' || s[p] == 'z') && p + 1 == s.size()) return true;
  if (s[p] != '+' && s[p] != '-') return false;
  ++p;
  if (!digits(p, 2)) return false;
  p += 2;
  if (p == s.size()) return true;
  if (s[p] == ':') ++p;
  return digits(p, 2) && p + 2 == s.size();
}

// --- the opaque studies cursor: base64url of "v1:<first_received_at in µs since the epoch>:<study_uid>"

const char kBase64Url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

std::string base64url_encode(const std::string& in) {
  std::string out;
  int bits = 0;
  unsigned value = 0;
  for (unsigned char c : in) {
    value = (value << 8) | c;
    bits += 8;
    while (bits >= 6) {
      bits -= 6;
      out += kBase64Url[(value >> bits) & 63];
    }
  }
  if (bits > 0) out += kBase64Url[(value << (6 - bits)) & 63];
  return out;
}

std::optional<std::string> base64url_decode(const std::string& in) {
  std::string out;
  int bits = 0;
  unsigned value = 0;
  for (char c : in) {
    const char* found = std::strchr(kBase64Url, c);
    if (c == '\0' || found == nullptr) return std::nullopt;
    value = (value << 6) | static_cast<unsigned>(found - kBase64Url);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((value >> bits) & 0xFF);
    }
  }
  return out;
}

struct StudyCursor {
  long long first_received_us = 0;
  std::string study_uid;
};

std::string encode_cursor(const StudyCursor& c) {
  return base64url_encode("v1:" + std::to_string(c.first_received_us) + ":" + c.study_uid);
}

StudyCursor decode_cursor(const std::string& text) {
  const HttpError bad(400, "cursor: not a cursor this server issued (use next_cursor of the previous page)");
  if (text.size() > 200) throw bad;
  auto decoded = base64url_decode(text);
  if (!decoded || decoded->rfind("v1:", 0) != 0) throw bad;
  const size_t colon = decoded->find(':', 3);
  if (colon == std::string::npos) throw bad;
  StudyCursor c;
  const std::string micros = decoded->substr(3, colon - 3);
  c.study_uid = decoded->substr(colon + 1);
  if (!dicom::is_valid_uid(c.study_uid) || micros.empty() || micros.size() > 18) throw bad;
  for (size_t i = 0; i < micros.size(); ++i)
    if (!((micros[i] >= '0' && micros[i] <= '9') || (i == 0 && micros[i] == '-' && micros.size() > 1))) throw bad;
  c.first_received_us = std::stoll(micros);
  return c;
}

// ---------------------------------------------------------------------------
// PNG encoding of an RGB8 image (libpng, in memory).

std::string encode_png_rgb8(const uint8_t* rgb, int width, int height) {
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  if (!png) throw std::runtime_error("PNG encoder: libpng init failed");
  png_infop info = png_create_info_struct(png);
  if (!info) {
    png_destroy_write_struct(&png, nullptr);
    throw std::runtime_error("PNG encoder: libpng init failed");
  }
  std::string out;
  std::vector<png_bytep> rows(static_cast<size_t>(height));
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    throw std::runtime_error("PNG encoder: libpng failed for a " + std::to_string(width) + "x" +
                             std::to_string(height) + " image");
  }
  png_set_write_fn(
      png, &out,
      [](png_structp p, png_bytep data, png_size_t n) {
        static_cast<std::string*>(png_get_io_ptr(p))->append(reinterpret_cast<const char*>(data), n);
      },
      [](png_structp) {});
  png_set_IHDR(png, info, static_cast<png_uint_32>(width), static_cast<png_uint_32>(height), 8, PNG_COLOR_TYPE_RGB,
               PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_set_compression_level(png, 3);  // fast: a viewer, not an archive
  png_write_info(png, info);
  for (int y = 0; y < height; ++y) rows[static_cast<size_t>(y)] = const_cast<png_bytep>(rgb + size_t(y) * width * 3);
  png_write_image(png, rows.data());
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  return out;
}

// ---------------------------------------------------------------------------
// Prometheus text format.

std::string prometheus_escape(const std::string& value) {
  std::string out;
  for (char c : value) {
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}

std::string format_number(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (std::isnan(v)) return "NaN";
  char buf[64];
  if (v == std::floor(v) && std::fabs(v) < 9e15) snprintf(buf, sizeof buf, "%.0f", v);
  else snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

class MetricsText {
 public:
  void family(const std::string& name, const std::string& type, const std::string& help) {
    out_ << "# HELP " << name << " " << help << "\n# TYPE " << name << " " << type << "\n";
  }
  // labels: already formatted as k="v",k2="v2" (may be empty)
  void sample(const std::string& name, const std::string& labels, double value) {
    out_ << name;
    if (!labels.empty()) out_ << "{" << labels << "}";
    out_ << " " << format_number(value) << "\n";
  }
  std::string text() const { return out_.str(); }

 private:
  std::ostringstream out_;
};

std::string label(const std::string& key, const std::string& value) {
  return key + "=\"" + prometheus_escape(value) + "\"";
}

// Histogram bucket bounds (seconds) for durations from 50 ms to 30 min.
const std::vector<double> kDurationBuckets = {0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800};

// One SQL pass computing cumulative bucket counts, count and sum of `value_sql`
// (seconds) per `group_sql` over `from_sql`, then written as a histogram.
void histogram_from_database(pqxx::work& txn, MetricsText& m, const std::string& name, const std::string& help,
                             const std::string& group_label, const std::string& group_sql,
                             const std::string& value_sql, const std::string& from_sql) {
  std::string sql = "SELECT grp";
  for (double bound : kDurationBuckets) sql += ", count(*) FILTER (WHERE v <= " + format_number(bound) + ")";
  sql += ", count(*), coalesce(sum(v), 0) FROM (SELECT " + group_sql + " AS grp, " + value_sql + " AS v FROM " +
         from_sql + ") q WHERE v IS NOT NULL GROUP BY grp ORDER BY grp";
  m.family(name, "histogram", help);
  for (const auto& row : txn.exec(sql)) {
    const std::string group = row[0].is_null() ? "" : row[0].c_str();
    const std::string group_labels = label(group_label, group);
    for (size_t b = 0; b < kDurationBuckets.size(); ++b)
      m.sample(name + "_bucket", group_labels + "," + label("le", format_number(kDurationBuckets[b])),
               row[static_cast<int>(b) + 1].as<double>());
    const int count_col = static_cast<int>(kDurationBuckets.size()) + 1;
    m.sample(name + "_bucket", group_labels + "," + label("le", "+Inf"), row[count_col].as<double>());
    m.sample(name + "_sum", group_labels, row[count_col + 1].as<double>());
    m.sample(name + "_count", group_labels, row[count_col].as<double>());
  }
}

std::string content_type_for(const std::string& name) {
  auto ends_with = [&](const std::string& suffix) {
    return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  if (ends_with(".html")) return "text/html; charset=utf-8";
  if (ends_with(".js")) return "text/javascript; charset=utf-8";
  if (ends_with(".css")) return "text/css; charset=utf-8";
  return "application/octet-stream";
}

bool tokens_equal(const std::string& a, const std::string& b) {
  // Constant time in the length of the expected token.
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < b.size(); ++i) diff |= static_cast<unsigned char>(b[i] ^ (i < a.size() ? a[i] : 0));
  return diff == 0;
}

}  // namespace

// ---------------------------------------------------------------------------
// The server's state and the route handlers.

struct HttpApi::Impl {
  Impl(HttpApiOptions o, db::ConnectionPool& p, const storage::FileStorage& s, const scp::ServerCounters* c,
       std::function<std::string()> m)
      : options(std::move(o)),
        pool(p),
        storage(s),
        dicom_counters(c),
        models_status(std::move(m)),
        handlers(static_cast<size_t>(std::max(1, options.handler_threads))) {}

  HttpApiOptions options;
  db::ConnectionPool& pool;
  const storage::FileStorage& storage;
  const scp::ServerCounters* dicom_counters;
  std::function<std::string()> models_status;

  // Declared before io: sessions still queued in io touch it when io is destroyed.
  std::atomic<int> open_connections{0};
  net::io_context io;
  std::unique_ptr<tcp::acceptor> acceptor;
  std::vector<std::thread> io_threads;
  net::thread_pool handlers;
  std::atomic<bool> running{false};
  std::atomic<uint64_t> readyz_probe_counter{0};

  std::mutex status_counts_mu;
  // The usual codes start at 0 so that their series exist from the first scrape.
  std::map<unsigned, uint64_t> responses_by_status = {{200, 0}, {202, 0}, {400, 0}, {401, 0}, {404, 0},
                                                       {405, 0}, {422, 0}, {500, 0}, {503, 0}};

  void count_response(unsigned status) {
    std::lock_guard<std::mutex> lock(status_counts_mu);
    ++responses_by_status[status];
  }

  ApiResponse handle(const ApiRequest& req);
  ApiResponse route(const ApiRequest& req);

  ApiResponse healthz();
  ApiResponse readyz();
  ApiResponse metrics();
  ApiResponse list_studies(const ApiRequest& req);
  ApiResponse get_study(const std::string& study_uid);
  ApiResponse get_report(const std::string& study_uid, const ApiRequest& req);
  ApiResponse get_sr(const std::string& report_id_text);
  ApiResponse list_jobs(const ApiRequest& req);
  ApiResponse reprocess(const std::string& study_uid);
  ApiResponse instance_png(const std::string& sop_uid, const ApiRequest& req);
  ApiResponse web_file(const std::string& name);

  template <typename Fn>
  auto read(Fn&& fn) {
    return pool.transact([&](pqxx::work& txn) {
      txn.exec0("SET LOCAL TimeZone = 'UTC'");
      return fn(txn);
    });
  }
};

namespace {

// Which routes exist, their methods and whether they need the token.
struct RouteMatch {
  enum Kind {
    kNone,
    kPage,
    kWebFile,
    kHealthz,
    kReadyz,
    kMetrics,
    kStudies,
    kStudy,
    kStudyReport,
    kStudyReprocess,
    kReportSr,
    kJobs,
    kInstancePng
  } kind = kNone;
  std::string param;  // the UID / id / file name in the path
  http::verb method = http::verb::get;
  bool public_route = false;  // no token needed
};

RouteMatch match_route(const std::vector<std::string>& s) {
  RouteMatch m;
  auto is = [&](size_t n, std::initializer_list<const char*> fixed) {
    if (s.size() != n) return false;
    size_t i = 0;
    for (const char* f : fixed) {
      if (f != nullptr && s[i] != f) return false;
      ++i;
    }
    return true;
  };
  if (s.empty()) {
    m.kind = RouteMatch::kPage;
    m.public_route = true;
  } else if (is(2, {"web", nullptr})) {
    m.kind = RouteMatch::kWebFile;
    m.param = s[1];
    m.public_route = true;
  } else if (is(1, {"healthz"})) {
    m.kind = RouteMatch::kHealthz;
    m.public_route = true;
  } else if (is(1, {"readyz"})) {
    m.kind = RouteMatch::kReadyz;
  } else if (is(1, {"metrics"})) {
    m.kind = RouteMatch::kMetrics;
  } else if (is(3, {"api", "v1", "studies"})) {
    m.kind = RouteMatch::kStudies;
  } else if (is(4, {"api", "v1", "studies", nullptr})) {
    m.kind = RouteMatch::kStudy;
    m.param = s[3];
  } else if (is(5, {"api", "v1", "studies", nullptr, "report"})) {
    m.kind = RouteMatch::kStudyReport;
    m.param = s[3];
  } else if (is(5, {"api", "v1", "studies", nullptr, "reprocess"})) {
    m.kind = RouteMatch::kStudyReprocess;
    m.param = s[3];
    m.method = http::verb::post;
  } else if (is(5, {"api", "v1", "reports", nullptr, "sr"})) {
    m.kind = RouteMatch::kReportSr;
    m.param = s[3];
  } else if (is(3, {"api", "v1", "jobs"})) {
    m.kind = RouteMatch::kJobs;
  } else if (is(5, {"api", "v1", "instances", nullptr, "png"})) {
    m.kind = RouteMatch::kInstancePng;
    m.param = s[3];
  }
  return m;
}

}  // namespace

ApiResponse HttpApi::Impl::handle(const ApiRequest& req) {
  const auto started = std::chrono::steady_clock::now();
  ApiResponse response;
  try {
    response = route(req);
  } catch (const HttpError& e) {
    response = error_response(e.status(), e.what());
  } catch (const pqxx::broken_connection& e) {
    spdlog::error("http: {} {}: database unreachable: {}", std::string(http::to_string(req.method)), req.path,
                  e.what());
    response = error_response(503, std::string("database unreachable: ") + e.what());
  } catch (const std::exception& e) {
    spdlog::error("http: {} {}: {}", std::string(http::to_string(req.method)), req.path, e.what());
    response = error_response(500, std::string("internal error: ") + e.what());
  }
  count_response(response.status);
  spdlog::debug("http: {} {} -> {} ({} bytes, {:.1f} ms)", std::string(http::to_string(req.method)), req.path,
                response.status, response.body.size(),
                std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count());
  return response;
}

ApiResponse HttpApi::Impl::route(const ApiRequest& req) {
  const RouteMatch m = match_route(req.segments);
  if (!m.public_route && !options.token.empty()) {
    const std::string prefix = "Bearer ";
    if (req.authorization.empty()) {
      ApiResponse r = error_response(401, "missing Authorization: Bearer <token> (http.token is set)");
      r.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"firstread\"");
      return r;
    }
    if (req.authorization.compare(0, prefix.size(), prefix) != 0 ||
        !tokens_equal(req.authorization.substr(prefix.size()), options.token)) {
      ApiResponse r = error_response(401, "wrong bearer token");
      r.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"firstread\", error=\"invalid_token\"");
      return r;
    }
  }
  if (m.kind == RouteMatch::kNone) throw HttpError(404, "no such route: " + req.path);
  const bool method_ok = req.method == m.method || (m.method == http::verb::get && req.method == http::verb::head);
  if (!method_ok) {
    ApiResponse r = error_response(405, std::string("method ") + std::string(http::to_string(req.method)) +
                                            " not allowed on " + req.path + "; use " +
                                            std::string(http::to_string(m.method)));
    r.headers.emplace_back("Allow", m.method == http::verb::get ? "GET, HEAD" : std::string(http::to_string(m.method)));
    return r;
  }
  switch (m.kind) {
    case RouteMatch::kPage: return web_file("index.html");
    case RouteMatch::kWebFile: return web_file(m.param);
    case RouteMatch::kHealthz: return healthz();
    case RouteMatch::kReadyz: return readyz();
    case RouteMatch::kMetrics: return metrics();
    case RouteMatch::kStudies: return list_studies(req);
    case RouteMatch::kStudy: return get_study(m.param);
    case RouteMatch::kStudyReport: return get_report(m.param, req);
    case RouteMatch::kStudyReprocess: return reprocess(m.param);
    case RouteMatch::kReportSr: return get_sr(m.param);
    case RouteMatch::kJobs: return list_jobs(req);
    case RouteMatch::kInstancePng: return instance_png(m.param, req);
    case RouteMatch::kNone: break;
  }
  throw HttpError(404, "no such route: " + req.path);
}

ApiResponse HttpApi::Impl::web_file(const std::string& name) {
  for (const WebAsset* a = kWebAssets; a->name != nullptr; ++a) {
    if (name == a->name) {
      ApiResponse r;
      r.content_type = content_type_for(name);
      r.body.assign(reinterpret_cast<const char*>(a->data), a->size);
      r.headers.emplace_back("Cache-Control", "no-cache");
      return r;
    }
  }
  throw HttpError(404, "no such page file: " + name);
}

ApiResponse HttpApi::Impl::healthz() { return json_response(200, json{{"status", "ok"}}); }

ApiResponse HttpApi::Impl::readyz() {
  json checks = json::object();
  bool ready = true;
  try {
    pool.transact([](pqxx::work& txn) { txn.exec1("SELECT 1"); });
    checks["database"] = "ok";
  } catch (const std::exception& e) {
    checks["database"] = std::string("unreachable: ") + e.what();
    ready = false;
  }
  {
    const std::string probe = storage.root() + "/tmp/readyz-" + std::to_string(getpid()) + "-" +
                              std::to_string(readyz_probe_counter.fetch_add(1));
    FILE* f = std::fopen(probe.c_str(), "wb");
    if (f == nullptr) {
      checks["storage"] = "cannot create " + probe + ": " + std::strerror(errno);
      ready = false;
    } else {
      const bool written = std::fputs("readyz\n", f) >= 0;
      const bool closed = std::fclose(f) == 0;
      std::remove(probe.c_str());
      if (written && closed) {
        checks["storage"] = "ok";
      } else {
        checks["storage"] = "cannot write " + probe;
        ready = false;
      }
    }
  }
  std::string models_problem;
  try {
    if (models_status) models_problem = models_status();
  } catch (const std::exception& e) {
    models_problem = e.what();
  }
  checks["models"] = models_problem.empty() ? "ok" : models_problem;
  if (!models_problem.empty()) ready = false;
  return json_response(ready ? 200 : 503, json{{"ready", ready}, {"checks", checks}});
}

ApiResponse HttpApi::Impl::metrics() {
  MetricsText m;
  if (dicom_counters != nullptr) {
    const scp::ServerCounters& c = *dicom_counters;
    m.family("firstread_dicom_associations_total", "counter", "DICOM associations handled by this process, by outcome");
    m.sample("firstread_dicom_associations_total", label("outcome", "accepted"), c.associations_accepted.load());
    m.sample("firstread_dicom_associations_total", label("outcome", "refused"), c.associations_refused.load());
    m.sample("firstread_dicom_associations_total", label("outcome", "failed"), c.associations_failed.load());
    m.family("firstread_dicom_associations_active", "gauge", "DICOM associations open now");
    m.sample("firstread_dicom_associations_active", "", c.associations_active.load());
    m.family("firstread_dicom_echoes_total", "counter", "C-ECHO requests answered");
    m.sample("firstread_dicom_echoes_total", "", c.echoes.load());
    m.family("firstread_dicom_instances_received_total", "counter", "C-STORE instances received, by outcome");
    m.sample("firstread_dicom_instances_received_total", label("outcome", "stored"), c.instances_stored.load());
    m.sample("firstread_dicom_instances_received_total", label("outcome", "failed"), c.instances_failed.load());
    m.family("firstread_dicom_received_bytes_total", "counter", "bytes of DICOM data received");
    m.sample("firstread_dicom_received_bytes_total", "", c.bytes_received.load());
  }
  {
    std::lock_guard<std::mutex> lock(status_counts_mu);
    m.family("firstread_http_requests_total", "counter", "HTTP requests answered by this process, by status code");
    for (const auto& [status, count] : responses_by_status)
      m.sample("firstread_http_requests_total", label("code", std::to_string(status)), static_cast<double>(count));
  }
  bool database_up = true;
  std::string database_text;
  try {
    database_text = read([&](pqxx::work& txn) {
      MetricsText d;
      d.family("firstread_studies", "gauge", "studies in the database, by state (api.studies)");
      {
        std::map<std::string, double> by_state;
        for (const auto& s : kStudyStates) by_state[s] = 0;
        for (const auto& row : txn.exec("SELECT state, count(*) FROM api.studies GROUP BY state"))
          by_state[row[0].c_str()] = row[1].as<double>();
        for (const auto& [state, count] : by_state) d.sample("firstread_studies", label("state", state), count);
      }
      auto instances = txn.exec1("SELECT count(*), coalesce(sum(file_size), 0) FROM api.instances");
      d.family("firstread_stored_instances", "gauge", "instances stored (api.instances, all nodes)");
      d.sample("firstread_stored_instances", "", instances[0].as<double>());
      d.family("firstread_stored_instance_bytes", "gauge", "bytes of instance files stored (api.instances)");
      d.sample("firstread_stored_instance_bytes", "", instances[1].as<double>());
      d.family("firstread_jobs", "gauge", "jobs by state (api.jobs): queued and failed are the queue depth");
      {
        std::map<std::string, double> by_state;
        for (const auto& s : kJobStates) by_state[s] = 0;
        for (const auto& row : txn.exec("SELECT state, count(*) FROM api.jobs GROUP BY state"))
          by_state[row[0].c_str()] = row[1].as<double>();
        for (const auto& [state, count] : by_state) d.sample("firstread_jobs", label("state", state), count);
      }
      d.family("firstread_exports", "gauge", "SR exports by state (api.exports)");
      {
        std::map<std::string, double> by_state;
        for (const auto& s : kExportStates) by_state[s] = 0;
        for (const auto& row : txn.exec("SELECT state, count(*) FROM api.exports GROUP BY state"))
          by_state[row[0].c_str()] = row[1].as<double>();
        for (const auto& [state, count] : by_state) d.sample("firstread_exports", label("state", state), count);
      }
      d.family("firstread_reports", "gauge", "reports stored, by model (api.reports)");
      for (const auto& row : txn.exec("SELECT model, count(*) FROM api.reports GROUP BY model ORDER BY model"))
        d.sample("firstread_reports", label("model", row[0].c_str()), row[1].as<double>());
      histogram_from_database(txn, d, "firstread_job_duration_seconds",
                              "time from a job's start to its finish, for done jobs (api.jobs)", "model", "model",
                              "extract(epoch FROM finished_at - started_at)::float8",
                              "api.jobs WHERE state = 'done' AND started_at IS NOT NULL AND finished_at IS NOT NULL");
      histogram_from_database(txn, d, "firstread_report_latency_seconds",
                              "time from a study's last instance received to its SR stored (api.reports.latency_ms)",
                              "model", "model", "latency_ms / 1000.0", "api.reports");
      const std::vector<std::pair<std::string, std::string>> stages = {
          {"decode", "decode_ms"}, {"inference", "inference_ms"}, {"sr", "sr_ms"}, {"db", "db_ms"}};
      for (const auto& [stage, column] : stages)
        histogram_from_database(txn, d, "firstread_report_" + stage + "_seconds",
                                "per-report time spent in the " + stage + " stage (api.reports." + column + ")",
                                "model", "model", column + " / 1000.0", "api.reports");
      return d.text();
    });
  } catch (const std::exception& e) {
    spdlog::warn("http: /metrics: database part skipped: {}", e.what());
    database_up = false;
  }
  m.family("firstread_database_up", "gauge", "1 if the database answered this scrape");
  m.sample("firstread_database_up", "", database_up ? 1 : 0);
  ApiResponse r;
  r.content_type = "text/plain; version=0.0.4; charset=utf-8";
  r.body = m.text() + database_text;
  return r;
}

ApiResponse HttpApi::Impl::list_studies(const ApiRequest& req) {
  for (const auto& [key, value] : req.query)
    if (!is_one_of(key, {"since", "modality", "state", "limit", "cursor"}))
      throw HttpError(400, "unknown parameter '" + key + "' (since, modality, state, limit, cursor)");
  const auto since = query_param(req, "since");
  const auto modality = query_param(req, "modality");
  const auto state = query_param(req, "state");
  const auto cursor_text = query_param(req, "cursor");
  const long long limit = query_param(req, "limit") ? parse_integer("limit", *query_param(req, "limit"), 1, 500) : 50;
  if (since && !looks_like_iso8601(*since))
    throw HttpError(400, "since: '" + since->substr(0, 40) + "' is not an ISO 8601 date or time (e.g. 2026-11-25T08:00:00Z)");
  if (modality) {
    bool ok = modality->size() <= 16;
    for (char c : *modality) ok = ok && ((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_');
    if (!ok) throw HttpError(400, "modality: '" + modality->substr(0, 40) + "' is not a DICOM modality (e.g. CT, CR, MR)");
  }
  if (state && !is_one_of(*state, kStudyStates))
    throw HttpError(400, "state: '" + state->substr(0, 40) + "' is not one of " + join(kStudyStates, ", "));
  std::optional<StudyCursor> cursor;
  if (cursor_text) cursor = decode_cursor(*cursor_text);

  try {
    return read([&](pqxx::work& txn) {
      std::string sql =
          "SELECT to_jsonb(s)::text, (extract(epoch FROM s.first_received_at) * 1000000)::bigint, s.study_uid "
          "FROM api.studies s WHERE true";
      if (since) sql += " AND s.last_received_at >= " + txn.quote(*since) + "::timestamptz";
      if (modality) sql += " AND " + txn.quote(*modality) + " = ANY(s.modalities)";
      if (state) sql += " AND s.state = " + txn.quote(*state);
      if (cursor)
        sql += " AND (s.first_received_at, s.study_uid) < ('epoch'::timestamptz + " +
               std::to_string(cursor->first_received_us) + " * interval '1 microsecond', " +
               txn.quote(cursor->study_uid) + ")";
      sql += " ORDER BY s.first_received_at DESC, s.study_uid DESC LIMIT " + std::to_string(limit + 1);
      json studies = json::array();
      json next_cursor = nullptr;
      const auto rows = txn.exec(sql);
      for (int i = 0; i < static_cast<int>(rows.size()); ++i) {
        if (i == limit) {
          const auto& last = rows[i - 1];
          next_cursor = encode_cursor({last[1].as<long long>(), last[2].c_str()});
          break;
        }
        studies.push_back(json::parse(rows[i][0].c_str()));
      }
      return json_response(200, json{{"studies", studies}, {"next_cursor", next_cursor}});
    });
  } catch (const pqxx::data_exception& e) {
    // The only client-supplied value PostgreSQL parses here is `since`.
    throw HttpError(400, "since: '" + since.value_or("") + "' is not a valid time: " + e.what());
  }
}

ApiResponse HttpApi::Impl::get_study(const std::string& study_uid) {
  require_uid("study UID", study_uid);
  return read([&](pqxx::work& txn) {
    auto study = txn.exec_params("SELECT to_jsonb(s)::text FROM api.studies s WHERE study_uid = $1", study_uid);
    if (study.empty()) throw HttpError(404, "unknown study " + study_uid);
    auto instances = txn.exec_params(
        "SELECT coalesce(jsonb_agg(to_jsonb(i) ORDER BY i.series_instance_uid, i.received_at, i.sop_instance_uid), "
        "'[]')::text FROM api.instances i WHERE study_uid = $1",
        study_uid);
    auto jobs = txn.exec_params(
        "SELECT coalesce(jsonb_agg(to_jsonb(j) ORDER BY j.job_id), '[]')::text FROM api.jobs j WHERE study_uid = $1",
        study_uid);
    auto reports = txn.exec_params(
        "SELECT coalesce(jsonb_agg(jsonb_build_object('report_id', r.report_id, 'job_id', r.job_id, 'route', "
        "r.route, 'model', r.model, 'model_version', r.model_version, 'language', r.language, "
        "'sr_sop_instance_uid', r.sr_sop_instance_uid, 'supersedes_report_id', r.supersedes_report_id, "
        "'created_at', r.created_at, 'latency_ms', r.latency_ms) ORDER BY r.report_id), '[]')::text "
        "FROM api.reports r WHERE study_uid = $1",
        study_uid);
    return json_response(200, json{{"study", json::parse(study[0][0].c_str())},
                                   {"instances", json::parse(instances[0][0].c_str())},
                                   {"jobs", json::parse(jobs[0][0].c_str())},
                                   {"reports", json::parse(reports[0][0].c_str())}});
  });
}

ApiResponse HttpApi::Impl::get_report(const std::string& study_uid, const ApiRequest& req) {
  require_uid("study UID", study_uid);
  for (const auto& [key, value] : req.query)
    if (key != "route") throw HttpError(400, "unknown parameter '" + key + "' (route)");
  const auto route_name = query_param(req, "route");
  if (route_name) {
    bool ok = route_name->size() <= 64;
    for (char c : *route_name)
      ok = ok && ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
                  c == '-' || c == '.');
    if (!ok) throw HttpError(400, "route: '" + route_name->substr(0, 40) + "' is not a route name");
  }
  return read([&](pqxx::work& txn) {
    if (txn.exec_params("SELECT 1 FROM api.studies WHERE study_uid = $1", study_uid).empty())
      throw HttpError(404, "unknown study " + study_uid);
    std::string sql =
        "SELECT (to_jsonb(r) - 'sr_file_path')::text, r.report_id FROM api.reports r WHERE r.study_uid = " +
        txn.quote(study_uid);
    if (route_name) sql += " AND r.route = " + txn.quote(*route_name);
    sql += " ORDER BY r.created_at DESC, r.report_id DESC LIMIT 1";
    auto report_row = txn.exec(sql);
    if (report_row.empty())
      throw HttpError(404, "study " + study_uid + " has no report yet" +
                               (route_name ? " for route " + *route_name : std::string()));
    const long long report_id = report_row[0][1].as<long long>();
    json report = json::parse(report_row[0][0].c_str());
    auto findings = txn.exec_params(
        "SELECT coalesce(jsonb_agg(to_jsonb(f) - 'report_id' ORDER BY f.finding_id), '[]')::text "
        "FROM api.findings f WHERE report_id = $1",
        report_id);
    auto exports = txn.exec_params(
        "SELECT coalesce(jsonb_agg(to_jsonb(e) - 'report_id' ORDER BY e.export_id), '[]')::text "
        "FROM api.exports e WHERE report_id = $1",
        report_id);
    report["findings"] = json::parse(findings[0][0].c_str());
    report["exports"] = json::parse(exports[0][0].c_str());
    report["sr_url"] = "/api/v1/reports/" + std::to_string(report_id) + "/sr";
    return json_response(200, report);
  });
}

ApiResponse HttpApi::Impl::get_sr(const std::string& report_id_text) {
  const long long report_id = parse_integer("report id", report_id_text, 1, 999999999999999999LL);
  auto found = read([&](pqxx::work& txn) {
    return txn.exec_params("SELECT sr_file_path, sr_sop_instance_uid FROM api.reports WHERE report_id = $1", report_id);
  });
  if (found.empty()) throw HttpError(404, "unknown report " + std::to_string(report_id));
  const std::string path = storage.absolute(found[0][0].c_str());
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("report " + std::to_string(report_id) + ": cannot open SR file " + path + ": " +
                                    std::strerror(errno));
  std::ostringstream bytes;
  bytes << in.rdbuf();
  if (in.bad()) throw std::runtime_error("report " + std::to_string(report_id) + ": cannot read SR file " + path);
  ApiResponse r;
  r.content_type = "application/dicom";
  r.body = bytes.str();
  r.headers.emplace_back("Content-Disposition",
                         "attachment; filename=\"" + std::string(found[0][1].c_str()) + ".dcm\"");
  return r;
}

ApiResponse HttpApi::Impl::list_jobs(const ApiRequest& req) {
  for (const auto& [key, value] : req.query)
    if (!is_one_of(key, {"state", "study", "limit"}))
      throw HttpError(400, "unknown parameter '" + key + "' (state, study, limit)");
  const auto state = query_param(req, "state");
  const auto study = query_param(req, "study");
  const long long limit = query_param(req, "limit") ? parse_integer("limit", *query_param(req, "limit"), 1, 1000) : 100;
  if (state && !is_one_of(*state, kJobStates))
    throw HttpError(400, "state: '" + state->substr(0, 40) + "' is not one of " + join(kJobStates, ", "));
  if (study) require_uid("study", *study);
  return read([&](pqxx::work& txn) {
    std::string sql = "SELECT coalesce(jsonb_agg(to_jsonb(q) ORDER BY q.job_id DESC), '[]')::text FROM "
                      "(SELECT * FROM api.jobs j WHERE true";
    if (state) sql += " AND j.state = " + txn.quote(*state);
    if (study) sql += " AND j.study_uid = " + txn.quote(*study);
    sql += " ORDER BY j.job_id DESC LIMIT " + std::to_string(limit) + ") q";
    auto rows = txn.exec1(sql);
    return json_response(200, json{{"jobs", json::parse(rows[0].c_str())}});
  });
}

ApiResponse HttpApi::Impl::reprocess(const std::string& study_uid) {
  require_uid("study UID", study_uid);
  if (!worklist::request_rerun(pool, study_uid)) throw HttpError(404, "unknown study " + study_uid);
  spdlog::info("http: reprocess requested for study {}", study_uid);
  return json_response(202, json{{"study_uid", study_uid}, {"status", "rerun requested"}});
}

ApiResponse HttpApi::Impl::instance_png(const std::string& sop_uid, const ApiRequest& req) {
  require_uid("SOP Instance UID", sop_uid);
  for (const auto& [key, value] : req.query)
    if (key != "frame") throw HttpError(400, "unknown parameter '" + key + "' (frame)");
  const long long frame = query_param(req, "frame") ? parse_integer("frame", *query_param(req, "frame"), 0, 1 << 20) : 0;
  auto found = read([&](pqxx::work& txn) {
    return txn.exec_params("SELECT file_path, coalesce(frames, 1) FROM api.instances WHERE sop_instance_uid = $1",
                           sop_uid);
  });
  if (found.empty()) throw HttpError(404, "unknown instance " + sop_uid);
  const long long frames = found[0][1].as<long long>();
  if (frame >= frames)
    throw HttpError(400, "frame: " + std::to_string(frame) + " is out of range; instance " + sop_uid + " has " +
                             std::to_string(frames) + " frame(s), numbered from 0");
  const std::string path = storage.absolute(found[0][0].c_str());
  dicom::DicomPixels pixels;
  try {
    pixels = dicom::decode_dicom_frame(path, static_cast<int>(frame));
  } catch (const dicom::DicomImageError& e) {
    throw HttpError(422, "instance " + sop_uid + " frame " + std::to_string(frame) + " cannot be rendered: " + e.what());
  }
  ApiResponse r;
  r.content_type = "image/png";
  r.body = encode_png_rgb8(pixels.image.rgb.data(), pixels.image.width, pixels.image.height);
  r.headers.emplace_back("Cache-Control", "private, max-age=300");
  return r;
}

// ---------------------------------------------------------------------------
// Connections: async reads and writes on the I/O threads, handling on the pool.

namespace {

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, HttpApi::Impl& api) : stream_(std::move(socket)), api_(api) {}
  ~Session() { api_.open_connections.fetch_sub(1); }

  void start() { net::dispatch(stream_.get_executor(), [self = shared_from_this()] { self->read_request(); }); }

 private:
  void read_request() {
    parser_.emplace();
    parser_->header_limit(16 * 1024);
    parser_->body_limit(64 * 1024);
    stream_.expires_after(std::chrono::seconds(api_.options.read_timeout_seconds));
    http::async_read(stream_, buffer_, *parser_,
                     [self = shared_from_this()](beast::error_code ec, size_t) { self->on_read(ec); });
  }

  void on_read(beast::error_code ec) {
    if (ec == http::error::end_of_stream || ec == beast::error::timeout || ec == net::error::operation_aborted ||
        ec == net::error::connection_reset || ec == net::error::eof) {
      close();
      return;
    }
    if (ec) {
      // A parse error (not HTTP, or over the limits): answer once and close.
      // Any other error is the socket's: nothing to answer.
      const bool parse_error = ec.category() == beast::error_code(http::error::bad_target).category() &&
                               ec != http::error::partial_message;
      if (!parse_error) {
        close();
        return;
      }
      unsigned status = 400;
      if (ec == http::error::body_limit) status = 413;
      if (ec == http::error::header_limit) status = 431;
      api_.count_response(status);
      send(error_response(status, "malformed HTTP request: " + ec.message()), http::verb::get, 11, false);
      return;
    }
    stream_.expires_never();  // handling may take a while (PNG rendering); the client is waiting
    http::request<http::string_body> request = parser_->release();
    // Liveness and the page's static files answer on this I/O thread, so that
    // they never queue behind slow handlers (large PNGs, a busy database).
    const std::string target(request.target());
    const bool answer_here = target == "/healthz" || target == "/" || target.rfind("/web/", 0) == 0;
    if (answer_here) {
      respond(request);
      return;
    }
    net::post(api_.handlers, [self = shared_from_this(), request = std::move(request)]() mutable {
      self->respond(request);
    });
  }

  // Handles one request (on whichever thread calls it) and writes the answer
  // from the connection's strand.
  void respond(const http::request<http::string_body>& request) {
    ApiResponse response;
    try {
      ApiRequest api_request = parse_target(request.method(), std::string(request.target()));
      api_request.authorization = std::string(request[http::field::authorization]);
      response = api_.handle(api_request);
    } catch (const HttpError& e) {
      response = error_response(e.status(), e.what());
      api_.count_response(e.status());
    }
    const bool keep_alive = request.keep_alive();
    const unsigned version = request.version();
    const http::verb method = request.method();
    net::post(stream_.get_executor(),
              [self = shared_from_this(), response = std::move(response), method, version, keep_alive]() mutable {
                self->send(std::move(response), method, version, keep_alive);
              });
  }

  void send(ApiResponse r, http::verb method, unsigned version, bool keep_alive) {
    response_ = {};
    response_.version(version);
    response_.result(r.status);
    response_.set(http::field::server, "firstread");
    response_.set(http::field::content_type, r.content_type);
    response_.set("X-Content-Type-Options", "nosniff");
    for (const auto& [name, value] : r.headers) response_.set(name, value);
    response_.keep_alive(keep_alive);
    const size_t length = r.body.size();
    if (method != http::verb::head) response_.body() = std::move(r.body);
    response_.content_length(length);
    stream_.expires_after(std::chrono::seconds(120));  // a slow reader of a large file is dropped eventually
    http::async_write(stream_, response_, [self = shared_from_this(), keep_alive](beast::error_code ec, size_t) {
      if (ec || !keep_alive) {
        self->close();
        return;
      }
      self->read_request();
    });
  }

  void close() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
    stream_.socket().close(ignored);
  }

  beast::tcp_stream stream_;
  HttpApi::Impl& api_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  http::response<http::string_body> response_;
};

void accept_next(HttpApi::Impl& api) {
  api.acceptor->async_accept(net::make_strand(api.io), [&api](beast::error_code ec, tcp::socket socket) {
    if (!api.running) return;
    if (ec) {
      spdlog::warn("http: accept failed: {}", ec.message());
    } else if (api.open_connections.load() >= api.options.max_connections) {
      spdlog::warn("http: {} connections open (limit); closing a new one", api.open_connections.load());
      beast::error_code ignored;
      socket.close(ignored);
    } else {
      api.open_connections.fetch_add(1);
      std::make_shared<Session>(std::move(socket), api)->start();
    }
    accept_next(api);
  });
}

}  // namespace

HttpApiOptions http_api_options(const config::HttpConfig& http) {
  HttpApiOptions o;
  o.listen = http.listen;
  o.token = http.token;
  return o;
}

HttpApi::HttpApi(HttpApiOptions options, db::ConnectionPool& pool, const storage::FileStorage& storage,
                 const scp::ServerCounters* dicom_counters, std::function<std::string()> models_status)
    : impl_(std::make_unique<Impl>(std::move(options), pool, storage, dicom_counters, std::move(models_status))) {}

HttpApi::~HttpApi() { stop(); }

void HttpApi::start() {
  Impl& api = *impl_;
  const std::string& listen = api.options.listen;
  const size_t colon = listen.rfind(':');
  if (colon == std::string::npos || colon + 1 >= listen.size())
    throw std::runtime_error("http.listen '" + listen + "': expected host:port");
  std::string host = listen.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  int port = 0;
  try {
    port = static_cast<int>(parse_integer("port", listen.substr(colon + 1), 0, 65535));
  } catch (const HttpError& e) {
    throw std::runtime_error("http.listen '" + listen + "': " + e.what());
  }
  try {
    tcp::resolver resolver(api.io);
    auto endpoints = resolver.resolve(host.empty() ? "0.0.0.0" : host, std::to_string(port),
                                      tcp::resolver::passive | tcp::resolver::numeric_service);
    const tcp::endpoint endpoint = endpoints.begin()->endpoint();
    api.acceptor = std::make_unique<tcp::acceptor>(net::make_strand(api.io));
    api.acceptor->open(endpoint.protocol());
    api.acceptor->set_option(net::socket_base::reuse_address(true));
    api.acceptor->bind(endpoint);
    api.acceptor->listen(net::socket_base::max_listen_connections);
    bound_port_ = api.acceptor->local_endpoint().port();
  } catch (const boost::system::system_error& e) {
    throw std::runtime_error("http: cannot listen on " + listen + ": " + e.code().message());
  }
  api.running = true;
  accept_next(api);
  for (int i = 0; i < std::max(1, api.options.io_threads); ++i) api.io_threads.emplace_back([&api] { api.io.run(); });
  spdlog::info("http: listening on {}:{}{}", host, bound_port_,
               api.options.token.empty() ? "" : " (bearer token required)");
}

void HttpApi::stop() {
  if (!impl_) return;
  Impl& api = *impl_;
  if (api.running.exchange(false)) {
    net::post(api.acceptor->get_executor(), [&api] {
      beast::error_code ignored;
      api.acceptor->close(ignored);
    });
  }
  api.io.stop();
  for (auto& t : api.io_threads)
    if (t.joinable()) t.join();
  api.io_threads.clear();
  api.handlers.stop();
  api.handlers.join();
}

}  // namespace firstread::app
