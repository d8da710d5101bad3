#include "dicom/text.h"

#include <gtest/gtest.h>

#include <string>

using firstread::dicom::first_invalid_utf8;
using firstread::dicom::sanitize_utf8_text;
using firstread::dicom::truncate_utf8_bytes;
using firstread::dicom::truncate_utf8_code_points;
using firstread::dicom::utf8_code_points;

namespace {
const std::string kReplacement = "\xEF\xBF\xBD";  // U+FFFD
}

TEST(DicomText, FindsTheFirstIllFormedByte) {
  EXPECT_EQ(first_invalid_utf8("plain ascii"), std::string::npos);
  EXPECT_EQ(first_invalid_utf8("右肺上叶结节 🫁"), std::string::npos);
  EXPECT_EQ(first_invalid_utf8("truncated \xE7\xBB"), 10u);
  EXPECT_EQ(first_invalid_utf8("ab\x80"), 2u) << "stray continuation byte";
  EXPECT_EQ(first_invalid_utf8("\xC0\xAF"), 0u) << "overlong '/'";
  EXPECT_EQ(first_invalid_utf8("x\xED\xA0\x80"), 1u) << "a surrogate";
  EXPECT_EQ(first_invalid_utf8("\xF4\x90\x80\x80"), 0u) << "past U+10FFFF";
  EXPECT_EQ(first_invalid_utf8(std::string("nul\0ok", 6)), std::string::npos) << "NUL is valid UTF-8";
}

TEST(DicomText, KeepsValidTextAndTheWhitespaceDicomTextAllows) {
  EXPECT_EQ(sanitize_utf8_text("line\nnext\ttab\r\n"), "line\nnext\ttab\r\n");
  EXPECT_EQ(sanitize_utf8_text("结节 nodule"), "结节 nodule");
  EXPECT_EQ(sanitize_utf8_text("胰腺癌：低密度灶 🫁"), "胰腺癌：低密度灶 🫁") << "four-byte characters survive";
  EXPECT_EQ(sanitize_utf8_text(""), "");
}

TEST(DicomText, DropsControlCharacters) {
  EXPECT_EQ(sanitize_utf8_text(std::string("a\x1c b\0c", 6)), "a bc");
  EXPECT_EQ(sanitize_utf8_text("del\x7F!"), "del!");
  EXPECT_EQ(sanitize_utf8_text("\x1b[31mred"), "[31mred") << "ESC too: ISO_IR 192 has no code extensions";
}

TEST(DicomText, ReplacesIllFormedSequencesWithU_FFFD) {
  EXPECT_EQ(sanitize_utf8_text("bad \xff\xfe byte"), "bad " + kReplacement + kReplacement + " byte");
  EXPECT_EQ(sanitize_utf8_text("cut \xe7\xbb"), "cut " + kReplacement) << "one maximal subpart, one U+FFFD";
  EXPECT_EQ(sanitize_utf8_text("\xed\xa0\x80"), kReplacement + kReplacement + kReplacement) << "a surrogate";
  EXPECT_EQ(sanitize_utf8_text("\xC0\xAF"), kReplacement + kReplacement) << "overlong";
  const std::string repaired = sanitize_utf8_text("x\xe7\xbb y \xF4\x90\x80\x80 z");
  EXPECT_EQ(first_invalid_utf8(repaired), std::string::npos) << repaired;
}

TEST(DicomText, TruncatesAtCodePointsByBytesAndByCharacters) {
  // "结" is 3 bytes: a 64-byte LO limit must not split it.
  const std::string chinese = std::string(62, 'a') + "结节";
  EXPECT_EQ(truncate_utf8_bytes(chinese, 64), std::string(62, 'a')) << "the 3-byte character at bytes 62..64 is dropped whole";
  EXPECT_EQ(truncate_utf8_bytes(chinese, 65), std::string(62, 'a') + "结");
  EXPECT_EQ(truncate_utf8_bytes("short", 64), "short");
  EXPECT_EQ(truncate_utf8_bytes("🫁x", 3), "") << "a 4-byte character does not fit in 3 bytes";
  EXPECT_EQ(truncate_utf8_code_points("右肺上叶结节", 2), "右肺");
  EXPECT_EQ(truncate_utf8_code_points("🫁 nodule", 3), "🫁 n");
  EXPECT_EQ(truncate_utf8_code_points("ab", 64), "ab");
}

TEST(DicomText, CodePointsOfUtf8) {
  EXPECT_EQ(utf8_code_points("a结🫁"), std::u32string({U'a', U'\u7ed3', U'\U0001FAC1'}));
  EXPECT_EQ(utf8_code_points("x\xff"), std::u32string({U'x', U'\uFFFD'})) << "ill-formed byte";
}
