#include "pipeline/openai_backend.h"

#include <openssl/sha.h>
#include <openssl/ssl.h>
#include <spdlog/spdlog.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/core/detail/base64.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <ctime>
#include <functional>
#include <optional>

#include "net/https_client_tls.h"
#include "pipeline/study_processor.h"

namespace firstread::pipeline {
namespace {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
namespace ssl = net::ssl;
using tcp = net::ip::tcp;
using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

constexpr size_t kMaxReplyBytes = 64u << 20;

std::string base64(const std::string& data) {
  std::string out(beast::detail::base64::encoded_size(data.size()), '\0');
  out.resize(beast::detail::base64::encode(out.data(), data.data(), data.size()));
  return out;
}

// 2.25.<decimal of the first 16 bytes of SHA-256(text)>: a stable Device
// Observer UID for one served model at one server (PS3.5 B.2).
std::string uid_for(const std::string& text) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(text.data()), text.size(), digest);
  unsigned __int128 n = 0;
  for (int i = 0; i < 16; ++i) n = (n << 8) | digest[i];
  std::string decimal;
  do {
    decimal.insert(decimal.begin(), static_cast<char>('0' + static_cast<int>(n % 10)));
    n /= 10;
  } while (n != 0);
  return "2.25." + decimal;
}

// The server's own words for a refused request: OpenAI {"error":{"message"}},
// vLLM / LMDeploy {"message"}, FastAPI {"detail"}, else the start of the body.
std::string server_message(const std::string& body) {
  try {
    const json j = json::parse(body);
    if (j.contains("error")) {
      const json& e = j["error"];
      if (e.is_object() && e.contains("message") && e["message"].is_string()) return e["message"];
      if (e.is_string()) return e;
    }
    if (j.contains("message") && j["message"].is_string()) return j["message"];
    if (j.contains("detail")) return j["detail"].is_string() ? j["detail"].get<std::string>() : j["detail"].dump();
  } catch (const json::exception&) {
  }
  std::string start = body.substr(0, 300);
  for (char& c : start)
    if (c == '\n' || c == '\r') c = ' ';
  return start.empty() ? "(empty body)" : start;
}

// Runs io until the operation that `start` began calls its completion, or
// the deadline passes (then `cancel` closes the socket and the operation is
// reported as a timeout).
void await_step(net::io_context& io, Clock::time_point deadline, beast::error_code& ec,
                const std::function<void(std::function<void(beast::error_code)>)>& start,
                const std::function<void()>& cancel, bool& timed_out) {
  bool finished = false;
  start([&](beast::error_code e) {
    ec = e;
    finished = true;
  });
  io.restart();
  io.run_until(deadline);
  if (!finished) {
    timed_out = true;
    cancel();
    io.restart();
    io.run();
  }
}

}  // namespace

std::string ServerUrl::str() const {
  return std::string(https ? "https://" : "http://") + (host.find(':') != std::string::npos ? "[" + host + "]" : host) +
         ":" + port + prefix;
}

ServerUrl parse_server_url(const std::string& url) {
  ServerUrl u;
  u.https = url.rfind("https://", 0) == 0;
  std::string rest = url.substr(u.https ? 8 : 7);
  const size_t slash = rest.find('/');
  std::string authority = rest.substr(0, slash);
  u.prefix = slash == std::string::npos ? "" : rest.substr(slash);
  while (!u.prefix.empty() && u.prefix.back() == '/') u.prefix.pop_back();
  if (u.prefix.size() >= 3 && u.prefix.compare(u.prefix.size() - 3, 3, "/v1") == 0)
    u.prefix.resize(u.prefix.size() - 3);
  if (!authority.empty() && authority[0] == '[') {  // [IPv6]:port
    const size_t close = authority.find(']');
    u.host = authority.substr(1, close - 1);
    if (close + 1 < authority.size() && authority[close + 1] == ':') u.port = authority.substr(close + 2);
  } else {
    const size_t colon = authority.rfind(':');
    u.host = authority.substr(0, colon);
    if (colon != std::string::npos) u.port = authority.substr(colon + 1);
  }
  if (u.port.empty()) u.port = u.https ? "443" : "80";
  return u;
}

void sent_size(int width, int height, const config::RemoteModelConfig& cfg, int* out_w, int* out_h) {
  double scale = 1;
  const int longer = std::max(width, height);
  if (cfg.max_image_side > 0 && longer > cfg.max_image_side) scale = double(cfg.max_image_side) / longer;
  int w = std::max(1, static_cast<int>(std::lround(width * scale)));
  int h = std::max(1, static_cast<int>(std::lround(height * scale)));
  if (cfg.box_format == "qwen25-pixels") {
    // Qwen2.5-VL's smart_resize rounds each side to a multiple of 28 (and keeps
    // the pixel count within its min/max); an image already on that grid and
    // within 56x56 .. max_image_side is left as it is.
    auto snap = [&](int v) {
      int s = std::max(56, static_cast<int>(std::lround(v / 28.0)) * 28);
      if (cfg.max_image_side > 0) s = std::min(s, std::max(56, cfg.max_image_side / 28 * 28));
      return s;
    };
    w = snap(w);
    h = snap(h);
  }
  *out_w = w;
  *out_h = h;
}

double parse_retry_after(const std::string& value) {
  if (value.empty()) return 0;
  char* end = nullptr;
  const double seconds = std::strtod(value.c_str(), &end);
  if (end != value.c_str() && *end == '\0') return seconds > 0 ? seconds : 0;
  std::tm tm{};
  if (strptime(value.c_str(), "%a, %d %b %Y %H:%M:%S GMT", &tm) == nullptr) return 0;
  const double delta = std::difftime(timegm(&tm), std::time(nullptr));
  return delta > 0 ? delta : 0;
}

OpenAiBackend::OpenAiBackend(std::string name, config::RemoteModelConfig cfg)
    : name_(std::move(name)), cfg_(std::move(cfg)), url_(parse_server_url(cfg_.url)) {
  device_uid_ = uid_for("openai|" + url_.host + "|" + url_.port + url_.prefix + "|" + cfg_.model);
  if (url_.https && !cfg_.tls_verify)
    spdlog::warn("models: '{}': tls_verify is off: the certificate of {} is not checked", name_, url_.str());
}

std::string OpenAiBackend::where() const { return "remote model '" + name_ + "' (" + url_.str() + ")"; }

std::string OpenAiBackend::bearer_token() const {
  if (cfg_.api_key_env.empty()) return "";
  const char* token = std::getenv(cfg_.api_key_env.c_str());
  if (token == nullptr || *token == '\0')
    throw InferenceError("config", where() + ": environment variable " + cfg_.api_key_env +
                                       " (models." + name_ + ".api_key_env) is not set");
  return token;
}

BackendIdentity OpenAiBackend::identity() {
  return BackendIdentity{"openai", name_, cfg_.model, device_uid_, url_.host};
}

OpenAiBackend::Reply OpenAiBackend::exchange(const std::string& method, const std::string& path,
                                             const std::string& body, Clock::duration timeout) {
  const std::string token = bearer_token();
  const auto deadline = Clock::now() + timeout;
  const std::string target = url_.prefix + path;
  const std::string timeout_text =
      std::to_string(std::chrono::duration_cast<std::chrono::seconds>(timeout).count()) + " s";
  net::io_context io;
  beast::error_code ec;
  bool timed_out = false;
  auto fail_timeout = [&](const char* during) {
    throw InferenceError("timeout", where() + ": no reply within " + timeout_text + " (" + during +
                                        "; models." + name_ + ".timeout_seconds)");
  };

  tcp::resolver resolver(io);
  tcp::resolver::results_type endpoints;
  await_step(io, deadline, ec, [&](auto done) {
    resolver.async_resolve(url_.host, url_.port, [&, done](beast::error_code e, tcp::resolver::results_type r) {
      endpoints = r;
      done(e);
    });
  }, [&] { resolver.cancel(); }, timed_out);
  if (timed_out) fail_timeout("resolving the host");
  if (ec) throw InferenceError("connect", where() + ": cannot resolve " + url_.host + ": " + ec.message());

  http::request<http::string_body> req{method == "GET" ? http::verb::get : http::verb::post, target, 11};
  req.set(http::field::host, url_.host + ":" + url_.port);
  req.set(http::field::user_agent, "firstread");
  req.set(http::field::accept, "application/json");
  if (!token.empty()) req.set(http::field::authorization, "Bearer " + token);
  if (method != "GET") {
    req.set(http::field::content_type, "application/json");
    req.body() = body;
  }
  req.prepare_payload();

  auto run_exchange = [&](auto& stream, auto& socket_layer, const std::function<void()>& handshake) -> Reply {
    auto close = [&] {
      beast::error_code ignored;
      socket_layer.socket().close(ignored);
    };
    await_step(io, deadline, ec, [&](auto done) {
      socket_layer.async_connect(endpoints, [done](beast::error_code e, const tcp::endpoint&) { done(e); });
    }, close, timed_out);
    if (timed_out) fail_timeout("connecting");
    if (ec) throw InferenceError("connect", where() + ": cannot connect: " + ec.message());
    socket_layer.socket().set_option(tcp::no_delay(true), ec);
    handshake();
    await_step(io, deadline, ec, [&](auto done) {
      http::async_write(stream, req, [done](beast::error_code e, size_t) { done(e); });
    }, close, timed_out);
    if (timed_out) fail_timeout("sending the request");
    if (ec) throw InferenceError("network", where() + ": sending the request failed: " + ec.message());
    beast::flat_buffer buffer;
    http::response_parser<http::string_body> parser;
    parser.body_limit(kMaxReplyBytes);
    await_step(io, deadline, ec, [&](auto done) {
      http::async_read(stream, buffer, parser, [done](beast::error_code e, size_t) { done(e); });
    }, close, timed_out);
    if (timed_out) fail_timeout("waiting for the reply");
    if (ec == http::error::partial_message || ec == http::error::end_of_stream || ec == net::error::eof)
      throw InferenceError("bad_reply", where() + ": the server closed the connection before the reply was complete (" +
                                            ec.message() + ")");
    if (ec == http::error::body_limit)
      throw InferenceError("bad_reply", where() + ": the reply is larger than 64 MiB");
    if (ec) throw InferenceError("network", where() + ": reading the reply failed: " + ec.message());
    Reply reply;
    reply.status = parser.get().result_int();
    reply.body = parser.get().body();
    reply.retry_after = std::string(parser.get()[http::field::retry_after]);
    close();
    return reply;
  };

  if (!url_.https) {
    beast::tcp_stream stream(io);
    return run_exchange(stream, stream, [] {});
  }

  std::optional<ssl::context> ctx;
  try {
    ctx.emplace(firstread::net::make_client_context(cfg_.tls_verify, cfg_.ca_file));
  } catch (const boost::system::system_error& e) {
    throw InferenceError("tls", where() + ": cannot load the CA file '" + cfg_.ca_file + "': " + e.code().message());
  }
  beast::ssl_stream<beast::tcp_stream> stream(io, *ctx);
  SSL* native = stream.native_handle();
  firstread::net::expect_peer_name(native, url_.host, cfg_.tls_verify);
  auto& lowest = beast::get_lowest_layer(stream);
  return run_exchange(stream, lowest, [&] {
    await_step(io, deadline, ec, [&](auto done) {
      stream.async_handshake(ssl::stream_base::client, [done](beast::error_code e) { done(e); });
    }, [&] {
      beast::error_code ignored;
      lowest.socket().close(ignored);
    }, timed_out);
    if (timed_out) fail_timeout("in the TLS handshake");
    if (ec) {
      std::string reason = ec.message();
      const std::string why = firstread::net::verify_failure(native);
      if (!why.empty()) reason += ": " + why;
      throw InferenceError("tls", where() + ": TLS handshake failed: " + reason);
    }
  });
}

// The chat-completions request for one frame: the route's prompt and the
// frame as a PNG data URI, resized to the sent size with the PIL-exact
// bicubic the engine uses.
std::string OpenAiBackend::request_body(const engine::RgbImage& frame, const config::Route& route, int w, int h) const {
  const engine::RgbImage sent = (w == frame.width && h == frame.height) ? frame : engine::resize_bicubic_pil(frame, w, h);
  const std::string data_uri = "data:image/png;base64," + base64(engine::encode_png(sent));
  json body = json::parse(cfg_.extra_json);
  body["model"] = cfg_.model;
  body["messages"] = json::array();
  if (!cfg_.system_prompt.empty()) body["messages"].push_back({{"role", "system"}, {"content", cfg_.system_prompt}});
  body["messages"].push_back(
      {{"role", "user"},
       {"content", json::array({{{"type", "text"}, {"text", route.prompt}},
                                {{"type", "image_url"}, {"image_url", {{"url", data_uri}}}}})}});
  // Greedy: what the local engine does. extra may add sampling keys the
  // server knows (top_k, cache_prompt), never replace these three.
  body["temperature"] = 0;
  body["seed"] = cfg_.seed;
  body["max_tokens"] = route.max_new_tokens;
  if (!body.contains("stream")) body["stream"] = false;
  return body.dump();
}

// An HTTP status other than 200 as the job's error: 429 / 503 with the wait
// the server asked for, 5xx, 4xx (the server's own message), anything else.
void OpenAiBackend::check_status(const Reply& reply) const {
  if (reply.status == 429 || reply.status == 503) {
    const double wait = parse_retry_after(reply.retry_after);
    throw InferenceError(reply.status == 429 ? "http_429" : "http_5xx",
                         where() + ": HTTP " + std::to_string(reply.status) +
                             (reply.status == 429 ? " too many requests" : " service unavailable") +
                             (wait > 0 ? " (Retry-After " + reply.retry_after + ")" : "") + ": " +
                             server_message(reply.body),
                         wait);
  }
  if (reply.status >= 500)
    throw InferenceError("http_5xx", where() + ": HTTP " + std::to_string(reply.status) + " server error: " +
                                         server_message(reply.body));
  if (reply.status >= 400)
    throw InferenceError("http_4xx", where() + ": HTTP " + std::to_string(reply.status) + " (request refused): " +
                                         server_message(reply.body));
  if (reply.status != 200)
    throw InferenceError("bad_reply", where() + ": unexpected HTTP " + std::to_string(reply.status));
}

// The answer's text (choices[0].message.content, as a string or in text
// parts), whether it stopped at the token limit, its token counts and the
// served model; a reply without text is the job's error.
std::string OpenAiBackend::read_choice(const std::string& reply_body, FrameInference& out) const {
  json j;
  try {
    j = json::parse(reply_body);
  } catch (const json::parse_error& e) {
    throw InferenceError("bad_reply", where() + ": the reply is not valid JSON (" + std::to_string(reply_body.size()) +
                                          " bytes; truncated or not JSON): " + e.what());
  }
  if (!j.is_object() || !j.contains("choices") || !j["choices"].is_array() || j["choices"].empty())
    throw InferenceError("bad_reply", where() + ": the reply has no choices");
  const json& choice = j["choices"][0];
  if (!choice.is_object() || !choice.contains("message") || !choice["message"].is_object())
    throw InferenceError("bad_reply", where() + ": choices[0] has no message");
  const json& content = choice["message"].value("content", json());
  std::string text;
  if (content.is_string()) {
    text = content.get<std::string>();
  } else if (content.is_array()) {  // some servers answer in parts
    for (const auto& part : content)
      if (part.is_object() && part.value("type", "") == "text" && part.contains("text") && part["text"].is_string())
        text += part["text"].get<std::string>();
  }
  const std::string finish_reason =
      choice.contains("finish_reason") && choice["finish_reason"].is_string() ? choice["finish_reason"].get<std::string>()
                                                                             : std::string();
  if (text.find_first_not_of(" \t\r\n") == std::string::npos)
    throw InferenceError("bad_reply", where() + ": the reply's choices[0].message.content is empty" +
                                          (finish_reason.empty() ? std::string() : " (finish_reason " + finish_reason + ")"));
  out.truncated = finish_reason == "length";
  if (j.contains("usage") && j["usage"].is_object()) {
    const json& u = j["usage"];
    if (u.contains("prompt_tokens") && u["prompt_tokens"].is_number_integer()) out.prompt_tokens = u["prompt_tokens"];
    if (u.contains("completion_tokens") && u["completion_tokens"].is_number_integer())
      out.completion_tokens = u["completion_tokens"];
  }
  out.served_model = j.contains("model") && j["model"].is_string() ? j["model"].get<std::string>() : cfg_.model;
  if (out.served_model.empty()) out.served_model = cfg_.model;
  return text;
}

// The answer's regions on the frame. InternVL's grid is relative to the sent
// image, which is the whole frame resized, so relative coordinates map onto
// the frame directly; Qwen's pixels are pixels of the sent w x h image.
void OpenAiBackend::map_regions(const std::string& text, const engine::RgbImage& frame, int w, int h,
                                FrameInference& out) const {
  engine::PreprocessGeometry g;
  g.source_width = g.view_width = frame.width;
  g.source_height = g.view_height = frame.height;
  if (std::optional<reports::BoxFormat> format = reports::parse_box_format(cfg_.box_format)) {
    format->sent_width = w;
    format->sent_height = h;
    const bool pixels = format->syntax == reports::BoxFormat::Syntax::qwen25_json;
    parse_reply(text, g, *format,
                pixels ? std::to_string(w) + "x" + std::to_string(h) + " px" : "0.." + std::to_string(format->scale),
                out);
  } else {  // box_format: none
    out.text = text;
    out.narrative = reports::strip_region_markup(text);
  }
}

FrameInference OpenAiBackend::infer(const engine::RgbImage& frame, const config::Route& route) {
  int w = 0, h = 0;
  sent_size(frame.width, frame.height, cfg_, &w, &h);
  const std::string request = request_body(frame, route, w, h);

  // At most max_in_flight requests open at once, across this process's workers.
  {
    std::unique_lock<std::mutex> lock(gate_mu_);
    gate_cv_.wait(lock, [&] { return open_ < cfg_.max_in_flight; });
    ++open_;
  }
  struct Release {
    OpenAiBackend& b;
    ~Release() {
      {
        std::lock_guard<std::mutex> lock(b.gate_mu_);
        --b.open_;
      }
      b.gate_cv_.notify_one();
    }
  } release{*this};

  const auto t0 = Clock::now();
  const Reply reply = exchange("POST", "/v1/chat/completions", request,
                               std::chrono::duration_cast<Clock::duration>(
                                   std::chrono::duration<double>(cfg_.timeout_seconds)));
  const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  check_status(reply);

  FrameInference out;
  const std::string text = read_choice(reply.body, out);
  map_regions(text, frame, w, h, out);
  out.log_detail = "sent " + std::to_string(w) + "x" + std::to_string(h) + " PNG to " + url_.str() + ", served " +
                   out.served_model + ", " + std::to_string(out.prompt_tokens) + "+" +
                   std::to_string(out.completion_tokens) + " tokens in " + std::to_string(static_cast<int>(ms)) +
                   " ms" + (out.truncated ? ", finish_reason length" : "");
  return out;
}

std::string OpenAiBackend::readiness() {
  std::lock_guard<std::mutex> lock(ready_mu_);
  if (Clock::now() - ready_checked_ < std::chrono::seconds(3)) return ready_result_;
  std::string result;
  try {
    const auto timeout = std::chrono::duration_cast<Clock::duration>(
        std::chrono::duration<double>(std::min(cfg_.timeout_seconds, 5.0)));
    const Reply reply = exchange("GET", "/v1/models", "", timeout);
    if (reply.status != 200) {
      result = where() + ": GET /v1/models answered HTTP " + std::to_string(reply.status) + ": " +
               server_message(reply.body);
    } else {
      const json j = json::parse(reply.body);
      bool listed = false;
      if (j.contains("data") && j["data"].is_array())
        for (const auto& m : j["data"])
          if (m.is_object() && m.value("id", "") == cfg_.model) listed = true;
      if (!listed) result = where() + ": the server does not list model '" + cfg_.model + "' in GET /v1/models";
    }
  } catch (const InferenceError& e) {
    result = e.what();
  } catch (const std::exception& e) {
    result = where() + ": GET /v1/models: " + e.what();
  }
  ready_checked_ = Clock::now();
  ready_result_ = result;
  return result;
}

}  // namespace firstread::pipeline
