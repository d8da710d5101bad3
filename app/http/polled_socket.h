// A connected socket read and written synchronously on the calling thread,
// under a timeout (session.cpp: the body of a streaming route and its answer,
// on the handler's thread).
#pragma once

#include <poll.h>

#include <atomic>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core/error.hpp>
#include <boost/asio/error.hpp>
#include <chrono>
#include <cerrno>

namespace firstread::app {

// A connected socket as a synchronous stream for Beast, read and written on
// the calling thread: each read or write first waits (poll) until the socket
// is ready, at most the timeout, and gives up when the server stops.
class PolledSocket {
 public:
  PolledSocket(boost::asio::ip::tcp::socket& socket, int timeout_seconds, const std::atomic<bool>& running)
      : socket_(socket), timeout_(std::chrono::seconds(timeout_seconds)), running_(running) {}

  template <class Buffers>
  size_t read_some(const Buffers& buffers, boost::beast::error_code& ec) {
    return wait(POLLIN, ec) ? socket_.read_some(buffers, ec) : 0;
  }
  template <class Buffers>
  size_t write_some(const Buffers& buffers, boost::beast::error_code& ec) {
    return wait(POLLOUT, ec) ? socket_.write_some(buffers, ec) : 0;
  }
  template <class Buffers>
  size_t read_some(const Buffers& buffers) {
    return or_throw([&](boost::beast::error_code& ec) { return read_some(buffers, ec); });
  }
  template <class Buffers>
  size_t write_some(const Buffers& buffers) {
    return or_throw([&](boost::beast::error_code& ec) { return write_some(buffers, ec); });
  }

 private:
  bool wait(short events, boost::beast::error_code& ec) {
    const auto deadline = std::chrono::steady_clock::now() + timeout_;
    for (;;) {
      pollfd ready{socket_.native_handle(), events, 0};
      const int r = ::poll(&ready, 1, 200);
      if (r > 0) return true;
      if (r < 0 && errno != EINTR) {
        ec.assign(errno, boost::system::system_category());
        return false;
      }
      if (!running_) {
        ec = boost::asio::error::operation_aborted;
        return false;
      }
      if (std::chrono::steady_clock::now() >= deadline) {
        ec = boost::beast::error::timeout;
        return false;
      }
    }
  }
  template <class Io>
  static size_t or_throw(Io&& io) {
    boost::beast::error_code ec;
    const size_t n = io(ec);
    if (ec) throw boost::system::system_error(ec);
    return n;
  }

  boost::asio::ip::tcp::socket& socket_;
  std::chrono::steady_clock::duration timeout_;
  const std::atomic<bool>& running_;
};

}  // namespace firstread::app
