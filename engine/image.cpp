#include "engine/image.h"

#include <png.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <set>

#include "engine/common.h"

namespace firstread::engine {

static void check_dims(int w, int h, const std::string& what) {
  if (w <= 0 || h <= 0) throw EngineError(what + ": empty image (" + std::to_string(w) + "x" + std::to_string(h) + ")");
  if (w > kMaxImageSide || h > kMaxImageSide || int64_t(w) * h > kMaxImagePixels)
    throw EngineError(what + ": image " + std::to_string(w) + "x" + std::to_string(h) + " is too large");
}

RgbImage image_from_rgb8(const uint8_t* rgb, int width, int height) {
  check_dims(width, height, "RGB buffer");
  if (!rgb) throw EngineError("RGB buffer is null");
  RgbImage img;
  img.width = width;
  img.height = height;
  img.rgb.assign(rgb, rgb + size_t(width) * height * 3);
  return img;
}

// ---------------------------------------------------------------- PNG

std::string encode_png(const RgbImage& img) {
  if (img.width <= 0 || img.height <= 0 || img.rgb.size() != size_t(img.width) * img.height * 3)
    throw EngineError("PNG encoder: not an RGB8 image of " + std::to_string(img.width) + "x" +
                      std::to_string(img.height));
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png ? png_create_info_struct(png) : nullptr;
  if (!info) {
    png_destroy_write_struct(&png, nullptr);
    throw EngineError("PNG encoder: libpng init failed");
  }
  std::string out;
  std::vector<png_bytep> rows(static_cast<size_t>(img.height));
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    throw EngineError("PNG encoder: libpng failed");
  }
  png_set_write_fn(
      png, &out,
      [](png_structp p, png_bytep data, png_size_t n) {
        static_cast<std::string*>(png_get_io_ptr(p))->append(reinterpret_cast<const char*>(data), n);
      },
      [](png_structp) {});
  png_set_IHDR(png, info, static_cast<png_uint_32>(img.width), static_cast<png_uint_32>(img.height), 8,
               PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_set_compression_level(png, 6);
  png_write_info(png, info);
  for (int y = 0; y < img.height; ++y)
    rows[static_cast<size_t>(y)] = const_cast<png_bytep>(img.rgb.data() + size_t(y) * img.width * 3);
  png_write_image(png, rows.data());
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  return out;
}

struct PngReadCtx {
  const std::string* data;
  size_t pos;
};

static RgbImage load_png(const std::string& data, const std::string& path) {
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  if (!png) throw EngineError(path + ": libpng init failed");
  png_infop info = png_create_info_struct(png);
  RgbImage img;
  std::vector<png_bytep> rows;
  PngReadCtx ctx{&data, 8};
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, nullptr);
    throw EngineError(path + ": corrupt PNG");
  }
  png_set_read_fn(png, &ctx, [](png_structp p, png_bytep out, png_size_t n) {
    auto* c = static_cast<PngReadCtx*>(png_get_io_ptr(p));
    if (c->pos + n > c->data->size()) png_error(p, "truncated");
    std::memcpy(out, c->data->data() + c->pos, n);
    c->pos += n;
  });
  png_set_sig_bytes(png, 8);
  png_set_user_limits(png, kMaxImageSide, kMaxImageSide);
  png_read_info(png, info);
  png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
  int color = png_get_color_type(png, info), depth = png_get_bit_depth(png, info);
  if (int64_t(w) * h > kMaxImagePixels) {
    png_destroy_read_struct(&png, &info, nullptr);
    throw EngineError(path + ": image too large");
  }
  // Normalise every PNG flavour to 8-bit RGB (as PIL's convert('RGB')).
  if (depth == 16) png_set_strip_16(png);
  if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if ((color == PNG_COLOR_TYPE_GRAY || color == PNG_COLOR_TYPE_GRAY_ALPHA) && depth < 8)
    png_set_expand_gray_1_2_4_to_8(png);
  if (color == PNG_COLOR_TYPE_GRAY || color == PNG_COLOR_TYPE_GRAY_ALPHA) png_set_gray_to_rgb(png);
  if (png_get_valid(png, info, PNG_INFO_tRNS)) png_set_tRNS_to_alpha(png);
  png_set_strip_alpha(png);
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  if (png_get_rowbytes(png, info) != size_t(w) * 3) png_error(png, "unexpected row layout");
  img.width = int(w);
  img.height = int(h);
  img.rgb.resize(size_t(w) * h * 3);
  rows.resize(h);
  for (png_uint_32 y = 0; y < h; ++y) rows[y] = img.rgb.data() + size_t(y) * w * 3;
  png_read_image(png, rows.data());
  png_read_end(png, nullptr);
  png_destroy_read_struct(&png, &info, nullptr);
  check_dims(img.width, img.height, path);
  return img;
}

// ---------------------------------------------------------------- PNM

static RgbImage load_pnm(const std::string& d, const std::string& path) {
  size_t pos = 2;
  auto skip_ws = [&] {
    for (;;) {
      while (pos < d.size() && std::isspace(static_cast<unsigned char>(d[pos]))) ++pos;
      if (pos < d.size() && d[pos] == '#') {
        while (pos < d.size() && d[pos] != '\n') ++pos;
      } else {
        break;
      }
    }
  };
  auto read_int = [&](const char* what) -> long {
    skip_ws();
    if (pos >= d.size() || !std::isdigit(static_cast<unsigned char>(d[pos])))
      throw EngineError(path + ": bad PNM header (" + what + ")");
    long v = 0;
    while (pos < d.size() && std::isdigit(static_cast<unsigned char>(d[pos]))) {
      v = v * 10 + (d[pos++] - '0');
      if (v > (1L << 30)) throw EngineError(path + ": bad PNM header (" + what + " too large)");
    }
    return v;
  };
  const char kind = d[1];
  const bool rgb = kind == '3' || kind == '6', binary = kind == '5' || kind == '6';
  long w = read_int("width"), h = read_int("height"), maxv = read_int("maxval");
  check_dims(int(std::min(w, 1L << 30)), int(std::min(h, 1L << 30)), path);
  if (maxv <= 0 || maxv > 65535) throw EngineError(path + ": bad PNM maxval " + std::to_string(maxv));
  RgbImage img;
  img.width = int(w);
  img.height = int(h);
  const size_t n = size_t(w) * h * (rgb ? 3 : 1);
  std::vector<uint32_t> vals(n);
  if (binary) {
    ++pos;  // exactly one whitespace after maxval
    const size_t bps = maxv > 255 ? 2 : 1;
    if (d.size() < pos + n * bps) throw EngineError(path + ": truncated PNM pixel data");
    for (size_t i = 0; i < n; ++i)
      vals[i] = bps == 1 ? uint8_t(d[pos + i]) : (uint32_t(uint8_t(d[pos + 2 * i])) << 8 | uint8_t(d[pos + 2 * i + 1]));
  } else {
    for (size_t i = 0; i < n; ++i) vals[i] = uint32_t(read_int("pixel"));
  }
  img.rgb.resize(size_t(w) * h * 3);
  for (size_t i = 0; i < size_t(w) * h; ++i)
    for (int c = 0; c < 3; ++c) {
      uint32_t v = vals[rgb ? i * 3 + c : i];
      if (v > uint32_t(maxv)) throw EngineError(path + ": PNM sample above maxval");
      img.rgb[i * 3 + c] = maxv == 255 ? uint8_t(v) : uint8_t((v * 255 + maxv / 2) / maxv);
    }
  return img;
}

RgbImage load_image_file(const std::string& path) {
  std::string data = read_text_file(path);
  if (data.empty()) throw EngineError(path + ": empty file");
  static const unsigned char sig[8] = {0x89, 'P', 'N', 'G', 0x0D, 0x0A, 0x1A, 0x0A};
  if (data.size() >= 8 && std::memcmp(data.data(), sig, 8) == 0) return load_png(data, path);
  if (data.size() >= 2 && data[0] == 'P' && std::strchr("2356", data[1])) return load_pnm(data, path);
  throw EngineError(path + ": unsupported image format (PNG, PPM, PGM)");
}

// ---------------------------------------------------------------- PIL resize

// Pillow's Resample.c: bicubic a = -0.5, support 2 scaled by the shrink factor,
// coefficients normalised then quantised to 22-bit fixed point for 8-bit images.
static double pil_bicubic(double x) {
  const double a = -0.5;
  x = std::fabs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

// Pillow's bilinear (triangle) filter, support 1 scaled likewise.
static double pil_bilinear(double x) {
  x = std::fabs(x);
  return x < 1.0 ? 1.0 - x : 0.0;
}

static constexpr int kPrecisionBits = 32 - 8 - 2;

struct ResampleCoeffs {
  int ksize = 0;
  std::vector<int> bounds;  // [xmin, count] per output
  std::vector<int32_t> k;   // fixed-point coefficients
};

static ResampleCoeffs precompute_coeffs(int in_size, int out_size, PilFilter filter) {
  const double in0 = 0.0, in1 = in_size;
  const double scale = (in1 - in0) / out_size;
  const double filterscale = scale < 1.0 ? 1.0 : scale;
  double (*const kernel)(double) = filter == PilFilter::Bilinear ? pil_bilinear : pil_bicubic;
  const double support = (filter == PilFilter::Bilinear ? 1.0 : 2.0) * filterscale;
  ResampleCoeffs c;
  c.ksize = int(std::ceil(support)) * 2 + 1;
  c.bounds.resize(size_t(out_size) * 2);
  c.k.assign(size_t(out_size) * c.ksize, 0);
  std::vector<double> kk(size_t(c.ksize));
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = in0 + (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    int xmin = int(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = int(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      const double w = kernel((x + xmin - center + 0.5) * ss);
      kk[size_t(x)] = w;
      ww += w;
    }
    for (int x = 0; x < xmax; ++x)
      if (ww != 0.0) kk[size_t(x)] /= ww;
    for (int x = 0; x < xmax; ++x) {
      const double v = kk[size_t(x)] * (1 << kPrecisionBits);
      c.k[size_t(xx) * c.ksize + x] = int32_t(v < 0 ? std::trunc(-0.5 + v) : std::trunc(0.5 + v));
    }
    c.bounds[size_t(xx) * 2] = xmin;
    c.bounds[size_t(xx) * 2 + 1] = xmax;
  }
  return c;
}

static inline uint8_t clip8(int64_t v) {
  v >>= kPrecisionBits;
  return v < 0 ? 0 : v > 255 ? 255 : uint8_t(v);
}

RgbImage resize_bicubic_pil(const RgbImage& in, int out_w, int out_h) {
  return resize_pil(in, out_w, out_h, PilFilter::Bicubic);
}

RgbImage resize_pil(const RgbImage& in, int out_w, int out_h, PilFilter filter) {
  check_dims(in.width, in.height, "resize input");
  check_dims(out_w, out_h, "resize output");
  if (out_w == in.width && out_h == in.height) return in;  // PIL returns a copy
  RgbImage cur = in;
  if (out_w != cur.width) {  // horizontal pass first, as ImagingResampleInner
    ResampleCoeffs c = precompute_coeffs(cur.width, out_w, filter);
    RgbImage t;
    t.width = out_w;
    t.height = cur.height;
    t.rgb.resize(size_t(out_w) * cur.height * 3);
    for (int y = 0; y < cur.height; ++y) {
      const uint8_t* row = cur.rgb.data() + size_t(y) * cur.width * 3;
      uint8_t* dst = t.rgb.data() + size_t(y) * out_w * 3;
      for (int xx = 0; xx < out_w; ++xx) {
        const int xmin = c.bounds[size_t(xx) * 2], xn = c.bounds[size_t(xx) * 2 + 1];
        const int32_t* k = c.k.data() + size_t(xx) * c.ksize;
        for (int ch = 0; ch < 3; ++ch) {
          int64_t ss = int64_t(1) << (kPrecisionBits - 1);
          for (int x = 0; x < xn; ++x) ss += int64_t(row[(xmin + x) * 3 + ch]) * k[x];
          dst[xx * 3 + ch] = clip8(ss);
        }
      }
    }
    cur = std::move(t);
  }
  if (out_h != cur.height) {
    ResampleCoeffs c = precompute_coeffs(cur.height, out_h, filter);
    RgbImage t;
    t.width = cur.width;
    t.height = out_h;
    t.rgb.resize(size_t(cur.width) * out_h * 3);
    for (int yy = 0; yy < out_h; ++yy) {
      const int ymin = c.bounds[size_t(yy) * 2], yn = c.bounds[size_t(yy) * 2 + 1];
      const int32_t* k = c.k.data() + size_t(yy) * c.ksize;
      uint8_t* dst = t.rgb.data() + size_t(yy) * cur.width * 3;
      for (int x = 0; x < cur.width * 3; ++x) {
        int64_t ss = int64_t(1) << (kPrecisionBits - 1);
        for (int y = 0; y < yn; ++y) ss += int64_t(cur.rgb[size_t(ymin + y) * cur.width * 3 + x]) * k[y];
        dst[x] = clip8(ss);
      }
    }
    cur = std::move(t);
  }
  return cur;
}

// ---------------------------------------------------------------- InternVL

void choose_tile_grid(int width, int height, int min_num, int max_num, int tile_size, int* cols, int* rows) {
  // Candidate (i, j) grids sorted by tile count; Python builds them from a set,
  // sorted stably by i*j; ties in aspect distance keep the later candidate
  // when the image is large enough for it.
  std::vector<std::pair<int, int>> ratios;
  std::set<std::pair<int, int>> seen;
  for (int n = min_num; n <= max_num; ++n)
    for (int i = 1; i <= n; ++i)
      for (int j = 1; j <= n; ++j)
        if (i * j <= max_num && i * j >= min_num && seen.insert({i, j}).second) ratios.push_back({i, j});
  std::stable_sort(ratios.begin(), ratios.end(),
                   [](const auto& a, const auto& b) { return a.first * a.second < b.first * b.second; });
  const double aspect = double(width) / double(height);
  double best_diff = INFINITY;
  std::pair<int, int> best{1, 1};
  const double area = double(width) * double(height);
  for (const auto& r : ratios) {
    const double target = double(r.first) / double(r.second);
    const double diff = std::fabs(aspect - target);
    if (diff < best_diff) {
      best_diff = diff;
      best = r;
    } else if (diff == best_diff) {
      if (area > 0.5 * tile_size * tile_size * r.first * r.second) best = r;
    }
  }
  *cols = best.first;
  *rows = best.second;
}

static void normalise_tile(const RgbImage& tile, float* out) {
  // torchvision ToTensor (x/255) then Normalize((x - mean) / std), in float32.
  static const float mean[3] = {0.485f, 0.456f, 0.406f}, stdv[3] = {0.229f, 0.224f, 0.225f};
  const size_t plane = size_t(tile.width) * tile.height;
  for (int c = 0; c < 3; ++c)
    for (size_t i = 0; i < plane; ++i) out[c * plane + i] = (float(tile.rgb[i * 3 + c]) / 255.0f - mean[c]) / stdv[c];
}

static RgbImage crop(const RgbImage& img, int x0, int y0, int w, int h) {
  RgbImage t;
  t.width = w;
  t.height = h;
  t.rgb.resize(size_t(w) * h * 3);
  for (int y = 0; y < h; ++y)
    std::memcpy(t.rgb.data() + size_t(y) * w * 3, img.rgb.data() + (size_t(y0 + y) * img.width + x0) * 3, size_t(w) * 3);
  return t;
}

PreprocessedImage preprocess_image(const RgbImage& src, const ChatHParams& chat) {
  check_dims(src.width, src.height, "input image");
  if (src.rgb.size() != size_t(src.width) * src.height * 3) throw EngineError("input image buffer size mismatch");
  const int S = chat.image_size;
  PreprocessedImage out;
  out.tile_size = S;
  PreprocessGeometry& g = out.geometry;
  g.source_width = src.width;
  g.source_height = src.height;
  g.tile_size = S;
  std::vector<RgbImage> tiles;
  if (chat.dynamic_image_size) {
    g.view_width = src.width;
    g.view_height = src.height;
    choose_tile_grid(src.width, src.height, chat.min_dynamic_patch, chat.max_dynamic_patch, S, &g.grid_cols,
                     &g.grid_rows);
    g.resized_width = S * g.grid_cols;
    g.resized_height = S * g.grid_rows;
    RgbImage resized = resize_bicubic_pil(src, g.resized_width, g.resized_height);
    for (int r = 0; r < g.grid_rows; ++r)
      for (int c = 0; c < g.grid_cols; ++c) tiles.push_back(crop(resized, c * S, r * S, S, S));
    if (chat.use_thumbnail && tiles.size() != 1) {
      tiles.push_back(resize_bicubic_pil(src, S, S));
      g.thumbnail = true;
    }
  } else {
    const RgbImage* view = &src;
    RgbImage padded;
    if (chat.pad2square && src.width != src.height) {
      // expand2square: background = int(mean * 255) per channel; centred with floor.
      const int side = std::max(src.width, src.height);
      padded.width = padded.height = side;
      padded.rgb.resize(size_t(side) * side * 3);
      const uint8_t bg[3] = {uint8_t(0.485 * 255), uint8_t(0.456 * 255), uint8_t(0.406 * 255)};
      for (size_t i = 0; i < size_t(side) * side; ++i) std::memcpy(&padded.rgb[i * 3], bg, 3);
      g.pad_left = (side - src.width) / 2;
      g.pad_top = (side - src.height) / 2;
      for (int y = 0; y < src.height; ++y)
        std::memcpy(padded.rgb.data() + (size_t(y + g.pad_top) * side + g.pad_left) * 3,
                    src.rgb.data() + size_t(y) * src.width * 3, size_t(src.width) * 3);
      g.padded_to_square = true;
      view = &padded;
    }
    g.view_width = view->width;
    g.view_height = view->height;
    g.resized_width = g.resized_height = S;
    tiles.push_back(resize_bicubic_pil(*view, S, S));
  }
  g.n_tiles = int(tiles.size());
  out.pixels.resize(tiles.size() * 3 * size_t(S) * S);
  for (size_t t = 0; t < tiles.size(); ++t) normalise_tile(tiles[t], out.pixels.data() + t * 3 * size_t(S) * S);
  return out;
}

}  // namespace firstread::engine
