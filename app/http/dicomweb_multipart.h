// multipart/related (RFC 2387 on RFC 2046's multipart syntax) for DICOMweb:
// media types with their parameters (Content-Type, each Accept entry), a
// reader that splits a body into parts as it streams in (STOW-RS: a part is
// never whole in memory), and a writer for WADO-RS answers.
#pragma once

#include <cstddef>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace firstread::app::http {

struct MediaType {
  std::string type;                           // lower case: "multipart/related"
  std::map<std::string, std::string> params;  // names lower case, values unquoted
  std::string param(const std::string& name) const {
    auto it = params.find(name);
    return it == params.end() ? "" : it->second;
  }
};

// `type/subtype; name=value; name="quoted value"`. Throws std::invalid_argument
// naming what is malformed.
MediaType parse_media_type(const std::string& text);
// An Accept header: its comma-separated media ranges (commas inside quotes kept).
std::vector<MediaType> parse_accept(const std::string& text);

// Splits a multipart body into parts while it is fed, keeping at most one
// delimiter's length of it (plus a part's header block) in memory.
class MultipartReader {
 public:
  struct Events {
    // A part begins: its header fields (names lower case).
    std::function<void(const std::map<std::string, std::string>& headers)> begin_part;
    // The next bytes of the part's body (any size, possibly several calls).
    std::function<void(const char* data, size_t size)> part_data;
    // The part's body is complete (its closing delimiter was seen).
    std::function<void()> end_part;
  };

  MultipartReader(const std::string& boundary, Events events);

  // The next bytes of the body. Throws std::invalid_argument for a malformed
  // body (a part's headers over 16 KiB or without their blank line).
  void feed(const char* data, size_t size);
  // The close delimiter has been seen (what follows is the epilogue, ignored).
  bool finished() const { return state_ == State::epilogue; }
  int parts_begun() const { return parts_; }

 private:
  enum class State { preamble, after_delimiter, headers, body, epilogue };
  void run();
  std::string delimiter_;  // CRLF "--" boundary
  Events events_;
  State state_ = State::preamble;
  std::string buffer_;  // bytes fed but not yet consumed
  int parts_ = 0;
};

// A multipart/related body being built (WADO-RS answers).
class MultipartWriter {
 public:
  MultipartWriter();
  const std::string& boundary() const { return boundary_; }
  // Adds one part with its Content-Type (and optional extra header lines).
  void add(const std::string& content_type, const std::string& data, const std::string& extra_headers = "");
  // The complete body (close delimiter appended); the writer is spent.
  std::string finish();

 private:
  std::string boundary_;
  std::string body_;
};

}  // namespace firstread::app::http
