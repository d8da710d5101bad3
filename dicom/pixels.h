// DICOM pixel data -> one 8-bit RGB frame for the model (issue 4, "Pixels to
// model input"). Decodes native and encapsulated pixel data with DCMTK (JPEG,
// JPEG-LS, RLE codecs) and JPEG 2000 with OpenJPEG, then applies the grey-level
// pipeline: modality LUT (Rescale Slope/Intercept or Modality LUT Sequence),
// VOI LUT Sequence or the first Window Center/Width (else min-max over the
// frame), MONOCHROME1 inversion, grey replicated into RGB; RGB, YBR_FULL,
// YBR_FULL_422 and PALETTE COLOR become RGB. tools/pixel_reference/decode.py
// computes the same 8-bit rule with pydicom; the two are kept in step.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

class DcmDataset;

namespace firstread::dicom {

// One decoded frame as 8-bit RGB. The engine's RgbImage has the same fields;
// callers move rgb across (dicom/ knows nothing of the engine, the engine
// nothing of DICOM).
struct Rgb8Image {
  int width = 0, height = 0;
  std::vector<uint8_t> rgb;  // row-major, 3 bytes per pixel
};

// Largest accepted pixel count of one frame (a decompression-bomb guard; the
// engine refuses larger images with the same limit).
constexpr int64_t kMaxFramePixels = 256ll << 20;

struct DicomPixels {
  Rgb8Image image;         // width, height, rgb (row-major, 3 bytes per pixel)
  int frame = 0;           // 0-based frame that was decoded
  int frames = 1;          // Number of Frames
  std::string photometric; // Photometric Interpretation as in the file
  std::string window;      // how values became 8 bits: "voi-lut", "window c/w",
                           // "minmax", "none (8-bit colour)",
                           // "scaled (N-bit colour)", "palette"
};

// Every failure names the file (or the caller's name for a dataset), the frame
// where one applies, and the reason: missing pixel data, absurd or
// inconsistent attributes, pixel data shorter than the attributes promise, an
// unsupported photometric interpretation or transfer syntax, a codec error.
class DicomImageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// frame: 0-based; -1 = the middle frame (Number of Frames / 2).
DicomPixels decode_dicom_frame(const std::string& path, int frame = 0);
DicomPixels decode_dicom_frame(DcmDataset& dataset, const std::string& name_for_errors, int frame = 0);

// One frame's pixel data as DICOMweb sends it (WADO-RS .../frames/N).
struct FrameBytes {
  std::vector<uint8_t> bytes;
  std::string transfer_syntax_uid;  // of bytes: explicit VR little endian unless compressed
  bool compressed = false;          // the frame's fragments as stored
};
// frame: 0-based. Native pixel data: the frame's bytes, little endian.
// Encapsulated: the frame's fragments as stored when keep_compressed, else
// decompressed by DCMTK's codecs (JPEG, JPEG-LS, RLE; JPEG 2000 is refused).
// Throws DicomImageError naming the file and the reason.
FrameBytes frame_bytes(DcmDataset& dataset, const std::string& name_for_errors, int frame, bool keep_compressed);

// Number of Frames (1 when absent). Throws DicomImageError when it is not a
// positive integer.
int dicom_frame_count(DcmDataset& dataset);

}  // namespace firstread::dicom
