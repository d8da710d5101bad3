#include "config/logging.h"

#include <gtest/gtest.h>

TEST(Logging, JsonEscapeKeepsLinesParseable) {
  EXPECT_EQ(firstread::json_escape("a\"b\\c\nd\x01"), "a\\\"b\\\\c\\nd\\u0001");
  EXPECT_EQ(firstread::json_escape("肺结节"), "肺结节");
}

TEST(Logging, SetupTwiceDoesNotThrow) {
  firstread::config::LogConfig log;
  log.format = "json";
  EXPECT_NO_THROW(firstread::setup_logging(log));
  log.format = "text";
  EXPECT_NO_THROW(firstread::setup_logging(log));
}
