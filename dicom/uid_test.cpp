#include "dicom/uid.h"

#include <gtest/gtest.h>

#include <string>

using firstread::dicom::is_valid_uid;

TEST(DicomUid, AcceptsUidsAsPs35Defines) {
  EXPECT_TRUE(is_valid_uid("1.2.840.10008.5.1.4.1.1.2"));
  EXPECT_TRUE(is_valid_uid("1.2.0.3")) << "a component that is 0 itself";
  EXPECT_TRUE(is_valid_uid("0"));
  EXPECT_TRUE(is_valid_uid("2.25.329800735698586629295641978511506172918"));
  EXPECT_TRUE(is_valid_uid(std::string(64, '1')));
}

TEST(DicomUid, RefusesWhatPs35Forbids) {
  EXPECT_FALSE(is_valid_uid(""));
  EXPECT_FALSE(is_valid_uid("1.2.3.04")) << "leading zero";
  EXPECT_FALSE(is_valid_uid("01.2")) << "leading zero in the first component";
  EXPECT_FALSE(is_valid_uid("1.2.00")) << "00 is not 0";
  EXPECT_FALSE(is_valid_uid("1..2")) << "empty component";
  EXPECT_FALSE(is_valid_uid(".1.2"));
  EXPECT_FALSE(is_valid_uid("1.2."));
  EXPECT_FALSE(is_valid_uid("."));
  EXPECT_FALSE(is_valid_uid(std::string(65, '1')));
  EXPECT_FALSE(is_valid_uid("1.2.3 ")) << "padding is the caller's to strip";
  EXPECT_FALSE(is_valid_uid(std::string("1.2\0.3", 6)));
}

TEST(DicomUid, RefusesAnythingThatCouldLeaveStorageAsAPath) {
  EXPECT_FALSE(is_valid_uid("../../etc/passwd"));
  EXPECT_FALSE(is_valid_uid(".."));
  EXPECT_FALSE(is_valid_uid("1.2/3"));
  EXPECT_FALSE(is_valid_uid("1.2\\3"));
  EXPECT_FALSE(is_valid_uid("1.2.3a"));
  EXPECT_FALSE(is_valid_uid("-1.2"));
}
