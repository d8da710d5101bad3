// How the STOW-RS sender reads a server's PS3.18 answer (the answers of
// Orthanc's DICOMweb plugin and of firstread itself are exercised end to end
// in tests/dicomweb_test.cpp): sent only when the instance is listed stored.
#include <gtest/gtest.h>

#include "reports/stowrs_sender.h"

using firstread::reports::stow_outcome;

namespace {
const std::string kSop = "1.2.3.4.5";
const std::string kStored =
    R"({"00081190":{"vr":"UR","Value":["http://h/studies/1.2"]},"00081199":{"vr":"SQ","Value":[)"
    R"({"00081150":{"vr":"UI","Value":["1.2.840.10008.5.1.4.1.1.88.34"]},"00081155":{"vr":"UI","Value":["1.2.3.4.5"]}}]}})";
const std::string kFailed =
    R"({"00081198":{"vr":"SQ","Value":[{"00081155":{"vr":"UI","Value":["1.2.3.4.5"]},"00081197":{"vr":"US","Value":[43264]}}]}})";
}  // namespace

TEST(StowrsSender, StoredOnlyWhenListedInReferencedSopSequence) {
  EXPECT_EQ(stow_outcome(200, kStored, kSop), "");
  EXPECT_EQ(stow_outcome(202, kStored, kSop), "");
  EXPECT_NE(stow_outcome(200, kStored, "9.9.9"), "");
  EXPECT_NE(stow_outcome(200, "{}", kSop).find("does not list the instance"), std::string::npos);
}

TEST(StowrsSender, FailuresNameTheReasonOrTheStatus) {
  EXPECT_NE(stow_outcome(409, kFailed, kSop).find("HTTP 409"), std::string::npos);
  EXPECT_NE(stow_outcome(202, kFailed, kSop).find("failure reason 0xA900"), std::string::npos);
  EXPECT_NE(stow_outcome(401, "", kSop).find("HTTP 401"), std::string::npos);
  EXPECT_NE(stow_outcome(200, "<html>", kSop).find("not DICOM JSON"), std::string::npos);
}
