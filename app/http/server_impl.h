// What the HTTP transport's parts share: HttpApi::Impl (the context, the
// I/O threads, the handler pool, TLS) and the accept loop that starts a
// session per connection (session.cpp). server.cpp builds and runs it.
#pragma once

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

// The path of a target split at '/' (empty segments dropped), each
// percent-decoded; empty when a segment cannot be decoded.
std::vector<std::string> parse_segments(const std::string& target);

// Accepts the next connection and starts its session (plain or HTTPS), then
// waits for the one after it (session.cpp).
void accept_next(HttpApi::Impl& api);

}  // namespace firstread::app
