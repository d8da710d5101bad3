// DICOM unique identifiers (PS3.5 §9.1): the one validator every component
// uses before a UID reaches a file name, a query or a DICOM object.
#pragma once

#include <string_view>

namespace firstread::dicom {

// Longest UID PS3.5 §9.1 allows.
inline constexpr size_t kMaxUidLength = 64;

// True when uid is a DICOM UID per PS3.5 §9.1: 1..64 characters, dot-separated
// components of digits, no empty component, and no component with a leading
// zero unless the component is "0" itself. Such a UID is also safe as a file
// or folder name (digits and dots only, never "." or "..").
bool is_valid_uid(std::string_view uid);

}  // namespace firstread::dicom
