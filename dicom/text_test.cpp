#include "dicom/text.h"

#include <gtest/gtest.h>

#include <string>

using firstread::dicom::first_invalid_utf8;
using firstread::dicom::sanitize_utf8_text;

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
