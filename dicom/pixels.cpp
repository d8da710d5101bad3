// DICOM frame -> 8-bit RGB. See pixels.h for the pipeline and
// tools/pixel_reference/decode.py for the same rule written with pydicom.
#include "dicom/pixels.h"

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcdatset.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcpixel.h>
#include <dcmtk/dcmdata/dcpixseq.h>
#include <dcmtk/dcmdata/dcpxitem.h>
#include <dcmtk/dcmdata/dcrledrg.h>
#include <dcmtk/dcmdata/dcsequen.h>
#include <dcmtk/dcmdata/dcuid.h>
#include <dcmtk/dcmdata/dcxfer.h>
#include <dcmtk/dcmjpeg/djdecode.h>
#include <dcmtk/dcmjpls/djdecode.h>
#include <openjpeg.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>
#include <optional>
#include <vector>

namespace firstread::dicom {
namespace {

constexpr int kMaxDicomSide = 32768;

// DCMTK's decoders live in a global registry; registering them once per
// process is enough, and registerCodecs itself ignores repeated calls.
void register_dcmtk_decoders() {
  static std::once_flag once;
  std::call_once(once, [] {
    // EDC_photometricInterpretation: JPEG colour conversion follows the
    // Photometric Interpretation (YBR_* -> RGB, RGB left alone), which is
    // what pydicom does too.
    DJDecoderRegistration::registerCodecs();
    DJLSDecoderRegistration::registerCodecs();
    DcmRLEDecoderRegistration::registerCodecs();
  });
}

[[noreturn]] void fail(const std::string& name, const std::string& reason) {
  throw DicomImageError(name + ": " + reason);
}

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == ' ' || s.back() == '\0')) s.pop_back();
  size_t first = s.find_first_not_of(' ');
  return first == std::string::npos ? std::string() : s.substr(first);
}

std::optional<std::string> get_string(DcmItem& item, const DcmTagKey& tag, unsigned long index = 0) {
  OFString value;
  if (item.findAndGetOFString(tag, value, index).bad()) return std::nullopt;
  return trim(value.c_str());
}

std::optional<double> get_decimal(DcmItem& item, const DcmTagKey& tag, unsigned long index = 0) {
  std::optional<std::string> text = get_string(item, tag, index);
  if (!text || text->empty()) return std::nullopt;
  char* end = nullptr;
  double value = std::strtod(text->c_str(), &end);
  if (end == text->c_str() || *end != '\0' || !std::isfinite(value)) return std::nullopt;
  return value;
}

// A US attribute that must be present.
int require_us(DcmItem& item, const DcmTagKey& tag, const char* attribute, const std::string& name) {
  Uint16 value = 0;
  if (item.findAndGetUint16(tag, value).bad()) fail(name, std::string("missing or unreadable ") + attribute);
  return value;
}

struct PixelAttributes {
  int rows = 0, columns = 0, samples = 1;
  int bits_allocated = 0, bits_stored = 0;
  bool is_signed = false;
  int planar_configuration = 0;
  int frames = 1;
  std::string photometric;
  E_TransferSyntax transfer_syntax = EXS_Unknown;
  bool encapsulated = false;
};

int frame_count_or_throw(DcmDataset& dataset, const std::string& name) {
  if (!dataset.tagExists(DCM_NumberOfFrames)) return 1;
  std::optional<std::string> text = get_string(dataset, DCM_NumberOfFrames);
  if (!text || text->empty()) return 1;  // present but empty: one frame (type 1C written as empty)
  char* end = nullptr;
  long frames = std::strtol(text->c_str(), &end, 10);
  if (end == text->c_str() || *end != '\0') fail(name, "Number of Frames '" + *text + "' is not an integer");
  if (frames < 1 || frames > 1000000) fail(name, "Number of Frames " + *text + " is out of range");
  return static_cast<int>(frames);
}

PixelAttributes read_attributes(DcmDataset& dataset, const std::string& name) {
  PixelAttributes a;
  a.rows = require_us(dataset, DCM_Rows, "Rows", name);
  a.columns = require_us(dataset, DCM_Columns, "Columns", name);
  if (a.rows <= 0 || a.columns <= 0 || a.rows > kMaxDicomSide || a.columns > kMaxDicomSide)
    fail(name, "absurd image size Rows=" + std::to_string(a.rows) + " Columns=" + std::to_string(a.columns));
  if (int64_t(a.rows) * a.columns > kMaxFramePixels)
    fail(name, "image of " + std::to_string(int64_t(a.rows) * a.columns) + " pixels exceeds the limit");
  a.samples = require_us(dataset, DCM_SamplesPerPixel, "Samples per Pixel", name);
  if (a.samples != 1 && a.samples != 3) fail(name, "Samples per Pixel " + std::to_string(a.samples) + " is not 1 or 3");
  a.bits_allocated = require_us(dataset, DCM_BitsAllocated, "Bits Allocated", name);
  if (a.bits_allocated != 1 && a.bits_allocated != 8 && a.bits_allocated != 16 && a.bits_allocated != 32)
    fail(name, "Bits Allocated " + std::to_string(a.bits_allocated) + " is not 1, 8, 16 or 32");
  Uint16 bits_stored = 0;
  a.bits_stored = dataset.findAndGetUint16(DCM_BitsStored, bits_stored).good() ? bits_stored : a.bits_allocated;
  if (a.bits_stored < 1 || a.bits_stored > a.bits_allocated)
    fail(name, "Bits Stored " + std::to_string(a.bits_stored) + " does not fit Bits Allocated " +
                   std::to_string(a.bits_allocated));
  Uint16 representation = 0;
  dataset.findAndGetUint16(DCM_PixelRepresentation, representation);
  a.is_signed = representation == 1;
  Uint16 planar = 0;
  if (a.samples > 1 && dataset.findAndGetUint16(DCM_PlanarConfiguration, planar).good()) a.planar_configuration = planar;
  if (a.planar_configuration != 0 && a.planar_configuration != 1)
    fail(name, "Planar Configuration " + std::to_string(a.planar_configuration) + " is not 0 or 1");
  a.frames = frame_count_or_throw(dataset, name);
  std::optional<std::string> photometric = get_string(dataset, DCM_PhotometricInterpretation);
  if (!photometric || photometric->empty()) fail(name, "missing Photometric Interpretation");
  a.photometric = *photometric;
  a.transfer_syntax = dataset.getCurrentXfer();
  if (a.transfer_syntax == EXS_Unknown) a.transfer_syntax = dataset.getOriginalXfer();
  a.encapsulated = DcmXfer(a.transfer_syntax).isEncapsulated();
  return a;
}

bool is_grey(const std::string& photometric) { return photometric == "MONOCHROME1" || photometric == "MONOCHROME2"; }

void check_photometric(const PixelAttributes& a, const std::string& name) {
  const std::string& p = a.photometric;
  int expected_samples = 0;
  if (is_grey(p) || p == "PALETTE COLOR") expected_samples = 1;
  else if (p == "RGB" || p == "YBR_FULL" || p == "YBR_FULL_422" || p == "YBR_RCT" || p == "YBR_ICT") expected_samples = 3;
  else fail(name, "unsupported Photometric Interpretation '" + p + "'");
  if (a.samples != expected_samples)
    fail(name, "Photometric Interpretation " + p + " with Samples per Pixel " + std::to_string(a.samples));
  if ((p == "YBR_RCT" || p == "YBR_ICT") && a.transfer_syntax != EXS_JPEG2000LosslessOnly && a.transfer_syntax != EXS_JPEG2000)
    fail(name, "Photometric Interpretation " + p + " outside JPEG 2000");
  if (a.bits_allocated == 1 && !is_grey(p)) fail(name, "1-bit pixels with Photometric Interpretation " + p);
  if ((p == "YBR_FULL" || p == "YBR_FULL_422") && a.bits_stored > 8)
    fail(name, p + " with " + std::to_string(a.bits_stored) + " bits per sample is not supported");
}

// One decoded frame: sample values (already masked to Bits Stored and
// sign-extended) in pixel-interleaved order, and the colour model they are in.
struct FrameSamples {
  std::vector<int64_t> values;  // rows x columns x samples
  std::string colour_model;     // photometric interpretation of `values`
  int value_bits = 0;           // bits per sample the values were stored in
  bool value_signed = false;
};

// Copies one container type into pixel-interleaved stored values, keeping
// the low bits_stored bits and sign-extending them when signed.
template <typename Container>
void unpack_samples(const uint8_t* buffer, size_t pixels, int samples, bool planar, int bits_stored,
                    bool is_signed, int64_t* out) {
  const uint64_t mask = bits_stored >= 64 ? ~uint64_t(0) : (uint64_t(1) << bits_stored) - 1;
  const int shift = 64 - bits_stored;  // for sign extension through the top bit
  const size_t count = pixels * samples;
  for (size_t i = 0; i < count; ++i) {
    // i is the output (interleaved) index; planar data keeps each sample's plane apart.
    const size_t source = planar ? (i % samples) * pixels + i / samples : i;
    Container raw;
    std::memcpy(&raw, buffer + source * sizeof(Container), sizeof(Container));
    const uint64_t value = uint64_t(raw) & mask;
    out[i] = is_signed ? int64_t(value << shift) >> shift : int64_t(value);
  }
}

// Turns a decoded frame buffer (host order, the given container width and
// planar configuration) into pixel-interleaved stored values.
// container_bits is normally Bits Allocated; DCMTK's JPEG decoder writes
// 8-bit containers for 8-bit JPEG data whatever Bits Allocated says.
FrameSamples samples_from_buffer(const uint8_t* buffer, const PixelAttributes& a, int planar_configuration,
                                 const std::string& colour_model, int container_bits) {
  FrameSamples out;
  out.colour_model = colour_model;
  const int bits_stored = std::min(a.bits_stored, container_bits);
  out.value_bits = bits_stored;
  out.value_signed = a.is_signed;
  const size_t pixels = size_t(a.rows) * a.columns;
  out.values.resize(pixels * a.samples);
  const bool planar = planar_configuration == 1 && a.samples > 1;
  if (container_bits == 8)
    unpack_samples<uint8_t>(buffer, pixels, a.samples, planar, bits_stored, a.is_signed, out.values.data());
  else if (container_bits == 16)
    unpack_samples<uint16_t>(buffer, pixels, a.samples, planar, bits_stored, a.is_signed, out.values.data());
  else
    unpack_samples<uint32_t>(buffer, pixels, a.samples, planar, bits_stored, a.is_signed, out.values.data());
  return out;
}

std::string frame_label(const std::string& name, int frame) { return name + " frame " + std::to_string(frame); }

// Bits in one native frame; 1-bit frames are packed back to back without padding.
uint64_t native_frame_bits(const PixelAttributes& a) {
  const uint64_t pixels = uint64_t(a.rows) * a.columns;
  return a.photometric == "YBR_FULL_422" ? pixels * 2 * 8 : pixels * a.samples * a.bits_allocated;
}

// The bytes that hold one native frame, in this machine's byte order (from
// the frame's first whole byte: a 1-bit frame may start inside it), after
// checking the element holds every frame the attributes promise. DCMTK reads
// large values from the file on demand, so nothing else is loaded.
std::vector<uint8_t> native_frame_buffer(DcmDataset& dataset, DcmElement& pixel_element, const PixelAttributes& a,
                                         int frame, const std::string& name) {
  const uint64_t frame_bits = native_frame_bits(a);
  uint64_t needed_bytes = (frame_bits * a.frames + 7) / 8;
  uint64_t length = pixel_element.getLength();
  if (length < needed_bytes)
    fail(name, "pixel data is " + std::to_string(length) + " bytes, shorter than the " + std::to_string(needed_bytes) +
                   " that Rows x Columns x Samples x Bits Allocated x Frames promise");
  uint64_t first_bit = frame_bits * frame;
  uint64_t offset = first_bit / 8;
  uint64_t bytes = (first_bit + frame_bits + 7) / 8 - offset;
  std::vector<uint8_t> buffer(bytes);
  OFCondition status = pixel_element.getPartialValue(buffer.data(), Uint32(offset), Uint32(bytes));
  if (status.bad()) fail(frame_label(name, frame), std::string("cannot read pixel data: ") + status.text());

  // Big endian files: DCMTK swaps OW values as 16-bit words, so a 32-bit
  // sample still has its two halves in big-endian order.
  if (a.bits_allocated == 32 && dataset.getOriginalXfer() == EXS_BigEndianExplicit &&
      pixel_element.getVR() == EVR_OW) {
    for (size_t i = 0; i + 3 < buffer.size(); i += 4) {
      std::swap(buffer[i], buffer[i + 2]);
      std::swap(buffer[i + 1], buffer[i + 3]);
    }
  }
  return buffer;
}

FrameSamples read_native_frame(DcmDataset& dataset, DcmElement& pixel_element, const PixelAttributes& a,
                               int frame, const std::string& name) {
  const uint64_t pixels = uint64_t(a.rows) * a.columns;
  const bool ybr_422 = a.photometric == "YBR_FULL_422";
  if (ybr_422 && (a.bits_allocated != 8 || a.columns % 2 != 0))
    fail(name, "native YBR_FULL_422 needs 8-bit samples and an even number of columns");
  const uint64_t frame_bits = native_frame_bits(a);
  std::vector<uint8_t> buffer = native_frame_buffer(dataset, pixel_element, a, frame, name);
  const uint64_t first_bit = frame_bits * frame;
  if (a.bits_allocated == 1) {
    FrameSamples out;
    out.colour_model = a.photometric;
    out.value_bits = 1;
    out.values.resize(pixels);
    unsigned shift = unsigned(first_bit % 8);
    for (uint64_t p = 0; p < pixels; ++p) {
      uint64_t bit = shift + p;  // bits are packed least significant first (PS3.5 8.1.1)
      out.values[p] = (buffer[bit / 8] >> (bit % 8)) & 1;
    }
    return out;
  }
  if (ybr_422) {
    // Y1 Y2 Cb Cr per pair of pixels; chroma is shared by the pair.
    FrameSamples out;
    out.colour_model = "YBR_FULL";
    out.value_bits = 8;
    out.values.resize(pixels * 3);
    for (uint64_t pair = 0; pair < pixels / 2; ++pair) {
      const uint8_t* q = buffer.data() + pair * 4;
      for (int k = 0; k < 2; ++k) {
        int64_t* dst = out.values.data() + (pair * 2 + k) * 3;
        dst[0] = q[k];
        dst[1] = q[2];
        dst[2] = q[3];
      }
    }
    return out;
  }
  return samples_from_buffer(buffer.data(), a, a.planar_configuration, a.photometric, a.bits_allocated);
}

bool is_dcmtk_jpeg(E_TransferSyntax xfer) {
  return xfer == EXS_JPEGProcess1 || xfer == EXS_JPEGProcess2_4 || xfer == EXS_JPEGProcess14 ||
         xfer == EXS_JPEGProcess14SV1;
}

// Sample precision in the first SOF marker segment of a JPEG stream, 0 when
// none is found.
int jpeg_sof_precision(const uint8_t* data, size_t length) {
  size_t offset = 0;
  while (offset + 4 < length) {
    if (data[offset] != 0xFF) return 0;
    const uint8_t marker = data[offset + 1];
    if (marker == 0xFF) { ++offset; continue; }  // fill byte
    if (marker == 0xD8 || marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7)) { offset += 2; continue; }
    const bool is_sof = marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC;
    if (is_sof) return data[offset + 4];
    if (marker == 0xDA || marker == 0xD9) return 0;  // scan data before any SOF
    offset += 2 + ((size_t(data[offset + 2]) << 8) | data[offset + 3]);
  }
  return 0;
}

// DCMTK's JPEG decoder writes 1-byte samples for JPEG data of 8 bits or
// less and 2-byte samples otherwise, whatever Bits Allocated says; the other
// codecs write Bits Allocated containers.
int jpeg_container_bits(DcmPixelData& pixel_data, const PixelAttributes& a, const std::string& name) {
  if (!is_dcmtk_jpeg(a.transfer_syntax)) return a.bits_allocated;
  DcmPixelSequence* sequence = nullptr;
  DcmPixelItem* first_fragment = nullptr;
  Uint8* bytes = nullptr;
  if (pixel_data.getEncapsulatedRepresentation(a.transfer_syntax, nullptr, sequence).bad() || sequence == nullptr ||
      sequence->getItem(first_fragment, 1).bad() || first_fragment == nullptr ||
      first_fragment->getUint8Array(bytes).bad() || bytes == nullptr)
    fail(name, "cannot read the first JPEG fragment");
  const int precision = jpeg_sof_precision(bytes, first_fragment->getLength());
  if (precision == 0) fail(name, "no JPEG frame header (SOF) in the first fragment");
  return precision > 8 ? 16 : 8;
}

// DCMTK 3.6.7's RLE decoder trusts the segment offsets in the RLE header and
// reads past the fragment when they are damaged (a crash seen with flipped
// bytes), so the header is checked here first (PS3.5 G.3.1, G.5): one
// fragment per frame, a 64-byte header, as many segments as bytes per pixel,
// the first at 64 and the rest increasing and inside the fragment.
void check_rle_frame(DcmPixelData& pixel_data, const PixelAttributes& a, int frame, const std::string& name) {
  const std::string where = frame_label(name, frame);
  DcmPixelSequence* sequence = nullptr;
  if (pixel_data.getEncapsulatedRepresentation(a.transfer_syntax, nullptr, sequence).bad() || sequence == nullptr)
    fail(name, "RLE pixel data is not encapsulated");
  const unsigned long fragments = sequence->card() > 0 ? sequence->card() - 1 : 0;
  if (fragments != static_cast<unsigned long>(a.frames))
    fail(name, "RLE pixel data has " + std::to_string(fragments) + " fragments for " + std::to_string(a.frames) +
                   " frames (one per frame required)");
  DcmPixelItem* fragment = nullptr;
  Uint8* bytes = nullptr;
  if (sequence->getItem(fragment, frame + 1).bad() || fragment == nullptr || fragment->getUint8Array(bytes).bad())
    fail(where, "unreadable RLE fragment");
  const Uint32 length = fragment->getLength();
  if (bytes == nullptr || length < 64) fail(where, "RLE fragment of " + std::to_string(length) + " bytes has no header");
  auto header = [bytes](int i) {
    return Uint32(bytes[4 * i]) | (Uint32(bytes[4 * i + 1]) << 8) | (Uint32(bytes[4 * i + 2]) << 16) |
           (Uint32(bytes[4 * i + 3]) << 24);
  };
  const Uint32 segments = header(0);
  const Uint32 expected = Uint32(a.samples * (a.bits_allocated / 8));
  if (segments != expected)
    fail(where, "RLE header has " + std::to_string(segments) + " segments, " + std::to_string(expected) + " expected");
  if (header(1) != 64) fail(where, "first RLE segment does not start after the header");
  for (Uint32 i = 1; i <= segments; ++i) {
    const Uint32 offset = header(int(i));
    if (offset >= length || (i > 1 && offset < header(int(i - 1))))
      fail(where, "RLE segment " + std::to_string(i - 1) + " offset " + std::to_string(offset) +
                      " is out of order or past the fragment (" + std::to_string(length) + " bytes)");
  }
}

// JPEG, JPEG-LS, RLE: DCMTK's registered codec decompresses one frame.
FrameSamples read_dcmtk_compressed_frame(DcmDataset& dataset, DcmPixelData& pixel_data, const PixelAttributes& a,
                                         int frame, const std::string& name) {
  if (a.transfer_syntax == EXS_RLELossless) check_rle_frame(pixel_data, a, frame, name);
  // Read before decoding: the decoder releases fragments it has used.
  const int container_bits = jpeg_container_bits(pixel_data, a, name);
  Uint32 frame_size = 0;
  OFCondition status = pixel_data.getUncompressedFrameSize(&dataset, frame_size);
  if (status.bad()) fail(name, std::string("cannot size a decompressed frame: ") + status.text());
  uint64_t expected = uint64_t(a.rows) * a.columns * a.samples * (a.bits_allocated / 8);
  if (frame_size < expected) fail(name, "decompressed frame size " + std::to_string(frame_size) + " is too small");
  // DCMTK byte-swaps the frame as 16-bit words after decoding and refuses an
  // odd buffer size (a 3x3 RGB frame is 27 bytes), so round up to even.
  const Uint32 buffer_size = frame_size + (frame_size & 1);
  std::vector<uint8_t> buffer(buffer_size);
  Uint32 start_fragment = 0;
  OFString decompressed_colour_model;
  status = pixel_data.getUncompressedFrame(&dataset, Uint32(frame), start_fragment, buffer.data(), buffer_size,
                                           decompressed_colour_model, nullptr);
  if (status.bad())
    fail(frame_label(name, frame), std::string("cannot decompress (") + DcmXfer(a.transfer_syntax).getXferName() +
                                       "): " + status.text());
  std::string colour_model = trim(decompressed_colour_model.c_str());
  if (colour_model.empty()) colour_model = a.photometric;
  // A decompressed YBR_FULL_422 JPEG frame is full resolution.
  if (colour_model == "YBR_FULL_422") colour_model = "YBR_FULL";
  // DCMTK's codecs write the frame in the dataset's planar configuration.
  return samples_from_buffer(buffer.data(), a, a.planar_configuration, colour_model, container_bits);
}

// ---- JPEG 2000 through OpenJPEG ----------------------------------------

struct MemoryStream {
  const uint8_t* data;
  OPJ_SIZE_T size;
  OPJ_SIZE_T offset;
};

OPJ_SIZE_T stream_read(void* buffer, OPJ_SIZE_T bytes, void* user) {
  auto* s = static_cast<MemoryStream*>(user);
  if (s->offset >= s->size) return OPJ_SIZE_T(-1);
  OPJ_SIZE_T n = std::min(bytes, s->size - s->offset);
  std::memcpy(buffer, s->data + s->offset, n);
  s->offset += n;
  return n;
}

OPJ_OFF_T stream_skip(OPJ_OFF_T bytes, void* user) {
  auto* s = static_cast<MemoryStream*>(user);
  OPJ_OFF_T target = OPJ_OFF_T(s->offset) + bytes;
  if (target < 0) target = 0;
  if (target > OPJ_OFF_T(s->size)) target = OPJ_OFF_T(s->size);
  OPJ_OFF_T moved = target - OPJ_OFF_T(s->offset);
  s->offset = OPJ_SIZE_T(target);
  return moved;
}

OPJ_BOOL stream_seek(OPJ_OFF_T position, void* user) {
  auto* s = static_cast<MemoryStream*>(user);
  if (position < 0 || position > OPJ_OFF_T(s->size)) return OPJ_FALSE;
  s->offset = OPJ_SIZE_T(position);
  return OPJ_TRUE;
}

void opj_message_to_string(const char* message, void* user) {
  auto* text = static_cast<std::string*>(user);
  if (text->empty()) *text = trim(message ? message : "");
  while (!text->empty() && text->back() == '\n') text->pop_back();
}

// The bytes of one frame: the fragments that belong to it, concatenated.
std::vector<uint8_t> encapsulated_frame_bytes(DcmPixelSequence& sequence, const PixelAttributes& a, int frame,
                                              const std::string& name) {
  const unsigned long items = sequence.card();
  if (items < 2) fail(name, "encapsulated pixel data has no fragments");
  const unsigned long fragments = items - 1;  // item 0 is the Basic Offset Table

  std::vector<std::pair<uint8_t*, Uint32>> fragment_data(fragments);
  for (unsigned long i = 0; i < fragments; ++i) {
    DcmPixelItem* item = nullptr;
    if (sequence.getItem(item, i + 1).bad() || item == nullptr) fail(name, "unreadable pixel data fragment");
    Uint8* bytes = nullptr;
    if (item->getLength() > 0 && (item->getUint8Array(bytes).bad() || bytes == nullptr))
      fail(name, "unreadable pixel data fragment " + std::to_string(i));
    fragment_data[i] = {bytes, item->getLength()};
  }

  // First fragment index of each frame.
  std::vector<unsigned long> frame_start;
  if (a.frames == 1) {
    frame_start = {0};
  } else if (fragments == static_cast<unsigned long>(a.frames)) {
    for (int f = 0; f < a.frames; ++f) frame_start.push_back(f);
  } else {
    // Several fragments per frame: a J2K codestream starts with SOC+SIZ
    // (FF 4F FF 51), so a fragment that starts with it starts a frame.
    for (unsigned long i = 0; i < fragments; ++i) {
      const auto& [bytes, length] = fragment_data[i];
      if (length >= 4 && bytes[0] == 0xFF && bytes[1] == 0x4F && bytes[2] == 0xFF && bytes[3] == 0x51)
        frame_start.push_back(i);
    }
    if (frame_start.size() != size_t(a.frames))
      fail(name, "cannot split " + std::to_string(fragments) + " fragments into " + std::to_string(a.frames) +
                     " JPEG 2000 frames");
  }
  if (size_t(frame) >= frame_start.size()) fail(name, "frame " + std::to_string(frame) + " has no fragment");
  unsigned long first = frame_start[frame];
  unsigned long last = size_t(frame) + 1 < frame_start.size() ? frame_start[frame + 1] : fragments;
  std::vector<uint8_t> bytes;
  for (unsigned long i = first; i < last; ++i)
    bytes.insert(bytes.end(), fragment_data[i].first, fragment_data[i].first + fragment_data[i].second);
  return bytes;
}

FrameSamples read_jpeg2000_frame(DcmPixelData& pixel_data, const PixelAttributes& a, int frame,
                                 const std::string& name) {
  const std::string where = frame_label(name, frame);
  DcmPixelSequence* sequence = nullptr;
  OFCondition status = pixel_data.getEncapsulatedRepresentation(a.transfer_syntax, nullptr, sequence);
  if (status.bad() || sequence == nullptr) fail(name, "JPEG 2000 pixel data is not encapsulated");
  std::vector<uint8_t> codestream = encapsulated_frame_bytes(*sequence, a, frame, name);
  if (codestream.size() < 12) fail(where, "JPEG 2000 frame is " + std::to_string(codestream.size()) + " bytes");

  // A raw codestream (J2K) or a JP2 file (signature box), as some writers do.
  const bool is_jp2 = codestream[0] == 0x00 && codestream[1] == 0x00 && codestream[2] == 0x00 &&
                      codestream[3] == 0x0C && codestream[4] == 0x6A && codestream[5] == 0x50;
  opj_codec_t* codec = opj_create_decompress(is_jp2 ? OPJ_CODEC_JP2 : OPJ_CODEC_J2K);
  std::string opj_error;
  opj_set_error_handler(codec, opj_message_to_string, &opj_error);
  opj_set_warning_handler(codec, [](const char*, void*) {}, nullptr);
  opj_set_info_handler(codec, [](const char*, void*) {}, nullptr);
  opj_dparameters_t parameters;
  opj_set_default_decoder_parameters(&parameters);
  MemoryStream memory{codestream.data(), codestream.size(), 0};
  opj_stream_t* stream = opj_stream_create(OPJ_J2K_STREAM_CHUNK_SIZE, OPJ_TRUE);
  opj_stream_set_user_data(stream, &memory, nullptr);
  opj_stream_set_user_data_length(stream, memory.size);
  opj_stream_set_read_function(stream, stream_read);
  opj_stream_set_skip_function(stream, stream_skip);
  opj_stream_set_seek_function(stream, stream_seek);
  opj_image_t* image = nullptr;

  // Frees the codec, stream and image on every path out.
  struct Cleanup {
    opj_codec_t* codec; opj_stream_t* stream; opj_image_t** image;
    ~Cleanup() {
      if (*image) opj_image_destroy(*image);
      opj_stream_destroy(stream);
      opj_destroy_codec(codec);
    }
  } cleanup{codec, stream, &image};

  if (!opj_setup_decoder(codec, &parameters)) fail(where, "OpenJPEG setup failed");
  if (!opj_read_header(stream, codec, &image) || image == nullptr)
    fail(where, "JPEG 2000 header: " + (opj_error.empty() ? std::string("unreadable") : opj_error));
  // Check the header against the DICOM attributes before decoding anything,
  // so a codestream that claims a huge image is refused without allocating.
  const int64_t j2k_width = int64_t(image->x1) - image->x0, j2k_height = int64_t(image->y1) - image->y0;
  if (j2k_width != a.columns || j2k_height != a.rows)
    fail(where, "JPEG 2000 image is " + std::to_string(j2k_width) + "x" + std::to_string(j2k_height) +
                    ", the DICOM attributes say " + std::to_string(a.columns) + "x" + std::to_string(a.rows));
  if (int(image->numcomps) != a.samples)
    fail(where, "JPEG 2000 image has " + std::to_string(image->numcomps) + " components, Samples per Pixel is " +
                    std::to_string(a.samples));
  if (!opj_decode(codec, stream, image) || !opj_end_decompress(codec, stream))
    fail(where, "JPEG 2000 decode: " + (opj_error.empty() ? std::string("failed") : opj_error));

  FrameSamples out;
  const size_t pixels = size_t(a.rows) * a.columns;
  out.values.resize(pixels * a.samples);
  for (int c = 0; c < a.samples; ++c) {
    const opj_image_comp_t& component = image->comps[c];
    if (component.w != OPJ_UINT32(a.columns) || component.h != OPJ_UINT32(a.rows) || component.data == nullptr)
      fail(where, "JPEG 2000 component " + std::to_string(c) + " is subsampled or empty");
    // The codestream's precision wins over Bits Stored: several files
    // disagree with their header, and the codestream is what the encoder
    // wrote. Unsigned codestream data in a signed image holds the two's
    // complement bit pattern (some encoders drop the sign flag), so it is
    // sign-extended from that precision, as pydicom and GDCM do.
    const int precision = int(component.prec);
    if (precision < 1 || precision > 31) fail(where, "JPEG 2000 precision " + std::to_string(precision));
    const bool reinterpret_signed = component.sgnd == 0 && a.is_signed;
    out.value_bits = precision;
    out.value_signed = component.sgnd != 0 || a.is_signed;
    for (size_t p = 0; p < pixels; ++p) {
      int64_t v = component.data[p];
      if (reinterpret_signed && ((v >> (precision - 1)) & 1)) v -= int64_t(1) << precision;
      out.values[p * a.samples + c] = v;
    }
  }
  // OpenJPEG applies the inverse RCT/ICT itself, so colour comes out as RGB.
  out.colour_model = (a.photometric == "YBR_RCT" || a.photometric == "YBR_ICT") ? "RGB" : a.photometric;
  return out;
}

// ---- grey levels ----------------------------------------------------------

uint8_t to_u8(double v) {
  double rounded = std::floor(v + 0.5);
  if (!(rounded > 0)) return 0;  // also NaN
  if (rounded > 255) return 255;
  return uint8_t(rounded);
}

// A LUT (modality, VOI or palette): descriptor (entries, first mapped, bits)
// and its entries.
struct Lut {
  std::vector<double> entries;
  int64_t first_mapped = 0;
  int bits = 0;       // bits per entry the values are in
};

double lut_lookup(const Lut& lut, double value) {
  // Values below the first mapped one take the first entry, above the last
  // the last (PS3.3 C.11.1.1.1), as pydicom's clipping does.
  int64_t index = value >= double(lut.first_mapped) ? int64_t(value) - lut.first_mapped : 0;
  index = std::clamp<int64_t>(index, 0, int64_t(lut.entries.size()) - 1);
  return lut.entries[size_t(index)];
}

// descriptor_second_signed: the first mapped value is SS when pixels are signed.
Lut read_lut(DcmItem& item, const DcmTagKey& descriptor_tag, const DcmTagKey& data_tag, bool first_mapped_signed,
             const std::string& what, const std::string& name) {
  Uint16 d0 = 0, d1 = 0, d2 = 0;
  if (item.findAndGetUint16(descriptor_tag, d0, 0).bad() || item.findAndGetUint16(descriptor_tag, d1, 1).bad() ||
      item.findAndGetUint16(descriptor_tag, d2, 2).bad())
    fail(name, what + " LUT Descriptor is missing or incomplete");
  Lut lut;
  const size_t entries = d0 == 0 ? 65536 : d0;
  lut.first_mapped = first_mapped_signed ? int64_t(int16_t(d1)) : int64_t(d1);
  DcmElement* data = nullptr;
  if (item.findAndGetElement(data_tag, data).bad() || data == nullptr)
    fail(name, what + " LUT Data is missing (segmented palettes are not supported)");
  const Uint32 length = data->getLength();
  // 8-bit entries may be packed one per byte (pydicom judges by the length);
  // otherwise one per 16-bit word.
  if (length == entries && d2 <= 8) {
    Uint8* bytes = nullptr;
    if (data->getUint8Array(bytes).bad() || bytes == nullptr) fail(name, what + " LUT Data is unreadable");
    lut.entries.assign(bytes, bytes + entries);
    lut.bits = 8;
  } else if (length >= entries * 2) {
    Uint16* words = nullptr;
    if (data->getUint16Array(words).bad() || words == nullptr) fail(name, what + " LUT Data is unreadable");
    lut.entries.assign(words, words + entries);
    lut.bits = d2;
  } else {
    fail(name, what + " LUT Data has " + std::to_string(length) + " bytes for " + std::to_string(entries) + " entries");
  }
  if (lut.bits < 1 || lut.bits > 16) fail(name, what + " LUT has " + std::to_string(lut.bits) + " bits per entry");
  return lut;
}

std::string format_number(double v) {
  char text[32];
  std::snprintf(text, sizeof text, "%g", v);
  return text;
}

double modality_of_stored(const Lut* modality_table, double slope, double intercept, int64_t stored) {
  if (modality_table) return lut_lookup(*modality_table, double(stored));
  return double(stored) * slope + intercept;
}

// Modality LUT, VOI (LUT, window or min-max) and MONOCHROME1 inversion.
std::vector<uint8_t> grey_to_u8(DcmDataset& dataset, const PixelAttributes& a, const FrameSamples& frame,
                                std::string* window, const std::string& name) {
  const size_t pixels = frame.values.size();
  const int64_t* stored = frame.values.data();

  // Modality LUT: the sequence wins over Rescale Slope/Intercept (pydicom's
  // order). Applied on the fly rather than into a second frame-sized array.
  DcmItem* modality_item = nullptr;
  std::optional<Lut> modality_lut;
  if (dataset.findAndGetSequenceItem(DCM_ModalityLUTSequence, modality_item, 0).good() && modality_item)
    modality_lut = read_lut(*modality_item, DCM_LUTDescriptor, DCM_LUTData, frame.value_signed, "Modality", name);
  std::optional<double> slope = get_decimal(dataset, DCM_RescaleSlope);
  std::optional<double> intercept = get_decimal(dataset, DCM_RescaleIntercept);
  const bool rescale = !modality_lut && slope && intercept;
  const double slope_value = rescale ? *slope : 1.0, intercept_value = rescale ? *intercept : 0.0;
  const Lut* modality_table = modality_lut ? &*modality_lut : nullptr;
  auto modality = [&](size_t i) -> double {
    return modality_of_stored(modality_table, slope_value, intercept_value, stored[i]);
  };

  DcmItem* voi_item = nullptr;
  std::optional<double> center = get_decimal(dataset, DCM_WindowCenter, 0);
  std::optional<double> width = get_decimal(dataset, DCM_WindowWidth, 0);
  std::string function = get_string(dataset, DCM_VOILUTFunction).value_or("LINEAR");
  if (function.empty()) function = "LINEAR";
  const bool window_usable = center && width &&
                             ((function == "LINEAR" && *width >= 1) ||
                              ((function == "LINEAR_EXACT" || function == "SIGMOID") && *width > 0));

  // Stored values of 16 bits or fewer go through a table indexed by the
  // stored value: the same arithmetic once per possible value instead of
  // once per pixel (a 4096x4096 frame has 16M pixels, 12-bit data 4096 values).
  bool use_table = frame.value_bits <= 16;
  const int64_t table_first = use_table && frame.value_signed ? -(int64_t(1) << (frame.value_bits - 1)) : 0;
  const size_t table_size = use_table ? size_t(1) << frame.value_bits : 0;
  // Every value must index the table (a codec could hand back values outside
  // its stated precision); otherwise map per pixel.
  for (size_t i = 0; use_table && i < pixels; ++i)
    if (uint64_t(stored[i] - table_first) >= table_size) use_table = false;
  std::vector<uint8_t> present;  // which stored values occur (min-max only)

  // map: modality value -> 8 bits, for one VOI mode; applied per table entry
  // or per pixel.
  std::optional<Lut> voi;
  double c = 0, w = 1, lo = 0, hi = 0;
  bool sigmoid = false;
  enum class Mode { kVoiLut, kWindow, kMinMax } mode;
  if (dataset.findAndGetSequenceItem(DCM_VOILUTSequence, voi_item, 0).good() && voi_item) {
    voi = read_lut(*voi_item, DCM_LUTDescriptor, DCM_LUTData, a.is_signed && !modality_lut, "VOI", name);
    mode = Mode::kVoiLut;
    *window = "voi-lut";
  } else if (window_usable) {
    c = *center;
    w = *width;
    sigmoid = function == "SIGMOID";
    if (function == "LINEAR") {  // PS3.3 C.11.2.1.2.1
      c -= 0.5;
      w -= 1;
    }
    mode = Mode::kWindow;
    *window = "window " + format_number(*center) + "/" + format_number(*width);
  } else {
    mode = Mode::kMinMax;
    *window = "minmax";
    bool first = true;
    auto include = [&](double v) {
      lo = first ? v : std::min(lo, v);
      hi = first ? v : std::max(hi, v);
      first = false;
    };
    if (use_table) {
      present.assign(table_size, 0);
      for (size_t i = 0; i < pixels; ++i) present[size_t(stored[i] - table_first)] = 1;
      for (size_t k = 0; k < table_size; ++k)
        if (present[k]) include(modality_of_stored(modality_table, slope_value, intercept_value, table_first + int64_t(k)));
    } else {
      for (size_t i = 0; i < pixels; ++i) include(modality(i));
    }
  }
  const double voi_scale = voi ? 255.0 / double((1 << voi->bits) - 1) : 0.0;
  const double low = c - w / 2, high = c + w / 2;
  auto map = [&](double x) -> uint8_t {
    switch (mode) {
      case Mode::kVoiLut:
        // pydicom indexes the LUT with integers; round half to even like np.rint.
        return to_u8(lut_lookup(*voi, std::nearbyint(x)) * voi_scale);
      case Mode::kWindow:
        if (sigmoid) return to_u8(255.0 / (1 + std::exp(-4 * (x - c) / w)));  // PS3.3 C.11.2.1.3.1
        if (x <= low) return 0;
        if (x > high) return 255;
        return to_u8(((x - c) / w + 0.5) * 255.0);
      case Mode::kMinMax:
        // Same operation order as the reference: (v - lo) * 255 / (hi - lo).
        return hi > lo ? to_u8((x - lo) * 255.0 / (hi - lo)) : 0;
    }
    return 0;
  };

  std::vector<uint8_t> grey(pixels);
  if (use_table) {
    std::vector<uint8_t> table(table_size);
    for (size_t k = 0; k < table_size; ++k)
      table[k] = map(modality_of_stored(modality_table, slope_value, intercept_value, table_first + int64_t(k)));
    for (size_t i = 0; i < pixels; ++i) grey[i] = table[size_t(stored[i] - table_first)];
  } else {
    for (size_t i = 0; i < pixels; ++i) grey[i] = map(modality(i));
  }
  if (a.photometric == "MONOCHROME1")
    for (uint8_t& g : grey) g = uint8_t(255 - g);
  return grey;
}

// YBR_FULL -> RGB with pydicom's coefficients (PS3.3 C.7.6.3.1.2).
void ybr_full_to_rgb(int64_t y, int64_t cb, int64_t cr, uint8_t* rgb) {
  const float fy = float(y), fcb = float(cb) - 128.0f, fcr = float(cr) - 128.0f;
  const float r = fy + 1.402f * fcr;
  const float g = fy + (-0.114f * 1.772f / 0.587f) * fcb + (-0.299f * 1.402f / 0.587f) * fcr;
  const float b = fy + 1.772f * fcb;
  rgb[0] = to_u8(r);
  rgb[1] = to_u8(g);
  rgb[2] = to_u8(b);
}

Rgb8Image to_rgb(DcmDataset& dataset, const PixelAttributes& a, const FrameSamples& frame, std::string* window,
                const std::string& name) {
  Rgb8Image image;
  image.width = a.columns;
  image.height = a.rows;
  const size_t pixels = size_t(a.rows) * a.columns;
  image.rgb.resize(pixels * 3);
  const std::string& model = frame.colour_model;

  if (is_grey(model)) {
    std::vector<uint8_t> grey = grey_to_u8(dataset, a, frame, window, name);
    for (size_t p = 0; p < pixels; ++p) image.rgb[3 * p] = image.rgb[3 * p + 1] = image.rgb[3 * p + 2] = grey[p];
  } else if (model == "PALETTE COLOR") {
    const bool first_signed = frame.value_signed;
    Lut red = read_lut(dataset, DCM_RedPaletteColorLookupTableDescriptor, DCM_RedPaletteColorLookupTableData,
                       first_signed, "Red Palette", name);
    Lut green = read_lut(dataset, DCM_GreenPaletteColorLookupTableDescriptor, DCM_GreenPaletteColorLookupTableData,
                         first_signed, "Green Palette", name);
    Lut blue = read_lut(dataset, DCM_BluePaletteColorLookupTableDescriptor, DCM_BluePaletteColorLookupTableData,
                        first_signed, "Blue Palette", name);
    const Lut* luts[3] = {&red, &green, &blue};
    for (int c = 0; c < 3; ++c) {
      const double scale = 255.0 / double((1 << luts[c]->bits) - 1);
      for (size_t p = 0; p < pixels; ++p)
        image.rgb[3 * p + c] = to_u8(lut_lookup(*luts[c], double(frame.values[p])) * scale);
    }
    *window = "palette";
  } else if (model == "RGB") {
    if (frame.value_bits <= 8) {
      for (size_t i = 0; i < pixels * 3; ++i) image.rgb[i] = uint8_t(std::clamp<int64_t>(frame.values[i], 0, 255));
      *window = "none (8-bit colour)";
    } else {
      const double scale = 255.0 / (std::ldexp(1.0, frame.value_bits) - 1);
      for (size_t i = 0; i < pixels * 3; ++i) image.rgb[i] = to_u8(double(frame.values[i]) * scale);
      *window = "scaled (" + std::to_string(frame.value_bits) + "-bit colour)";
    }
  } else if (model == "YBR_FULL") {
    for (size_t p = 0; p < pixels; ++p)
      ybr_full_to_rgb(frame.values[3 * p], frame.values[3 * p + 1], frame.values[3 * p + 2], &image.rgb[3 * p]);
    *window = "none (8-bit colour)";
  } else {
    fail(name, "decoded colour model '" + model + "' is not supported");
  }
  return image;
}

bool is_jpeg2000(E_TransferSyntax xfer) { return xfer == EXS_JPEG2000LosslessOnly || xfer == EXS_JPEG2000; }

bool dcmtk_can_decode(E_TransferSyntax xfer) {
  switch (xfer) {
    case EXS_JPEGProcess1:
    case EXS_JPEGProcess2_4:
    case EXS_JPEGProcess14:
    case EXS_JPEGProcess14SV1:
    case EXS_JPEGLSLossless:
    case EXS_JPEGLSLossy:
    case EXS_RLELossless:
      return true;
    default:
      return false;
  }
}

}  // namespace

int dicom_frame_count(DcmDataset& dataset) { return frame_count_or_throw(dataset, "dataset"); }

DicomPixels decode_dicom_frame(DcmDataset& dataset, const std::string& name, int frame) {
  register_dcmtk_decoders();
  DcmElement* element = nullptr;
  if (dataset.findAndGetElement(DCM_PixelData, element).bad() || element == nullptr) {
    if (dataset.tagExists(DCM_FloatPixelData) || dataset.tagExists(DCM_DoubleFloatPixelData))
      fail(name, "Float / Double Float Pixel Data is not supported");
    fail(name, "no pixel data");
  }
  auto* pixel_data = dynamic_cast<DcmPixelData*>(element);
  if (pixel_data == nullptr) fail(name, "Pixel Data element is not pixel data");

  PixelAttributes a = read_attributes(dataset, name);
  check_photometric(a, name);
  if (frame == -1) frame = a.frames / 2;
  if (frame < 0 || frame >= a.frames)
    fail(name, "frame " + std::to_string(frame) + " out of range (" + std::to_string(a.frames) + " frames)");

  FrameSamples samples;
  if (!a.encapsulated) {
    samples = read_native_frame(dataset, *pixel_data, a, frame, name);
  } else if (a.bits_allocated == 1) {
    fail(name, "compressed 1-bit pixel data is not supported");
  } else if (is_jpeg2000(a.transfer_syntax)) {
    samples = read_jpeg2000_frame(*pixel_data, a, frame, name);
  } else if (dcmtk_can_decode(a.transfer_syntax)) {
    samples = read_dcmtk_compressed_frame(dataset, *pixel_data, a, frame, name);
  } else {
    fail(name, std::string("unsupported transfer syntax ") + DcmXfer(a.transfer_syntax).getXferName() + " (" +
                   DcmXfer(a.transfer_syntax).getXferID() + ")");
  }

  DicomPixels out;
  out.frame = frame;
  out.frames = a.frames;
  out.photometric = a.photometric;
  out.image = to_rgb(dataset, a, samples, &out.window, frame_label(name, frame));
  return out;
}

FrameBytes frame_bytes(DcmDataset& dataset, const std::string& name, int frame, bool keep_compressed) {
  register_dcmtk_decoders();
  DcmElement* element = nullptr;
  if (dataset.findAndGetElement(DCM_PixelData, element).bad() || element == nullptr) fail(name, "no pixel data");
  auto* pixel_data = dynamic_cast<DcmPixelData*>(element);
  if (pixel_data == nullptr) fail(name, "Pixel Data element is not pixel data");
  const PixelAttributes a = read_attributes(dataset, name);
  if (frame < 0 || frame >= a.frames)
    fail(name, "frame " + std::to_string(frame + 1) + " out of range (" + std::to_string(a.frames) + " frames)");
  FrameBytes out;
  if (!a.encapsulated) {
    if (a.bits_allocated == 1 && native_frame_bits(a) % 8 != 0)
      fail(name, "1-bit frames that do not end on a byte boundary cannot be sent one by one");
    out.bytes = native_frame_buffer(dataset, *pixel_data, a, frame, name);
    out.transfer_syntax_uid = UID_LittleEndianExplicitTransferSyntax;
    if (gLocalByteOrder != EBO_LittleEndian) fail(name, "frames are only served on little-endian machines");
    return out;
  }
  if (keep_compressed) {
    DcmPixelSequence* sequence = nullptr;
    if (pixel_data->getEncapsulatedRepresentation(a.transfer_syntax, nullptr, sequence).bad() || sequence == nullptr)
      fail(name, "encapsulated pixel data without its fragments");
    out.bytes = encapsulated_frame_bytes(*sequence, a, frame, name);
    out.transfer_syntax_uid = DcmXfer(a.transfer_syntax).getXferID();
    out.compressed = true;
    return out;
  }
  if (is_jpeg2000(a.transfer_syntax) || !dcmtk_can_decode(a.transfer_syntax))
    fail(name, std::string("cannot decompress ") + DcmXfer(a.transfer_syntax).getXferName() +
                   " to native pixel data here (ask for it as stored)");
  Uint32 frame_size = 0;
  if (pixel_data->getUncompressedFrameSize(&dataset, frame_size).bad()) fail(name, "cannot size a decompressed frame");
  std::vector<uint8_t> buffer(frame_size + (frame_size & 1));
  Uint32 start_fragment = 0;
  OFString colour_model;
  OFCondition status = pixel_data->getUncompressedFrame(&dataset, Uint32(frame), start_fragment, buffer.data(),
                                                        Uint32(buffer.size()), colour_model, nullptr);
  if (status.bad()) fail(frame_label(name, frame), std::string("cannot decompress: ") + status.text());
  buffer.resize(uint64_t(a.rows) * a.columns * a.samples * (a.bits_allocated / 8));
  out.bytes = std::move(buffer);
  out.transfer_syntax_uid = UID_LittleEndianExplicitTransferSyntax;
  return out;
}

DicomPixels decode_dicom_frame(const std::string& path, int frame) {
  DcmFileFormat file;
  // Large values (the pixel data) stay in the file until read; only the
  // requested frame is then read or decompressed.
  OFCondition status = file.loadFile(path.c_str(), EXS_Unknown, EGL_noChange, DCM_MaxReadLength, ERM_autoDetect);
  if (status.bad()) fail(path, std::string("cannot read DICOM file: ") + status.text());
  DcmDataset* dataset = file.getDataset();
  if (dataset == nullptr) fail(path, "no dataset");
  return decode_dicom_frame(*dataset, path, frame);
}

}  // namespace firstread::dicom
