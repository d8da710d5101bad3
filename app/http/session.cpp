// One HTTP connection on Boost.Beast, plain or HTTPS: its reads and writes
// run asynchronously on the I/O threads, each request is handled on the
// handler pool (HttpApi::Impl::handle), and a streaming route's body is
// read as the handler asks for it. A client that sends half a request holds
// no thread, only a socket, and is dropped after the read timeout.
#include "app/http/polled_socket.h"
#include "app/http/server_impl.h"

namespace firstread::app {

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
  // read_body. Plain HTTP reads the socket right here, on the handler's thread
  // (no hand-over per read: the strand has no operation pending meanwhile);
  // HTTPS does each read on the connection's strand and waits for it. Both
  // under the read timeout. The connection is kept only if the handler read
  // the body to its end.
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
      // A read may parse only framing (a chunk header): read until body bytes
      // came or the body ended (plain HTTP: then on while more bytes are already waiting).
      while (!body_parser_->is_done() && body.size > 0 && (body.size == n || (!kTls && bytes_waiting()))) {
        beast::error_code ec;
        if constexpr (kTls)
          wait_on_strand([&](std::function<void(beast::error_code)> done) { read_body_some(std::move(done)); }, ec);
        else
          read_body_here(ec);
        if (ec)
          throw http::BodyReadError(ec == beast::error::timeout
                                        ? "no data for " + std::to_string(api_.options.read_timeout_seconds) + " s"
                                        : ec.message());
      }
      return n - body.size;
    };
    ApiResponse response = api_.handle(header, {}, read_body, remote_, kTls);
    const bool keep_alive = header.keep_alive() && body_parser_->is_done();
    if constexpr (!kTls) {
      // The answer goes out from here too (the client has it one hand-over
      // sooner); the strand then reads the next request or closes.
      prepare_response(std::move(response), header.method(), header.version(), keep_alive);
      PolledSocket socket{beast::get_lowest_layer(stream_).socket(), kWriteTimeoutSeconds, api_.running};
      beast::error_code ec;
      bhttp::write(socket, response_, ec);
      net::post(stream_.get_executor(),
                [self = this->shared_from_this(), ec, keep_alive] { self->after_write(ec, keep_alive); });
      return;
    }
    post_send(std::move(response), header.method(), header.version(), keep_alive);
  }

  // Bytes of the body already received (parsed or not yet).
  bool bytes_waiting() {
    beast::error_code ignored;
    return buffer_.size() > 0 || beast::get_lowest_layer(stream_).socket().available(ignored) > 0;
  }

  // Plain HTTP, on the handler's thread: one read of the socket into buffer_
  // (once poll says bytes are there, within the read timeout; checking every
  // 200 ms whether the server stops), parsed into the handler's buffer.
  void read_body_here(beast::error_code& ec) {
    PolledSocket socket{beast::get_lowest_layer(stream_).socket(), api_.options.read_timeout_seconds, api_.running};
    bhttp::read_some(socket, buffer_, *body_parser_, ec);
    if (ec == bhttp::error::need_buffer) ec = {};
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

  void prepare_response(ApiResponse r, bhttp::verb method, unsigned version, bool keep_alive) {
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
  }

  void send(ApiResponse r, bhttp::verb method, unsigned version, bool keep_alive) {
    prepare_response(std::move(r), method, version, keep_alive);
    // a slow reader of a large file is dropped eventually
    beast::get_lowest_layer(stream_).expires_after(std::chrono::seconds(kWriteTimeoutSeconds));
    bhttp::async_write(stream_, response_, [self = this->shared_from_this(), keep_alive](beast::error_code ec, size_t) {
      self->after_write(ec, keep_alive);
    });
  }

  // On the strand, once an answer is written: the next request, or the end.
  void after_write(beast::error_code ec, bool keep_alive) {
    if (ec || !keep_alive) {
      close();
      return;
    }
    read_request();
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

  static constexpr int kWriteTimeoutSeconds = 120;
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

}  // namespace

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


}  // namespace firstread::app
