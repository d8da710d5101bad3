#include "ingest/public_elements.h"

#include <cstring>

namespace firstread::ingest {
namespace {

uint16_t u16(const char* p) {
  const auto* b = reinterpret_cast<const unsigned char*>(p);
  return static_cast<uint16_t>(b[0] | (b[1] << 8));
}

uint32_t u32(const char* p) {
  const auto* b = reinterpret_cast<const unsigned char*>(p);
  return static_cast<uint32_t>(b[0]) | (static_cast<uint32_t>(b[1]) << 8) | (static_cast<uint32_t>(b[2]) << 16) |
         (static_cast<uint32_t>(b[3]) << 24);
}

// Explicit VRs whose length is 4 bytes after 2 reserved ones (PS3.5 7.1.2).
bool has_long_length(const char* vr) {
  static const char* const kLong[] = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"};
  for (const char* v : kLong)
    if (vr[0] == v[0] && vr[1] == v[1]) return true;
  return false;
}

constexpr size_t kPreamble = 128;
constexpr uint32_t kUndefinedLength = 0xFFFFFFFFu;

}  // namespace

std::optional<PublicElements> public_elements_before(const char* data, size_t size, bool explicit_vr,
                                                     uint16_t stop_group, uint16_t stop_element) {
  // File Meta Information: (0002,0000) UL 4 gives the length of the rest of the group.
  const size_t meta_start = kPreamble + 4;
  if (size < meta_start + 12 || std::memcmp(data + kPreamble, "DICM", 4) != 0) return std::nullopt;
  const char* first = data + meta_start;
  if (u16(first) != 0x0002 || u16(first + 2) != 0x0000 || std::memcmp(first + 4, "UL", 2) != 0 || u16(first + 6) != 4)
    return std::nullopt;
  const size_t meta_end = meta_start + 12 + u32(first + 8);
  if (meta_end > size) return std::nullopt;
  PublicElements out;
  out.bytes.reserve(size < 16384 ? size : 16384);
  out.bytes.append(data, meta_end);
  const uint32_t stop = (static_cast<uint32_t>(stop_group) << 16) | stop_element;
  size_t pos = meta_end;
  while (pos + 8 <= size) {
    const uint16_t group = u16(data + pos);
    const uint16_t element = u16(data + pos + 2);
    if (((static_cast<uint32_t>(group) << 16) | element) >= stop) {
      out.reached_stop = true;
      return out;
    }
    if (group == 0xFFFE) return std::nullopt;  // an item or delimiter at the top level
    size_t header = 8;
    uint32_t length = 0;
    if (!explicit_vr) {
      length = u32(data + pos + 4);
    } else if (has_long_length(data + pos + 4)) {
      if (pos + 12 > size) return std::nullopt;
      header = 12;
      length = u32(data + pos + 8);
    } else {
      length = u16(data + pos + 6);
    }
    if (length == kUndefinedLength) return std::nullopt;
    const size_t end = pos + header + length;
    if (end > size) return std::nullopt;
    if (group % 2 == 0) out.bytes.append(data + pos, end - pos);
    pos = end;
  }
  if (pos != size) return std::nullopt;  // cut inside an element's header
  return out;
}

}  // namespace firstread::ingest
