// The few parsers the HTTP API writes by hand (nothing in Debian's libraries
// does exactly these): percent-decoding, integers (std::from_chars), the
// ISO-8601 shape PostgreSQL then reads, and base64url for opaque cursors.
// Errors are std::invalid_argument with a message naming what was wrong.
#pragma once

#include <optional>
#include <string>

namespace firstread::app::http_parse {

// Percent-decoding ('+' is taken literally). Throws on a malformed escape.
std::string percent_decode(const std::string& in);

// A decimal integer in [min, max]; `name` goes into the message.
long long integer(const std::string& name, const std::string& text, long long min, long long max);

// ISO 8601 date or date-time (optional seconds, fraction and offset):
// YYYY-MM-DD[(T| )hh:mm[:ss[.f]][Z|(+|-)hh[:]mm]]. Field ranges are
// PostgreSQL's to check (a 13th month fails there).
bool looks_like_iso8601(const std::string& s);

std::string base64url_encode(const std::string& in);
std::optional<std::string> base64url_decode(const std::string& in);  // nothing if not base64url

}  // namespace firstread::app::http_parse
