// SOP Class UIDs firstread names in its own code (PS3.4 Annex B / PS3.6 Annex A).
// DCMTK's dcuid.h has them all as UID_* macros; these are the ones the
// components decide on, kept here so no bare UID string repeats across files.
#pragma once

#include <string_view>

namespace firstread::dicom::sop_class {

// The SR firstread writes (SPEC: Comprehensive 3D SR with TID 1500 as root).
inline constexpr const char* kComprehensive3DSr = "1.2.840.10008.5.1.4.1.1.88.34";

// Every Structured Report storage class (Basic Text, Enhanced, Comprehensive,
// Comprehensive 3D, Key Object Selection, ...) shares this prefix.
inline constexpr std::string_view kStructuredReportPrefix = "1.2.840.10008.5.1.4.1.1.88.";

// Structured reports and other documents carry no pixels for the model.
inline bool is_structured_report(std::string_view sop_class_uid) {
  return sop_class_uid.substr(0, kStructuredReportPrefix.size()) == kStructuredReportPrefix;
}

}  // namespace firstread::dicom::sop_class
