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
#include "app/http/server_impl.h"

namespace firstread::app {

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

namespace {

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
