#include "dicom/uid.h"

#include <gtest/gtest.h>

#include <string>

using firstread::dicom::is_valid_uid;

TEST(DicomUid, AcceptsUidsWithPs35Syntax) {
  EXPECT_TRUE(is_valid_uid("1.2.840.10008.5.1.4.1.1.2"));
  EXPECT_TRUE(is_valid_uid("1.2.0.3")) << "a component that is 0 itself";
  EXPECT_TRUE(is_valid_uid("0"));
  EXPECT_TRUE(is_valid_uid("2.25.329800735698586629295641978511506172918"));
  EXPECT_TRUE(is_valid_uid(std::string(64, '1')));
}

TEST(DicomUid, AcceptsLeadingZerosThatArchivesCarry) {
  EXPECT_TRUE(is_valid_uid("1.2.3.04"));  // invalid per PS3.5 §9.1, harmless as a path, common in the wild
  EXPECT_TRUE(is_valid_uid("999.999.2.19940822.083000")) << "GDCM's sample 00191113.dcm";
}

TEST(DicomUid, RefusesWhatPs35Forbids) {
  EXPECT_FALSE(is_valid_uid(""));
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
