#pragma once
#include <string>

namespace firstread {

// True when a DICOM UID is valid per PS3.5 §9.1 and therefore safe to use as a
// file or folder name: digits and dots only, 1..64 characters, no empty
// component. Leading zeros (invalid per the standard but common in the wild)
// are accepted: they are harmless in a path and refusing them loses studies.
inline bool is_valid_uid(const std::string& uid) {
  if (uid.empty() || uid.size() > 64) return false;
  size_t component_start = 0;
  for (size_t i = 0; i <= uid.size(); ++i) {
    if (i == uid.size() || uid[i] == '.') {
      size_t len = i - component_start;
      if (len == 0) return false;
      component_start = i + 1;
    } else if (uid[i] < '0' || uid[i] > '9') {
      return false;
    }
  }
  return true;
}

}  // namespace firstread
