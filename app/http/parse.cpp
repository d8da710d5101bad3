#include "app/http/parse.h"

#include <charconv>
#include <cstring>
#include <stdexcept>

namespace firstread::app::http_parse {
namespace {

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

const char kBase64Url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

}  // namespace

std::string percent_decode(const std::string& in) {
  std::string out;
  out.reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '%') {
      out += in[i];
      continue;
    }
    const int hi = i + 2 < in.size() ? hex_value(in[i + 1]) : -1;
    const int lo = i + 2 < in.size() ? hex_value(in[i + 2]) : -1;
    if (hi < 0 || lo < 0) throw std::invalid_argument("malformed percent escape in URL");
    out += static_cast<char>(hi * 16 + lo);
    i += 2;
  }
  return out;
}

long long integer(const std::string& name, const std::string& text, long long min, long long max) {
  long long value = 0;
  const char* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (text.empty() || text[0] == '+' || ptr != end || (ec != std::errc() && ec != std::errc::result_out_of_range))
    throw std::invalid_argument(name + ": '" + text.substr(0, 40) + "' is not an integer");
  if (ec == std::errc::result_out_of_range || value < min || value > max)
    throw std::invalid_argument(name + ": " + text.substr(0, 40) + " is out of range " + std::to_string(min) + ".." +
                                std::to_string(max));
  return value;
}

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
    const char* found = c == '\0' ? nullptr : std::strchr(kBase64Url, c);
    if (found == nullptr) return std::nullopt;
    value = (value << 6) | static_cast<unsigned>(found - kBase64Url);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((value >> bits) & 0xFF);
    }
  }
  return out;
}

}  // namespace firstread::app::http_parse
