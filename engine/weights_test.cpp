// WeightStore: streamed conversion at load and the quantised-weight cache
// beyond 32 GB (64-bit offsets).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <random>

#include "engine/common.h"
#include "engine/kernels.h"
#include "engine/weights.h"

using namespace firstread::engine;

namespace {

std::string tmp_path(const std::string& name) {
  return "/tmp/firstread_engine_w_" + std::to_string(::getpid()) + "_" + name;
}

// One BF16 matrix `name` [rows, cols] in a safetensors file; returns the floats it holds.
std::vector<float> write_bf16_matrix(const std::string& path, const std::string& name, int64_t rows, int64_t cols) {
  std::mt19937 rng(7);
  std::normal_distribution<float> g(0.f, 1.f);
  std::vector<uint16_t> raw(size_t(rows * cols));
  std::vector<float> values(raw.size());
  for (size_t i = 0; i < raw.size(); ++i) {
    raw[i] = f32_to_bf16(g(rng));
    values[i] = bf16_to_f32(raw[i]);
  }
  std::string header = "{\"" + name + "\":{\"dtype\":\"BF16\",\"shape\":[" + std::to_string(rows) + "," +
                       std::to_string(cols) + "],\"data_offsets\":[0," + std::to_string(raw.size() * 2) + "]}}";
  header += std::string((8 - header.size() % 8) % 8, ' ');
  std::ofstream f(path, std::ios::binary);
  const uint64_t n = header.size();
  f.write(reinterpret_cast<const char*>(&n), 8);
  f << header;
  f.write(reinterpret_cast<const char*>(raw.data()), std::streamsize(raw.size() * 2));
  return values;
}

}  // namespace

// A matrix larger than one conversion block (several blocks of rows) is
// converted block by block with the same result as converting it whole.
TEST(engine_weights, StreamedConversionMatchesWholeMatrix) {
  const int64_t cols = 4096, rows = kConvertBlockBytes / (cols * 4) * 2 + 37;  // 2 blocks and a partial one
  const std::string p = tmp_path("stream.safetensors");
  const std::vector<float> values = write_bf16_matrix(p, "w", rows, cols);
  SafetensorsSet st;
  st.add_file(p);
  for (WeightFormat f : {WeightFormat::Q8, WeightFormat::Q4, WeightFormat::F32, WeightFormat::F16}) {
    WeightStore ws(st, f);
    const WeightView v = ws.matrix("w", rows, cols);
    std::vector<uint8_t> want;
    if (f == WeightFormat::Q8 || f == WeightFormat::Q4) {
      want.resize(matrix_bytes(v.dtype, rows, cols));
      if (f == WeightFormat::Q8) quantize_rows_q8(values.data(), rows, cols, reinterpret_cast<BlockQ8*>(want.data()));
      else quantize_rows_q4(values.data(), rows, cols, reinterpret_cast<BlockQ4*>(want.data()));
    } else if (f == WeightFormat::F32) {
      want.resize(values.size() * 4);
      std::memcpy(want.data(), values.data(), want.size());
    } else {
      want.resize(values.size() * 2);
      for (size_t i = 0; i < values.size(); ++i) {
        const uint16_t h = f32_to_f16(values[i]);
        std::memcpy(want.data() + 2 * i, &h, 2);
      }
    }
    ASSERT_EQ(matrix_bytes(v.dtype, rows, cols), want.size()) << weight_format_name(f);
    EXPECT_EQ(std::memcmp(v.data, want.data(), want.size()), 0) << weight_format_name(f);
  }
  std::remove(p.c_str());
}

// The cache format keeps 64-bit offsets: a matrix placed 33 GiB into a
// (sparse) cache file is found, checksummed and mapped.
TEST(engine_weights, CacheBeyond32GiBIsMapped) {
  const std::string p = tmp_path("big.safetensors"), cache = tmp_path("big.cache");
  write_bf16_matrix(p, "w", 64, 256);
  SafetensorsSet st;
  st.add_file(p);
  WeightStore ws(st, WeightFormat::Q8);
  const WeightView v = ws.matrix("w", 64, 256);
  const std::string key = "test-key";
  ASSERT_TRUE(ws.write_cache(cache, key)) << ws.cache_note();
  // Move the one entry to offset 33 GiB: rewrite its offset field and data there.
  std::string file = read_text_file(cache);
  const size_t name_len_at = 8 + 4 + 4 + key.size() + 4;
  uint32_t nlen = 0;
  std::memcpy(&nlen, file.data() + name_len_at, 4);
  const size_t off_at = name_len_at + 4 + nlen + 4 + 8 + 8;
  uint64_t old_off = 0, bytes = 0;
  std::memcpy(&old_off, file.data() + off_at, 8);
  std::memcpy(&bytes, file.data() + off_at + 8, 8);
  ASSERT_EQ(bytes, matrix_bytes(DType::Q8_0, 64, 256));
  const uint64_t new_off = 33ull << 30;
  const int fd = ::open(cache.c_str(), O_WRONLY);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::pwrite(fd, &new_off, 8, off_t(off_at)), 8);
  ASSERT_EQ(::pwrite(fd, file.data() + old_off, bytes, off_t(new_off)), ssize_t(bytes));
  ::close(fd);
  struct stat sb {};
  ASSERT_EQ(::stat(cache.c_str(), &sb), 0);
  ASSERT_GT(uint64_t(sb.st_size), 32ull << 30);
  WeightStore again(st, WeightFormat::Q8);
  ASSERT_TRUE(again.open_cache(cache, key)) << again.cache_note();
  const WeightView c = again.matrix("w", 64, 256);
  EXPECT_EQ(again.matrices_converted(), 0u);  // taken from the cache, not quantised again
  EXPECT_EQ(std::memcmp(c.data, v.data, bytes), 0);
  std::remove(cache.c_str());
  std::remove(p.c_str());
}

// A cache written before the interleaved block layout (format version 2) is
// ignored with a note and the matrix quantised again, never read in the old
// block order as if it were the new one.
TEST(engine_weights, CacheOfAnOlderFormatVersionIsRebuiltNotMisread) {
  const std::string p = tmp_path("old.safetensors"), cache = tmp_path("old.cache");
  write_bf16_matrix(p, "w", 48, 672);  // 21 blocks per row: one full chunk of 16 and a short one
  SafetensorsSet st;
  st.add_file(p);
  WeightStore ws(st, WeightFormat::Q4);
  const WeightView v = ws.matrix("w", 48, 672);
  ASSERT_TRUE(ws.write_cache(cache, "key")) << ws.cache_note();
  const uint32_t old_version = 2;
  const int fd = ::open(cache.c_str(), O_WRONLY);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::pwrite(fd, &old_version, 4, 8), 4);  // the u32 after "FRWCACHE"
  ::close(fd);
  WeightStore again(st, WeightFormat::Q4);
  EXPECT_FALSE(again.open_cache(cache, "key"));
  EXPECT_NE(again.cache_note().find("version 3"), std::string::npos) << again.cache_note();
  const WeightView c = again.matrix("w", 48, 672);
  EXPECT_EQ(again.matrices_converted(), 1u);  // quantised again
  EXPECT_EQ(std::memcmp(c.data, v.data, matrix_bytes(DType::Q4_0, 48, 672)), 0);
  std::remove(cache.c_str());
  std::remove(p.c_str());
}
