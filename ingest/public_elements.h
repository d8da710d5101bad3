// The bytes of a received file's header that DCMTK needs to parse for the
// index, without the private elements: DCMTK looks every element it reads up
// in its data dictionary, and a private tag misses the dictionary's hash and
// scans its list of repeating tags, which made the header parse most of the
// service's user CPU per CT instance (about 120 private elements).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

namespace firstread::ingest {

struct PublicElements {
  std::string bytes;         // preamble, "DICM", File Meta Information, then the kept elements
  bool reached_stop = false;  // an element at or after the stop tag was seen (the header is complete)
};

// From the first `size` bytes of a PS3.10 stream (128-byte preamble, "DICM",
// File Meta Information in explicit VR little endian, then the data set in
// little endian, explicit or implicit VR): the meta information and every
// top-level element of an even group before the tag (stop_group,
// stop_element), byte for byte; elements of odd groups (private) are left out.
// nullopt where the walk is not that simple case (no "DICM", an item or an
// undefined length at the top level before the stop, an element cut by the
// end of the bytes before the stop): the caller parses the bytes as they are.
std::optional<PublicElements> public_elements_before(const char* data, size_t size, bool explicit_vr,
                                                     uint16_t stop_group, uint16_t stop_element);

}  // namespace firstread::ingest
