// /api/v1/instances/{uid}/png: a frame through the same pixel path the model
// gets (dicom::decode_dicom_frame), at the source resolution, so finding
// boxes (source pixels) map 1:1; encoded by libpng in memory (and by libjpeg
// for DICOMweb's rendered JPEGs).
#include <png.h>

#include <csetjmp>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <jpeglib.h>

#include "app/http/api.h"
#include "db/studies.h"
#include "dicom/pixels.h"

namespace firstread::app::http {

std::string encode_png_rgb8(const uint8_t* rgb, int width, int height) {
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  if (!png) throw std::runtime_error("PNG encoder: libpng init failed");
  png_infop info = png_create_info_struct(png);
  if (!info) {
    png_destroy_write_struct(&png, nullptr);
    throw std::runtime_error("PNG encoder: libpng init failed");
  }
  std::string out;
  std::vector<png_bytep> rows(static_cast<size_t>(height));
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    throw std::runtime_error("PNG encoder: libpng failed for a " + std::to_string(width) + "x" +
                             std::to_string(height) + " image");
  }
  png_set_write_fn(
      png, &out,
      [](png_structp p, png_bytep data, png_size_t n) {
        static_cast<std::string*>(png_get_io_ptr(p))->append(reinterpret_cast<const char*>(data), n);
      },
      [](png_structp) {});
  png_set_IHDR(png, info, static_cast<png_uint_32>(width), static_cast<png_uint_32>(height), 8, PNG_COLOR_TYPE_RGB,
               PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_set_compression_level(png, 3);  // fast: a viewer, not an archive
  png_write_info(png, info);
  for (int y = 0; y < height; ++y) rows[static_cast<size_t>(y)] = const_cast<png_bytep>(rgb + size_t(y) * width * 3);
  png_write_image(png, rows.data());
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  return out;
}

namespace {

// libjpeg reports errors through error_exit, which must not return: back to
// encode_jpeg_rgb8's setjmp with the message.
struct JpegError {
  jpeg_error_mgr mgr;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

}  // namespace

std::string encode_jpeg_rgb8(const uint8_t* rgb, int width, int height, int quality) {
  jpeg_compress_struct cinfo{};
  JpegError error{};
  cinfo.err = jpeg_std_error(&error.mgr);
  error.mgr.error_exit = [](j_common_ptr c) {
    auto* e = reinterpret_cast<JpegError*>(c->err);
    (*c->err->format_message)(c, e->message);
    std::longjmp(e->jump, 1);
  };
  unsigned char* buffer = nullptr;
  unsigned long size = 0;
  if (setjmp(error.jump)) {
    jpeg_destroy_compress(&cinfo);
    free(buffer);
    throw std::runtime_error("JPEG encoder: " + std::string(error.message) + " for a " + std::to_string(width) + "x" +
                             std::to_string(height) + " image");
  }
  jpeg_create_compress(&cinfo);
  jpeg_mem_dest(&cinfo, &buffer, &size);
  cinfo.image_width = static_cast<JDIMENSION>(width);
  cinfo.image_height = static_cast<JDIMENSION>(height);
  cinfo.input_components = 3;
  cinfo.in_color_space = JCS_RGB;
  jpeg_set_defaults(&cinfo);
  jpeg_set_quality(&cinfo, quality, TRUE);
  jpeg_start_compress(&cinfo, TRUE);
  while (cinfo.next_scanline < cinfo.image_height) {
    JSAMPROW row = const_cast<JSAMPROW>(rgb + size_t(cinfo.next_scanline) * width * 3);
    jpeg_write_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_compress(&cinfo);
  std::string out(reinterpret_cast<const char*>(buffer), size);
  jpeg_destroy_compress(&cinfo);
  free(buffer);
  return out;
}

ApiResponse instance_png(Context& ctx, const ApiRequest& req) {
  const std::string& sop_uid = req.path_params.at("sop_instance_uid");
  require_uid("SOP Instance UID", sop_uid);
  refuse_unknown_params(req, {"frame"});
  const auto frame_text = query_param(req, "frame");
  const long long frame = frame_text ? integer_param("frame", *frame_text, 0, 1 << 20) : 0;
  const auto found = db::Studies(ctx.pool).instance_file(sop_uid);
  if (!found) throw HttpError(404, "unknown instance " + sop_uid);
  if (frame >= found->frames)
    throw HttpError(400, "frame: " + std::to_string(frame) + " is out of range; instance " + sop_uid + " has " +
                             std::to_string(found->frames) + " frame(s), numbered from 0");
  const std::string path = ctx.storage.absolute(found->file_path);
  dicom::DicomPixels pixels;
  try {
    pixels = dicom::decode_dicom_frame(path, static_cast<int>(frame));
  } catch (const dicom::DicomImageError& e) {
    throw HttpError(422, "instance " + sop_uid + " frame " + std::to_string(frame) + " cannot be rendered: " + e.what());
  }
  ApiResponse r;
  r.content_type = "image/png";
  r.body = encode_png_rgb8(pixels.image.rgb.data(), pixels.image.width, pixels.image.height);
  r.headers.emplace_back("Cache-Control", "private, max-age=300");
  r.audit_studies.push_back(found->study_uid);
  return r;
}

}  // namespace firstread::app::http
