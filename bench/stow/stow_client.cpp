// STOW-RS sender for bench/stow: POSTs DICOM files to firstread's
// /dicomweb/studies over one keep-alive connection (TCP_NODELAY), either all
// in one multipart/related request or one request per file, each part
// streamed from its file. Prints the seconds it took; exits 1 unless every
// instance is listed as stored (ReferencedSOPSequence) in the answers.
// Usage: bench_stow_client PORT one|each FILE...
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

namespace {

const std::string kBoundary = "bench-stow-boundary-1f3c";

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

void send_all(int fd, const char* data, size_t size) {
  while (size > 0) {
    const ssize_t n = send(fd, data, size, MSG_NOSIGNAL);
    if (n <= 0) throw std::runtime_error(std::string("send: ") + std::strerror(errno));
    data += n;
    size -= static_cast<size_t>(n);
  }
}

std::string part_header() { return "\r\n--" + kBoundary + "\r\nContent-Type: application/dicom\r\n\r\n"; }

// Sends one request with these files and returns how many the answer lists as stored.
size_t stow(int fd, int port, const std::vector<std::string>& files, std::string& buffer) {
  size_t length = 0;
  std::vector<size_t> sizes;
  for (const auto& f : files) {
    std::ifstream in(f, std::ios::binary | std::ios::ate);
    sizes.push_back(static_cast<size_t>(in.tellg()));
    length += part_header().size() + sizes.back();
  }
  const std::string close = "\r\n--" + kBoundary + "--\r\n";
  length += close.size();
  const std::string header = "POST /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1:" + std::to_string(port) +
                             "\r\nContent-Type: multipart/related; type=\"application/dicom\"; boundary=" +
                             kBoundary + "\r\nAccept: application/dicom+json\r\nContent-Length: " +
                             std::to_string(length) + "\r\n\r\n";
  send_all(fd, header.data(), header.size());
  for (const auto& f : files) {
    const std::string h = part_header(), data = read_file(f);
    send_all(fd, h.data(), h.size());
    send_all(fd, data.data(), data.size());
  }
  send_all(fd, close.data(), close.size());
  // The answer: status line, headers, Content-Length body.
  char chunk[65536];
  size_t header_end;
  while ((header_end = buffer.find("\r\n\r\n")) == std::string::npos) {
    const ssize_t n = recv(fd, chunk, sizeof chunk, 0);
    if (n <= 0) throw std::runtime_error("connection closed before the answer");
    buffer.append(chunk, static_cast<size_t>(n));
  }
  const std::string head = buffer.substr(0, header_end);
  const size_t cl = head.find("Content-Length: ");
  if (cl == std::string::npos) throw std::runtime_error("answer without Content-Length: " + head);
  const size_t body_length = std::stoul(head.substr(cl + 16));
  while (buffer.size() < header_end + 4 + body_length) {
    const ssize_t n = recv(fd, chunk, sizeof chunk, 0);
    if (n <= 0) throw std::runtime_error("connection closed inside the answer");
    buffer.append(chunk, static_cast<size_t>(n));
  }
  const std::string body = buffer.substr(header_end + 4, body_length);
  buffer.erase(0, header_end + 4 + body_length);
  if (head.rfind("HTTP/1.1 200", 0) != 0) throw std::runtime_error(head + "\n" + body.substr(0, 500));
  const auto answer = nlohmann::json::parse(body);
  return answer.contains("00081199") ? answer["00081199"]["Value"].size() : 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4 || (std::string(argv[2]) != "one" && std::string(argv[2]) != "each")) {
    std::cerr << "usage: bench_stow_client PORT one|each FILE...\n";
    return 2;
  }
  const int port = std::atoi(argv[1]);
  const bool one = std::string(argv[2]) == "one";
  std::vector<std::string> files(argv + 3, argv + argc);
  try {
    const auto start = std::chrono::steady_clock::now();
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    const int on = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) throw std::runtime_error("cannot connect");
    std::string buffer;
    size_t stored = 0;
    if (one) {
      stored = stow(fd, port, files, buffer);
    } else {
      for (const auto& f : files) stored += stow(fd, port, {f}, buffer);
    }
    ::close(fd);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    printf("%.4f\n", seconds);
    if (stored != files.size()) {
      std::cerr << "only " << stored << " of " << files.size() << " stored\n";
      return 1;
    }
  } catch (const std::exception& e) {
    std::cerr << "bench_stow_client: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
