#include "app/http/dicomweb_multipart.h"

#include <cctype>
#include <cstring>
#include <random>
#include <stdexcept>

namespace firstread::app::http {
namespace {

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string trim(const std::string& s) {
  size_t a = 0, b = s.size();
  while (a < b && (s[a] == ' ' || s[a] == '\t')) ++a;
  while (b > a && (s[b - 1] == ' ' || s[b - 1] == '\t')) --b;
  return s.substr(a, b - a);
}

// Splits at `sep` outside double quotes.
std::vector<std::string> split_unquoted(const std::string& text, char sep) {
  std::vector<std::string> out(1);
  bool quoted = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '"') quoted = !quoted;
    if (c == '\\' && quoted && i + 1 < text.size()) {
      out.back() += c;
      out.back() += text[++i];
      continue;
    }
    if (c == sep && !quoted) {
      out.emplace_back();
      continue;
    }
    out.back() += c;
  }
  return out;
}

std::string unquote(const std::string& v) {
  if (v.size() < 2 || v.front() != '"' || v.back() != '"') return v;
  std::string out;
  for (size_t i = 1; i + 1 < v.size(); ++i) {
    if (v[i] == '\\' && i + 2 < v.size()) ++i;
    out += v[i];
  }
  return out;
}

constexpr size_t kMaxPartHeaderBytes = 16 * 1024;

}  // namespace

MediaType parse_media_type(const std::string& text) {
  const auto pieces = split_unquoted(text, ';');
  MediaType m;
  m.type = lower(trim(pieces[0]));
  if (m.type.empty() || m.type.find('/') == std::string::npos)
    throw std::invalid_argument("media type '" + text.substr(0, 120) + "' is not type/subtype");
  for (size_t i = 1; i < pieces.size(); ++i) {
    const std::string p = trim(pieces[i]);
    if (p.empty()) continue;
    const size_t eq = p.find('=');
    if (eq == std::string::npos) throw std::invalid_argument("media type parameter '" + p + "' has no value");
    m.params[lower(trim(p.substr(0, eq)))] = unquote(trim(p.substr(eq + 1)));
  }
  return m;
}

std::vector<MediaType> parse_accept(const std::string& text) {
  std::vector<MediaType> out;
  for (const auto& range : split_unquoted(text, ','))
    if (!trim(range).empty()) out.push_back(parse_media_type(range));
  return out;
}

MultipartReader::MultipartReader(const std::string& boundary, Events events)
    : delimiter_("\r\n--" + boundary), events_(std::move(events)) {
  if (boundary.empty() || boundary.size() > 70) throw std::invalid_argument("multipart boundary must be 1..70 characters");
  // The first delimiter may open the body without a CRLF before it.
  buffer_ = "\r\n";
}

void MultipartReader::feed(const char* data, size_t size) {
  if (state_ == State::epilogue) return;
  buffer_.append(data, size);
  run();
}

void MultipartReader::run() {
  size_t consumed = 0;
  auto rest = [&] { return buffer_.size() - consumed; };
  for (bool progress = true; progress && state_ != State::epilogue;) {
    progress = false;
    switch (state_) {
      case State::preamble:
      case State::body: {
        const void* hit = memmem(buffer_.data() + consumed, rest(), delimiter_.data(), delimiter_.size());
        if (hit) {
          const size_t at = static_cast<size_t>(static_cast<const char*>(hit) - buffer_.data());
          if (state_ == State::body) {
            if (at > consumed) events_.part_data(buffer_.data() + consumed, at - consumed);
            events_.end_part();
          }
          consumed = at + delimiter_.size();
          state_ = State::after_delimiter;
          progress = true;
        } else if (rest() >= delimiter_.size()) {
          // Everything but a possible delimiter's beginning at the end is body.
          const size_t keep = delimiter_.size() - 1;
          const size_t n = rest() - keep;
          if (state_ == State::body) events_.part_data(buffer_.data() + consumed, n);
          consumed += n;
        }
        break;
      }
      case State::after_delimiter: {
        // "--" closes; otherwise optional transport padding, then CRLF.
        if (rest() < 2) break;
        if (buffer_.compare(consumed, 2, "--") == 0) {
          state_ = State::epilogue;
          consumed = buffer_.size();
          break;
        }
        const size_t crlf = buffer_.find("\r\n", consumed);
        if (crlf == std::string::npos) {
          if (rest() > 256) throw std::invalid_argument("multipart: no line end after a boundary delimiter");
          break;
        }
        for (size_t i = consumed; i < crlf; ++i)
          if (buffer_[i] != ' ' && buffer_[i] != '\t')
            throw std::invalid_argument("multipart: unexpected characters after a boundary delimiter");
        consumed = crlf + 2;
        state_ = State::headers;
        progress = true;
        break;
      }
      case State::headers: {
        std::map<std::string, std::string> headers;
        size_t end;
        if (rest() >= 2 && buffer_.compare(consumed, 2, "\r\n") == 0) {
          end = consumed;  // no header fields
        } else {
          end = buffer_.find("\r\n\r\n", consumed);
          if (end == std::string::npos) {
            if (rest() > kMaxPartHeaderBytes)
              throw std::invalid_argument("multipart: a part's header fields exceed 16 KiB");
            break;
          }
          size_t line_start = consumed;
          while (line_start < end + 2) {
            const size_t line_end = buffer_.find("\r\n", line_start);
            const std::string line = buffer_.substr(line_start, line_end - line_start);
            const size_t colon = line.find(':');
            if (colon == std::string::npos || colon == 0)
              throw std::invalid_argument("multipart: malformed part header line '" + line.substr(0, 80) + "'");
            headers[lower(trim(line.substr(0, colon)))] = trim(line.substr(colon + 1));
            line_start = line_end + 2;
          }
          end += 2;
        }
        consumed = end + 2;
        ++parts_;
        events_.begin_part(headers);
        state_ = State::body;
        progress = true;
        break;
      }
      case State::epilogue:
        break;
    }
  }
  buffer_.erase(0, consumed);
}

MultipartWriter::MultipartWriter() {
  std::random_device rd;
  std::mt19937_64 gen(rd());
  char buf[40];
  snprintf(buf, sizeof buf, "firstread-%016llx", static_cast<unsigned long long>(gen()));
  boundary_ = buf;
}

void MultipartWriter::add(const std::string& content_type, const std::string& data, const std::string& extra_headers) {
  body_ += "--" + boundary_ + "\r\nContent-Type: " + content_type + "\r\n" + extra_headers +
           "Content-Length: " + std::to_string(data.size()) + "\r\n\r\n";
  body_ += data;
  body_ += "\r\n";
}

std::string MultipartWriter::finish() {
  body_ += "--" + boundary_ + "--\r\n";
  return std::move(body_);
}

}  // namespace firstread::app::http
