// The HTTP transport on Boost.Beast / Boost.Asio. Connections are read and
// written asynchronously by a few I/O threads; each request is then handled
// (database queries, file reads, PNG rendering) on a separate pool of handler
// threads. A client that sends half a request holds no thread, only a
// socket, and is dropped after the read timeout. What each route does is in
// routes.cpp and the files beside it.
//
// HTTPS (http.tls): the same sessions over Beast's ssl_stream on OpenSSL,
// TLS 1.2 or newer; the handshake runs asynchronously on the I/O threads
// under the read timeout, so a client that stalls it holds no thread.
#include <openssl/ssl.h>
#include <spdlog/spdlog.h>

#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <chrono>
#include <future>
#include <limits>
#include <sstream>

#include "app/http/api.h"
#include "app/http/parse.h"
#include "metrics/registry.h"

namespace firstread::app {

namespace beast = boost::beast;
namespace bhttp = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using http::ApiRequest;
using http::ApiResponse;
using http::HttpError;
using http::error_response;

struct HttpApi::Impl {
  Impl(HttpApiOptions o, db::ConnectionPool& p, const storage::FileStorage& s, std::function<std::string()> m)
      : context{std::move(o), p, s, std::move(m)},
        options(context.options),
        handlers(static_cast<size_t>(std::max(1, options.handler_threads))) {
    context.access = http::Access(options.users, options.token);
    if (!options.audit_log.empty()) context.audit.open(options.audit_log);  // throws naming the file
    if (!options.tls_certificate.empty()) ssl = make_ssl_context(options);
    // The usual codes exist from the first scrape.
    for (unsigned code : {200, 202, 400, 401, 403, 404, 405, 422, 500, 503})
      metrics::registry().counter("firstread_http_requests_total",
                                  "HTTP requests answered by this process, by status code",
                                  {{"code", std::to_string(code)}});
  }

  static std::unique_ptr<net::ssl::context> make_ssl_context(const HttpApiOptions& o);

  http::Context context;
  const HttpApiOptions& options;
  std::unique_ptr<net::ssl::context> ssl;  // HTTPS when set
  // Declared before io: sessions still queued in io touch it when io is destroyed.
  std::atomic<int> open_connections{0};
  net::io_context io;
  std::unique_ptr<tcp::acceptor> acceptor;
  std::vector<std::thread> io_threads;
  net::thread_pool handlers;
  std::atomic<bool> running{false};

  // One request: the header, the body of a route that does not stream, or
  // the reader of a streaming route's body; remote is the client's address,
  // tls whether it came over HTTPS (for the answers' absolute URLs).
  ApiResponse handle(const bhttp::request_header<>& request, std::string body,
                     std::function<size_t(char*, size_t)> read_body, const std::string& remote, bool tls);
};

std::unique_ptr<net::ssl::context> HttpApi::Impl::make_ssl_context(const HttpApiOptions& o) {
  auto ctx = std::make_unique<net::ssl::context>(net::ssl::context::tls_server);
  ctx->set_options(net::ssl::context::default_workarounds | net::ssl::context::no_sslv2 |
                   net::ssl::context::no_sslv3 | net::ssl::context::no_tlsv1 | net::ssl::context::no_tlsv1_1 |
                   net::ssl::context::single_dh_use | SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
  SSL_CTX_set_min_proto_version(ctx->native_handle(), TLS1_2_VERSION);
  // TLS 1.2: forward-secret AEAD suites only (BCP 195); TLS 1.3 suites are OpenSSL's defaults.
  SSL_CTX_set_cipher_list(ctx->native_handle(), "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:!aNULL:!SHA1");
  boost::system::error_code ec;
  ctx->use_certificate_chain_file(o.tls_certificate, ec);
  if (ec) throw std::runtime_error("http.tls.certificate: cannot use " + o.tls_certificate + ": " + ec.message());
  ctx->use_private_key_file(o.tls_private_key, net::ssl::context::pem, ec);
  if (ec) throw std::runtime_error("http.tls.private_key: cannot use " + o.tls_private_key + ": " + ec.message());
  if (SSL_CTX_check_private_key(ctx->native_handle()) != 1)
    throw std::runtime_error("http.tls: the private key " + o.tls_private_key + " does not belong to " +
                             o.tls_certificate);
  return ctx;
}

namespace {

// The path of a target split at '/' (empty segments dropped), each percent-decoded.
std::vector<std::string> parse_segments(const std::string& target) {
  std::vector<std::string> segments;
  std::stringstream path_stream(target.substr(0, target.find('?')));
  try {
    for (std::string segment; std::getline(path_stream, segment, '/');)
      if (!segment.empty()) segments.push_back(http_parse::percent_decode(segment));
  } catch (const std::invalid_argument&) {
    segments.clear();  // parse_target answers 400 for it
  }
  return segments;
}

// CORS (http.cors_origins, for a viewer such as OHIF served from another
// origin): whether the page's Origin may read the answers.
bool cors_allows(const std::vector<std::string>& origins, const std::string& origin) {
  if (origin.empty()) return false;
  for (const std::string& o : origins)
    if (o == "*" || o == origin) return true;
  return false;
}

// The browser's preflight (OPTIONS with Access-Control-Request-Method) before
// a request with Authorization, Accept or a multipart Content-Type. It carries
// no token, so it is answered before authentication and says nothing else.
ApiResponse cors_preflight(bool allowed, const std::string& origin) {
  if (!allowed) return error_response(403, "origin " + origin + " is not one of http.cors_origins");
  ApiResponse r;
  r.content_type = "text/plain";
  r.headers.emplace_back("Access-Control-Allow-Methods", "GET, HEAD, POST");
  r.headers.emplace_back("Access-Control-Allow-Headers", "Authorization, Accept, Content-Type");
  r.headers.emplace_back("Access-Control-Max-Age", "600");
  return r;
}

ApiRequest parse_target(bhttp::verb method, const std::string& target) {
  ApiRequest r;
  r.method = method;
  const size_t question = target.find('?');
  r.path = target.substr(0, question);
  try {
    // Split first, then decode: an escaped '/' (%2F) stays inside its segment.
    std::stringstream path_stream(r.path);
    for (std::string segment; std::getline(path_stream, segment, '/');)
      if (!segment.empty()) r.segments.push_back(http_parse::percent_decode(segment));
    if (question != std::string::npos) {
      std::stringstream query_stream(target.substr(question + 1));
      for (std::string pair; std::getline(query_stream, pair, '&');) {
        if (pair.empty()) continue;
        const size_t eq = pair.find('=');
        const std::string key = http_parse::percent_decode(pair.substr(0, eq));
        r.query[key] = eq == std::string::npos ? "" : http_parse::percent_decode(pair.substr(eq + 1));
      }
    }
  } catch (const std::invalid_argument& e) {
    throw HttpError(400, e.what());
  }
  return r;
}

}  // namespace

ApiResponse HttpApi::Impl::handle(const bhttp::request_header<>& request, std::string body,
                                  std::function<size_t(char*, size_t)> read_body, const std::string& remote, bool tls) {
  const auto started = std::chrono::steady_clock::now();
  const std::string method(bhttp::to_string(request.method()));
  const std::string target(request.target());
  ApiResponse response;
  const std::string origin(request[bhttp::field::origin]);
  const bool cors = cors_allows(options.cors_origins, origin);
  if (request.method() == bhttp::verb::options && !origin.empty() &&
      request.count(bhttp::field::access_control_request_method)) {
    response = cors_preflight(cors, origin);
  } else try {
    ApiRequest req = parse_target(request.method(), target);
    req.authorization = std::string(request[bhttp::field::authorization]);
    req.target = target;
    req.remote = remote;
    req.content_type = std::string(request[bhttp::field::content_type]);
    req.accept = std::string(request[bhttp::field::accept]);
    const std::string host(request[bhttp::field::host]);
    req.base_url = std::string(tls ? "https://" : "http://") + (host.empty() ? options.listen : host);
    req.body = std::move(body);
    req.read_body = std::move(read_body);
    response = http::dispatch(context, req);
  } catch (const http::BodyReadError& e) {
    spdlog::warn("http: {} {}: the request body stopped: {}", method, target, e.what());
    response = error_response(400, std::string("the request body stopped: ") + e.what());
  } catch (const HttpError& e) {
    response = error_response(e.status(), e.what());
  } catch (const pqxx::broken_connection& e) {
    spdlog::error("http: {} {}: database unreachable: {}", method, target, e.what());
    response = error_response(503, std::string("database unreachable: ") + e.what());
  } catch (const std::exception& e) {
    spdlog::error("http: {} {}: {}", method, target, e.what());
    response = error_response(500, std::string("internal error: ") + e.what());
  }
  if (cors) {
    response.headers.emplace_back("Access-Control-Allow-Origin", origin);
    response.headers.emplace_back("Access-Control-Expose-Headers", "Warning, Content-Location, Content-Type");
    response.headers.emplace_back("Vary", "Origin");
  }
  http::count_response(response.status);
  spdlog::debug("http: {} {} -> {} ({} bytes, {:.1f} ms)", method, target, response.status, response.body.size(),
                std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count());
  return response;
}

// ---------------------------------------------------------------------------
// Connections: async reads and writes on the I/O threads, handling on the pool.

namespace {

// One connection, plain (beast::tcp_stream) or HTTPS (beast::ssl_stream over it).
template <class Stream>
class Session : public std::enable_shared_from_this<Session<Stream>> {
  static constexpr bool kTls = !std::is_same_v<Stream, beast::tcp_stream>;

 public:
  template <class... StreamArgs>
  Session(HttpApi::Impl& api, std::string remote, StreamArgs&&... stream_args)
      : stream_(std::forward<StreamArgs>(stream_args)...), api_(api), remote_(std::move(remote)) {}
  ~Session() { api_.open_connections.fetch_sub(1); }

  void start() {
    net::dispatch(stream_.get_executor(), [self = this->shared_from_this()] {
      if constexpr (kTls)
        self->handshake();
      else
        self->read_request();
    });
  }

 private:
  void handshake() {
    beast::get_lowest_layer(stream_).expires_after(std::chrono::seconds(api_.options.read_timeout_seconds));
    stream_.async_handshake(net::ssl::stream_base::server, [self = this->shared_from_this()](beast::error_code ec) {
      if (ec) {
        // Plain HTTP on the HTTPS port reads as "http request"; a client that
        // does not trust the certificate ends with an alert.
        spdlog::warn("http: TLS handshake with {} failed: {}", self->remote_, ec.message());
        self->close_socket();
        return;
      }
      self->read_request();
    });
  }

  void read_request() {
    header_parser_.emplace();
    header_parser_->header_limit(16 * 1024);
    // Decided per route once the header is in (on_header). Not boost::none:
    // Boost 1.74's parser compares the length with the optional and refuses every body.
    header_parser_->body_limit(std::numeric_limits<std::uint64_t>::max());
    beast::get_lowest_layer(stream_).expires_after(std::chrono::seconds(api_.options.read_timeout_seconds));
    bhttp::async_read_header(stream_, buffer_, *header_parser_,
                             [self = this->shared_from_this()](beast::error_code ec, size_t) { self->on_header(ec); });
  }

  // The header has arrived: a route that streams its body (STOW-RS) reads it
  // from a handler thread as it comes; any other request is read whole (at
  // most 64 KiB of body) first.
  void on_header(beast::error_code ec) {
    if (ec) {
      on_read(ec);
      return;
    }
    const auto& h = header_parser_->get();
    if (http::streams_body(h.method(), parse_segments(std::string(h.target())))) {
      beast::get_lowest_layer(stream_).expires_never();
      net::post(api_.handlers, [self = this->shared_from_this()] { self->respond_streaming(); });
      return;
    }
    constexpr uint64_t kMaxBody = 64 * 1024;
    const auto length = header_parser_->content_length();
    parser_.emplace(std::move(*header_parser_));
    header_parser_.reset();
    parser_->body_limit(kMaxBody);
    if (length && *length > kMaxBody) {
      on_read(bhttp::error::body_limit);
      return;
    }
    bhttp::async_read(stream_, buffer_, *parser_,
                      [self = this->shared_from_this()](beast::error_code e, size_t) { self->on_read(e); });
  }

  void on_read(beast::error_code ec) {
    if (ec == bhttp::error::end_of_stream || ec == beast::error::timeout || ec == net::error::operation_aborted ||
        ec == net::error::connection_reset || ec == net::error::eof || ec == net::ssl::error::stream_truncated) {
      close();
      return;
    }
    if (ec) {
      // A parse error (not HTTP, or over the limits): answer once and close.
      // Any other error is the socket's: nothing to answer.
      const bool parse_error = ec.category() == beast::error_code(bhttp::error::bad_target).category() &&
                               ec != bhttp::error::partial_message;
      if (!parse_error) {
        close();
        return;
      }
      unsigned status = 400;
      if (ec == bhttp::error::body_limit) status = 413;
      if (ec == bhttp::error::header_limit) status = 431;
      http::count_response(status);
      send(error_response(status, "malformed HTTP request: " + ec.message()), bhttp::verb::get, 11, false);
      return;
    }
    beast::get_lowest_layer(stream_).expires_never();  // handling may take a while (PNG rendering); the client waits
    bhttp::request<bhttp::string_body> request = parser_->release();
    // Liveness and the page's static files answer on this I/O thread, so that
    // they never queue behind slow handlers (large PNGs, a busy database).
    const std::string target(request.target());
    const bool answer_here = target == "/healthz" || target == "/" || target.rfind("/web/", 0) == 0;
    if (answer_here) {
      respond(request);
      return;
    }
    net::post(api_.handlers, [self = this->shared_from_this(), request = std::move(request)]() mutable {
      self->respond(request);
    });
  }

  // Handles one request (on whichever thread calls it) and writes the answer
  // from the connection's strand.
  void respond(bhttp::request<bhttp::string_body>& request) {
    ApiResponse response = api_.handle(request, std::move(request.body()), {}, remote_, kTls);
    post_send(std::move(response), request.method(), request.version(), request.keep_alive());
  }

  // A streaming route on a handler thread: the handler pulls the body through
  // read_body, each read done on the connection's strand under the read
  // timeout and waited for here. The connection is kept only if the handler
  // read the body to its end.
  void respond_streaming() {
    body_parser_.emplace(std::move(*header_parser_));
    header_parser_.reset();
    body_parser_->body_limit(std::numeric_limits<std::uint64_t>::max());  // streamed to disk: no limit in memory
    buffer_.reserve(64 * 1024);  // socket reads of up to 64 KiB (Beast reads what the buffer has room for)
    const auto& header = body_parser_->get();
    if (beast::iequals(header[bhttp::field::expect], "100-continue")) {
      bhttp::response<bhttp::empty_body> go_on{bhttp::status::continue_, header.version()};
      beast::error_code ignored;
      wait_on_strand([&](std::function<void(beast::error_code)> done) {
        bhttp::async_write(stream_, go_on, [done](beast::error_code e, size_t) { done(e); });
      }, ignored);
    }
    auto read_body = [this](char* out, size_t n) -> size_t {
      if (n == 0) return 0;
      auto& body = body_parser_->get().body();
      body.data = out;
      body.size = n;
      body.more = true;
      // A read may parse only framing (a chunk header): read until body bytes came or the body ended.
      while (body.size == n && !body_parser_->is_done()) {
        beast::error_code ec;
        wait_on_strand([&](std::function<void(beast::error_code)> done) { read_body_some(std::move(done)); }, ec);
        if (ec)
          throw http::BodyReadError(ec == beast::error::timeout
                                        ? "no data for " + std::to_string(api_.options.read_timeout_seconds) + " s"
                                        : ec.message());
      }
      return n - body.size;
    };
    ApiResponse response = api_.handle(header, {}, read_body, remote_, kTls);
    const bool complete = body_parser_->is_done();
    post_send(std::move(response), header.method(), header.version(), header.keep_alive() && complete);
  }

  // On the strand: reads into the handler's buffer (body_parser_'s) while
  // bytes are at hand, so that one hand-over to the handler thread carries
  // up to its whole buffer, not one socket read; returns as soon as nothing
  // more is waiting (a client that pauses still has its complete parts seen).
  void read_body_some(std::function<void(beast::error_code)> done) {
    beast::get_lowest_layer(stream_).expires_after(std::chrono::seconds(api_.options.read_timeout_seconds));
    bhttp::async_read_some(stream_, buffer_, *body_parser_,
                           [self = this->shared_from_this(), done = std::move(done)](beast::error_code e, size_t) mutable {
                             if (e == bhttp::error::need_buffer) e = {};
                             beast::error_code ignored;
                             const bool room = self->body_parser_->get().body().size > 0;
                             const bool waiting = self->buffer_.size() > 0 ||
                                                  beast::get_lowest_layer(self->stream_).socket().available(ignored) > 0;
                             if (!e && room && waiting && !self->body_parser_->is_done()) {
                               self->read_body_some(std::move(done));
                               return;
                             }
                             done(e);
                           });
  }

  // Starts an operation on the connection's strand and waits for its
  // completion (or for the server to stop: the operation is then abandoned).
  void wait_on_strand(const std::function<void(std::function<void(beast::error_code)>)>& start, beast::error_code& ec) {
    auto result = std::make_shared<std::promise<beast::error_code>>();
    auto finished = result->get_future();
    net::post(stream_.get_executor(), [self = this->shared_from_this(), result, &start] {
      start([result](beast::error_code e) { result->set_value(e); });
    });
    while (finished.wait_for(std::chrono::milliseconds(200)) != std::future_status::ready)
      if (!api_.running) throw http::BodyReadError("the server is stopping");
    ec = finished.get();
    net::post(stream_.get_executor(),
              [self = this->shared_from_this()] { beast::get_lowest_layer(self->stream_).expires_never(); });
  }

  void post_send(ApiResponse response, bhttp::verb method, unsigned version, bool keep_alive) {
    net::post(stream_.get_executor(), [self = this->shared_from_this(), response = std::move(response), method, version,
                                       keep_alive]() mutable {
      self->send(std::move(response), method, version, keep_alive);
    });
  }

  void send(ApiResponse r, bhttp::verb method, unsigned version, bool keep_alive) {
    response_ = {};
    response_.version(version);
    response_.result(r.status);
    response_.set(bhttp::field::server, "firstread");
    response_.set(bhttp::field::content_type, r.content_type);
    response_.set("X-Content-Type-Options", "nosniff");
    if constexpr (kTls) response_.set("Strict-Transport-Security", "max-age=31536000");
    for (const auto& [name, value] : r.headers) response_.set(name, value);
    response_.keep_alive(keep_alive);
    const size_t length = r.body.size();
    if (method != bhttp::verb::head) response_.body() = std::move(r.body);
    response_.content_length(length);
    // a slow reader of a large file is dropped eventually
    beast::get_lowest_layer(stream_).expires_after(std::chrono::seconds(120));
    bhttp::async_write(stream_, response_,
                       [self = this->shared_from_this(), keep_alive](beast::error_code ec, size_t) {
                         if (ec || !keep_alive) {
                           self->close();
                           return;
                         }
                         self->read_request();
                       });
  }

  // HTTPS sends its close_notify first (briefly: a vanished client is not waited for).
  void close() {
    if constexpr (kTls) {
      if (!shutting_down_) {
        shutting_down_ = true;
        beast::get_lowest_layer(stream_).expires_after(std::chrono::seconds(2));
        stream_.async_shutdown([self = this->shared_from_this()](beast::error_code) { self->close_socket(); });
        return;
      }
    }
    close_socket();
  }

  void close_socket() {
    beast::error_code ignored;
    auto& socket = beast::get_lowest_layer(stream_).socket();
    socket.shutdown(tcp::socket::shutdown_send, ignored);
    socket.close(ignored);
  }

  Stream stream_;
  HttpApi::Impl& api_;
  std::string remote_;  // the client's address, for the audit log
  bool shutting_down_ = false;
  beast::flat_buffer buffer_;
  std::optional<bhttp::request_parser<bhttp::empty_body>> header_parser_;
  std::optional<bhttp::request_parser<bhttp::string_body>> parser_;
  std::optional<bhttp::request_parser<bhttp::buffer_body>> body_parser_;
  bhttp::response<bhttp::string_body> response_;
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
      beast::error_code endpoint_error;
      const auto peer = socket.remote_endpoint(endpoint_error);
      std::string remote = endpoint_error ? "?" : peer.address().to_string();
      if (api.ssl)
        std::make_shared<Session<beast::ssl_stream<beast::tcp_stream>>>(api, std::move(remote), std::move(socket),
                                                                         *api.ssl)
            ->start();
      else
        std::make_shared<Session<beast::tcp_stream>>(api, std::move(remote), std::move(socket))->start();
    }
    accept_next(api);
  });
}

}  // namespace

HttpApiOptions http_api_options(const config::HttpConfig& http, const std::string& storage_path) {
  HttpApiOptions o;
  o.listen = http.listen;
  o.token = http.token;
  o.users = http.users;
  o.tls_certificate = http.tls_certificate;
  o.tls_private_key = http.tls_private_key;
  o.audit_log = !http.audit_log.empty() ? http.audit_log : storage_path.empty() ? "" : storage_path + "/audit.log";
  o.cors_origins = http.cors_origins;
  return o;
}

HttpApi::HttpApi(HttpApiOptions options, db::ConnectionPool& pool, const storage::FileStorage& storage,
                 std::function<std::string()> models_status)
    : impl_(std::make_unique<Impl>(std::move(options), pool, storage, std::move(models_status))) {}

HttpApi::~HttpApi() { stop(); }

void HttpApi::set_confirm_report(ConfirmReport fn) { impl_->context.confirm_report = std::move(fn); }
void HttpApi::receive_instances(ingest::InstanceIngest& ingest, std::function<std::string()> admission) {
  impl_->context.ingest = &ingest;
  impl_->context.admission = std::move(admission);
}

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
    port = static_cast<int>(http_parse::integer("port", listen.substr(colon + 1), 0, 65535));
  } catch (const std::invalid_argument& e) {
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
  const bool tokens = api.context.access.enabled();
  spdlog::info("http: listening on {}:{} ({}{}{})", host, bound_port_, api.ssl ? "HTTPS" : "plain HTTP",
               tokens ? ", bearer tokens required: " + std::to_string(api.options.users.size()) + " user(s)" +
                            (api.options.token.empty() ? "" : " + the shared http.token (admin)")
                      : ", no authentication",
               api.context.audit.is_open() ? ", audit log " + api.options.audit_log : "");
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
