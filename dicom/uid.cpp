#include "dicom/uid.h"

namespace firstread::dicom {

bool is_valid_uid(std::string_view uid) {
  if (uid.empty() || uid.size() > kMaxUidLength) return false;
  bool component_empty = true;
  for (char c : uid) {
    if (c == '.') {
      if (component_empty) return false;
      component_empty = true;
    } else if (c >= '0' && c <= '9') {
      component_empty = false;
    } else {
      return false;
    }
  }
  return !component_empty;
}

}  // namespace firstread::dicom
