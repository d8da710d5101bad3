#include "app/http/parse.h"

#include <gtest/gtest.h>

#include <stdexcept>

using namespace firstread::app::http_parse;

TEST(HttpParse, PercentDecoding) {
  EXPECT_EQ(percent_decode("a%20b%2Fc+d"), "a b/c+d");
  EXPECT_EQ(percent_decode("%E8%82%BA"), "\xE8\x82\xBA");
  EXPECT_EQ(percent_decode(""), "");
  for (const char* bad : {"%", "%2", "%zz", "a%g0", "%2g"}) EXPECT_THROW(percent_decode(bad), std::invalid_argument) << bad;
}

TEST(HttpParse, IntegersWithRangeAndClearMessages) {
  EXPECT_EQ(integer("limit", "50", 1, 500), 50);
  EXPECT_EQ(integer("frame", "0", 0, 10), 0);
  EXPECT_EQ(integer("n", "-5", -10, 10), -5);
  EXPECT_EQ(integer("id", "999999999999999999", 1, 999999999999999999LL), 999999999999999999LL);
  for (const char* bad : {"", "ten", "1.5", "+3", " 3", "3 ", "0x10", "-"}) {
    try {
      integer("limit", bad, 1, 500);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("limit: '"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("is not an integer"), std::string::npos) << e.what();
    }
  }
  for (const char* out_of_range : {"0", "501", "-1", "99999999999999999999"}) {
    try {
      integer("limit", out_of_range, 1, 500);
      ADD_FAILURE() << "accepted " << out_of_range;
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("out of range 1..500"), std::string::npos) << e.what();
    }
  }
}

TEST(HttpParse, Iso8601Shapes) {
  for (const char* good : {"2026-11-25", "2026-11-25T08:00", "2026-11-25T08:00:00Z", "2026-11-25 08:00:00.123456",
                           "2026-11-25T08:00:00+01:00", "2026-11-25T08:00:00-0500", "2026-11-25t08:00:00z",
                           "2026-11-25T08:00+02"})
    EXPECT_TRUE(looks_like_iso8601(good)) << good;
  for (const char* bad : {"", "yesterday", "2026-1-25", "2026/11/25", "2026-11-25T8:00", "2026-11-25T08:00:00.",
                          "2026-11-25T08:00:00Zx", "2026-11-25T08:00:00+1", "2026-11-25X08:00", "20261125"})
    EXPECT_FALSE(looks_like_iso8601(bad)) << bad;
}

TEST(HttpParse, Base64UrlRoundTripsAndRefusesOtherAlphabets) {
  for (const std::string s : {std::string(), std::string("v1:123:1.2.3"), std::string("\x00\xff\x10", 3),
                              std::string("ab"), std::string("abc"), std::string("abcd")}) {
    const std::string encoded = base64url_encode(s);
    EXPECT_EQ(encoded.find_first_of("+/="), std::string::npos) << encoded;
    EXPECT_EQ(base64url_decode(encoded), s);
  }
  EXPECT_EQ(base64url_encode("v1:123:abc"), "djE6MTIzOmFiYw");
  EXPECT_FALSE(base64url_decode("not-a-cursor!"));
  EXPECT_FALSE(base64url_decode("ab+/"));
  EXPECT_FALSE(base64url_decode(std::string("ab\0c", 4)));
}
