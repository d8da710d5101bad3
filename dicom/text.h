// Text as DICOM objects written with Specific Character Set ISO_IR 192 (and
// PostgreSQL text columns) accept it: valid UTF-8, checked and repaired with
// ICU rather than by hand.
#pragma once

#include <string>
#include <string_view>

namespace firstread::dicom {

// Byte offset of the first ill-formed UTF-8 sequence (a stray continuation
// byte, a truncated sequence, an overlong form, a surrogate, a value past
// U+10FFFF), or std::string::npos when text is valid UTF-8.
size_t first_invalid_utf8(std::string_view text);

// text as valid UTF-8 for a DICOM text value (UT, LT, ST) and a database:
// every ill-formed sequence becomes U+FFFD (ICU's u_strFromUTF8WithSub, one
// U+FFFD per maximal ill-formed subpart as the Unicode Standard recommends),
// and control characters other than tab, line feed and carriage return
// (C0 and DEL), which those value representations exclude, are dropped.
std::string sanitize_utf8_text(std::string_view text);

// The longest prefix of valid UTF-8 `text` that has at most max_bytes bytes
// (a value length limit such as LO's 64 bytes), never cutting a code point.
std::string truncate_utf8_bytes(std::string_view text, size_t max_bytes);

// The first max_code_points code points of valid UTF-8 `text` (a limit in
// characters, such as Code Meaning's 64).
std::string truncate_utf8_code_points(std::string_view text, size_t max_code_points);

// The code points of valid UTF-8 `text` (ill-formed sequences as U+FFFD).
std::u32string utf8_code_points(std::string_view text);

}  // namespace firstread::dicom
