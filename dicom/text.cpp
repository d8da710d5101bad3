#include "dicom/text.h"

#include <unicode/umachine.h>
#include <unicode/ustring.h>
#include <unicode/utf8.h>

#include <climits>
#include <stdexcept>
#include <vector>

namespace firstread::dicom {

size_t first_invalid_utf8(std::string_view text) {
  const auto* bytes = reinterpret_cast<const uint8_t*>(text.data());
  const int64_t size = static_cast<int64_t>(text.size());
  int64_t i = 0;
  while (i < size) {
    const int64_t start = i;
    UChar32 c;
    U8_NEXT(bytes, i, size, c);
    if (c < 0) return static_cast<size_t>(start);
  }
  return std::string::npos;
}

namespace {

bool kept_in_dicom_text(UChar c) { return !((c < 0x20 && c != '\t' && c != '\n' && c != '\r') || c == 0x7F); }

void check(UErrorCode status, const char* what) {
  if (U_FAILURE(status) && status != U_BUFFER_OVERFLOW_ERROR)
    throw std::runtime_error(std::string("sanitize_utf8_text: ") + what + ": " + u_errorName(status));
}

}  // namespace

std::string sanitize_utf8_text(std::string_view text) {
  if (text.size() > static_cast<size_t>(INT32_MAX / 2)) throw std::length_error("sanitize_utf8_text: text too long");
  const int32_t length = static_cast<int32_t>(text.size());
  // Each byte yields at most one UTF-16 unit (a four-byte sequence yields two).
  std::vector<UChar> utf16(static_cast<size_t>(length) + 1);
  int32_t utf16_length = 0;
  UErrorCode status = U_ZERO_ERROR;
  u_strFromUTF8WithSub(utf16.data(), static_cast<int32_t>(utf16.size()), &utf16_length, text.data(), length, 0xFFFD,
                       nullptr, &status);
  check(status, "u_strFromUTF8WithSub");

  int32_t kept = 0;
  for (int32_t i = 0; i < utf16_length; ++i)
    if (kept_in_dicom_text(utf16[i])) utf16[kept++] = utf16[i];

  std::string out(static_cast<size_t>(kept) * 3, '\0');  // at most three bytes per UTF-16 unit
  int32_t out_length = 0;
  status = U_ZERO_ERROR;
  u_strToUTF8(out.data(), static_cast<int32_t>(out.size()), &out_length, utf16.data(), kept, &status);
  check(status, "u_strToUTF8");
  out.resize(static_cast<size_t>(out_length));
  return out;
}

std::string truncate_utf8_bytes(std::string_view text, size_t max_bytes) {
  if (text.size() <= max_bytes) return std::string(text);
  const auto* bytes = reinterpret_cast<const uint8_t*>(text.data());
  int32_t cut = static_cast<int32_t>(max_bytes);
  // Back to the start of the code point that max_bytes falls inside.
  U8_SET_CP_START(bytes, 0, cut);
  return std::string(text.substr(0, static_cast<size_t>(cut)));
}

std::string truncate_utf8_code_points(std::string_view text, size_t max_code_points) {
  const auto* bytes = reinterpret_cast<const uint8_t*>(text.data());
  const int32_t size = static_cast<int32_t>(text.size());
  int32_t i = 0;
  for (size_t n = 0; n < max_code_points && i < size; ++n) U8_FWD_1(bytes, i, size);
  return std::string(text.substr(0, static_cast<size_t>(i)));
}

std::u32string utf8_code_points(std::string_view text) {
  const auto* bytes = reinterpret_cast<const uint8_t*>(text.data());
  const int32_t size = static_cast<int32_t>(text.size());
  std::u32string out;
  for (int32_t i = 0; i < size;) {
    UChar32 c;
    U8_NEXT(bytes, i, size, c);
    out.push_back(c < 0 ? U'\uFFFD' : static_cast<char32_t>(c));
  }
  return out;
}

}  // namespace firstread::dicom
