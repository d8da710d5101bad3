#include "dicom/uid.h"

namespace firstread::dicom {

bool is_valid_uid(std::string_view uid) {
  if (uid.empty() || uid.size() > kMaxUidLength) return false;
  size_t start = 0;
  for (;;) {
    const size_t dot = uid.find('.', start);
    const std::string_view component = uid.substr(start, dot == std::string_view::npos ? uid.npos : dot - start);
    if (component.empty()) return false;
    if (component.size() > 1 && component[0] == '0') return false;
    for (char c : component)
      if (c < '0' || c > '9') return false;
    if (dot == std::string_view::npos) return true;
    start = dot + 1;
  }
}

}  // namespace firstread::dicom
