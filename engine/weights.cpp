#include "engine/weights.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "engine/common.h"

namespace firstread::engine {

WeightFormat parse_weight_format(const std::string& s) {
  if (s.empty() || s == "auto" || s == "stored") return WeightFormat::AsStored;
  if (s == "f32") return WeightFormat::F32;
  if (s == "bf16") return WeightFormat::BF16;
  if (s == "f16") return WeightFormat::F16;
  if (s == "int8" || s == "q8" || s == "q8_0") return WeightFormat::Q8;
  if (s == "int4" || s == "q4" || s == "q4_0") return WeightFormat::Q4;
  throw EngineError("unknown weights format '" + s + "' (auto, f32, bf16, f16, int8, int4)");
}

WeightFormat parse_vision_weight_format(const std::string& s, WeightFormat decoder) {
  if (s.empty() || s == "auto")
    return decoder == WeightFormat::Q8 || decoder == WeightFormat::Q4 ? WeightFormat::AsStored : decoder;
  if (s == "stored") return WeightFormat::AsStored;
  if (s == "f32") return WeightFormat::F32;
  if (s == "bf16") return WeightFormat::BF16;
  if (s == "int8" || s == "q8" || s == "q8_0") return WeightFormat::Q8;
  throw EngineError("unknown vision_weights format '" + s + "' (auto, f32, bf16, int8)");
}

const char* weight_format_name(WeightFormat f) {
  switch (f) {
    case WeightFormat::AsStored: return "auto";
    case WeightFormat::F32: return "f32";
    case WeightFormat::BF16: return "bf16";
    case WeightFormat::F16: return "f16";
    case WeightFormat::Q8: return "int8";
    case WeightFormat::Q4: return "int4";
  }
  return "?";
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

// After a tensor was converted into engine-owned memory its mapped pages are
// not read again: drop them from this process (they stay in the page cache),
// so resident memory is the converted copy alone.
static void release_mapped_range(const void* data, size_t nbytes) {
  const uintptr_t page = uintptr_t(::sysconf(_SC_PAGESIZE));
  uintptr_t b = (reinterpret_cast<uintptr_t>(data) + page - 1) & ~(page - 1);
  uintptr_t e = (reinterpret_cast<uintptr_t>(data) + nbytes) & ~(page - 1);
  if (e > b) ::madvise(reinterpret_cast<void*>(b), e - b, MADV_DONTNEED);
}
static void release_mapped(const TensorInfo& t) { release_mapped_range(t.data, t.nbytes); }

const TensorInfo& WeightStore::checked(const std::string& name, const std::vector<int64_t>& shape) {
  const TensorInfo& t = st_.get(name);
  if (t.shape != shape)
    throw EngineError(t.file + ": tensor '" + name + "' has shape " + shape_str(t.shape) + " but config.json implies " +
                      shape_str(shape));
  return t;
}

WeightView WeightStore::matrix(const std::string& name, int64_t rows, int64_t cols, std::vector<int64_t> shape) {
  if (shape.empty()) shape = {rows, cols};
  const TensorInfo& t = checked(name, shape);
  WeightView w{t.data, t.dtype, rows, cols};
  DType want = t.dtype;
  if (fmt_ == WeightFormat::F32) want = DType::F32;
  if (fmt_ == WeightFormat::BF16) want = DType::BF16;
  if (fmt_ == WeightFormat::F16) want = DType::F16;
  if (fmt_ == WeightFormat::Q8 && quantize_allowed_ && cols % kQBlock == 0) want = DType::Q8_0;
  if (fmt_ == WeightFormat::Q4 && quantize_allowed_ && cols % kQBlock == 0) want = DType::Q4_0;
  const bool aligned = reinterpret_cast<uintptr_t>(t.data) % dtype_size(t.dtype) == 0;
  if (want == t.dtype && aligned) return w;
  if (auto c = cached_.find(name); c != cached_.end() && c->second.dtype == want && c->second.rows == rows &&
                                   c->second.cols == cols)
    return c->second;
  // Streamed in blocks of rows: each block of the mapped source is converted
  // to float32 in a small buffer, written in the target format, and its
  // source pages are dropped before the next block is read, so converting a
  // 40 B model never holds more than the converted copy plus one block (never
  // an F32 copy of a matrix, let alone of the model).
  const int64_t n = rows * cols;
  const int64_t block_rows = std::max<int64_t>(1, std::min<int64_t>(rows, kConvertBlockBytes / (cols * 4)));
  const size_t src_row_bytes = size_t(cols) * dtype_size(t.dtype);
  WeightView out;
  std::vector<float>* f32_dst = nullptr;
  uint8_t* block_dst = nullptr;
  uint16_t* u16_dst = nullptr;
  if (want == DType::Q8_0 || want == DType::Q4_0) {
    owned_blocks_.emplace_back(matrix_bytes(want, rows, cols));
    block_dst = owned_blocks_.back().data();
    out = WeightView{block_dst, want, rows, cols};
  } else if (want == DType::F32) {
    owned_f32_.emplace_back(static_cast<size_t>(n));
    f32_dst = &owned_f32_.back();
    out = WeightView{f32_dst->data(), DType::F32, rows, cols};
  } else {
    owned_u16_.emplace_back(static_cast<size_t>(n));
    u16_dst = owned_u16_.back().data();
    out = WeightView{u16_dst, want, rows, cols};
  }
  std::vector<float> tmp(f32_dst ? 0 : static_cast<size_t>(block_rows * cols));
  std::vector<uint8_t> raw(aligned ? 0 : size_t(block_rows) * src_row_bytes);
  for (int64_t r0 = 0; r0 < rows; r0 += block_rows) {
    const int64_t r1 = std::min(rows, r0 + block_rows);
    float* f = f32_dst ? f32_dst->data() + size_t(r0 * cols) : tmp.data();
    const uint8_t* src = static_cast<const uint8_t*>(t.data) + size_t(r0) * src_row_bytes;
    if (!aligned) {  // a header with odd offsets: take an aligned copy of the block first
      std::memcpy(raw.data(), src, size_t(r1 - r0) * src_row_bytes);
      convert_rows_f32(WeightView{raw.data(), t.dtype, r1 - r0, cols}, 0, r1 - r0, f);
    } else {
      convert_rows_f32(w, r0, r1, f);
    }
    // Rows are independent in the engine's block layout (qlayout.h): row r0 starts at its bytes.
    if (want == DType::Q8_0)
      quantize_rows_q8(f, r1 - r0, cols, block_dst + matrix_bytes(want, r0, cols));
    else if (want == DType::Q4_0)
      quantize_rows_q4(f, r1 - r0, cols, block_dst + matrix_bytes(want, r0, cols));
    else if (u16_dst)
      for (int64_t i = 0; i < (r1 - r0) * cols; ++i)
        u16_dst[size_t(r0 * cols + i)] = want == DType::BF16 ? f32_to_bf16(f[size_t(i)]) : f32_to_f16(f[size_t(i)]);
    release_mapped_range(src, size_t(r1 - r0) * src_row_bytes);
  }
  release_mapped(t);
  converted_.push_back({name, out});
  return out;
}

// Cache file layout (little-endian, this machine's): "FRWCACHE", u32 version,
// u32 key length, key, u32 count, then per matrix: u32 name length, name,
// u32 dtype, i64 rows, i64 cols, u64 offset, u64 bytes, u64 checksum; data
// blocks follow, each at a 64-byte-aligned offset, in the engine's in-memory
// block layout (engine/qlayout.h). Version 3: Q8_0 / Q4_0 rows interleaved 16
// blocks at a time (version 2 held llama.cpp's block order; such a cache is
// ignored and rebuilt, never read in the wrong order).
static constexpr char kCacheMagic[8] = {'F', 'R', 'W', 'C', 'A', 'C', 'H', 'E'};
static constexpr uint32_t kCacheVersion = 3;

// A fast checksum of a block of quantised weights (four independent
// multiply-xor lanes over 8-byte words): catches a damaged or partly written
// file at load, before wrong weights could answer. Not cryptographic.
static uint64_t block_checksum(const void* data, size_t n) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  uint64_t h[4] = {0x9e3779b97f4a7c15ull, 0xc2b2ae3d27d4eb4full, 0x165667b19e3779f9ull, 0x27d4eb2f165667c5ull};
  size_t i = 0;
  for (; i + 32 <= n; i += 32)
    for (int k = 0; k < 4; ++k) {
      uint64_t w;
      std::memcpy(&w, p + i + 8 * k, 8);
      h[k] = (h[k] ^ w) * 0x100000001b3ull;
      h[k] ^= h[k] >> 29;
    }
  uint64_t r = h[0] ^ (h[1] * 3) ^ (h[2] * 5) ^ (h[3] * 7) ^ n;
  for (; i < n; ++i) r = (r ^ p[i]) * 0x100000001b3ull;
  return r;
}

namespace {
struct Reader {
  const uint8_t* p;
  const uint8_t* end;
  bool ok = true;
  template <typename T>
  T get() {
    T v{};
    if (size_t(end - p) < sizeof(T)) {
      ok = false;
      return v;
    }
    std::memcpy(&v, p, sizeof(T));
    p += sizeof(T);
    return v;
  }
  std::string str(uint32_t n) {
    if (size_t(end - p) < n) {
      ok = false;
      return {};
    }
    std::string s(reinterpret_cast<const char*>(p), n);
    p += n;
    return s;
  }
};
}  // namespace

bool WeightStore::open_cache(const std::string& path, const std::string& key) {
  cached_.clear();
  cache_file_.reset();
  struct stat sb{};
  if (::stat(path.c_str(), &sb) != 0) {
    cache_note_ = path + ": no cache yet";
    return false;
  }
  std::unique_ptr<MappedFile> f;
  try {
    f = std::make_unique<MappedFile>(path);
  } catch (const std::exception& e) {
    cache_note_ = std::string("ignored: ") + e.what();
    return false;
  }
  Reader r{f->data(), f->data() + f->size()};
  const std::string magic = r.str(8);
  if (!r.ok || magic != std::string(kCacheMagic, 8) || r.get<uint32_t>() != kCacheVersion) {
    cache_note_ = path + ": ignored (not a firstread weight cache of version " + std::to_string(kCacheVersion) + ")";
    return false;
  }
  const uint32_t klen = r.get<uint32_t>();
  if (!r.ok || klen > 1 << 20 || r.str(klen) != key) {
    cache_note_ = path + ": ignored (made for other weights or another format: size or modification time differ)";
    return false;
  }
  const uint32_t count = r.get<uint32_t>();
  std::map<std::string, WeightView> entries;
  for (uint32_t i = 0; r.ok && i < count; ++i) {
    const uint32_t nlen = r.get<uint32_t>();
    if (nlen > 4096) r.ok = false;
    std::string name = r.str(nlen);
    const uint32_t dt = r.get<uint32_t>();
    const int64_t rows = r.get<int64_t>(), cols = r.get<int64_t>();
    const uint64_t off = r.get<uint64_t>(), bytes = r.get<uint64_t>(), sum = r.get<uint64_t>();
    if (!r.ok || dt > uint32_t(DType::Q4_0) || rows <= 0 || cols <= 0 || rows > (int64_t(1) << 32) ||
        cols > (int64_t(1) << 32) || off % 64 != 0 || off > f->size() || bytes > f->size() - off ||
        bytes != matrix_bytes(DType(dt), rows, cols)) {
      cache_note_ = path + ": ignored (damaged index at entry " + std::to_string(i) + ")";
      return false;
    }
    if (block_checksum(f->data() + off, bytes) != sum) {
      cache_note_ = path + ": ignored (damaged data in " + name + ": checksum differs)";
      return false;
    }
    entries[name] = WeightView{f->data() + off, DType(dt), rows, cols};
  }
  if (!r.ok) {
    cache_note_ = path + ": ignored (truncated index)";
    return false;
  }
  cached_ = std::move(entries);
  cache_file_ = std::move(f);
  cache_note_ = path + ": " + std::to_string(cached_.size()) + " matrices mapped";
  return true;
}

bool WeightStore::write_cache(const std::string& path, const std::string& key) {
  std::string idx(kCacheMagic, 8);
  auto put = [&idx](const auto& v) { idx.append(reinterpret_cast<const char*>(&v), sizeof(v)); };
  put(kCacheVersion);
  put(uint32_t(key.size()));
  idx += key;
  // Matrices taken from the cache are written again too, so a partly valid
  // cache is replaced by a complete one.
  std::vector<Converted> all = converted_;
  for (const auto& [name, view] : cached_) all.push_back({name, view});
  put(uint32_t(all.size()));
  size_t index_size = idx.size();
  for (const auto& c : all) index_size += 4 + c.name.size() + 4 + 8 + 8 + 8 + 8 + 8;
  uint64_t off = (index_size + 63) / 64 * 64;
  std::vector<uint64_t> offsets;
  for (const auto& c : all) {
    const uint64_t bytes = matrix_bytes(c.view.dtype, c.view.rows, c.view.cols);
    put(uint32_t(c.name.size()));
    idx += c.name;
    put(uint32_t(c.view.dtype));
    put(int64_t(c.view.rows));
    put(int64_t(c.view.cols));
    put(off);
    put(bytes);
    put(block_checksum(c.view.data, bytes));
    offsets.push_back(off);
    off = (off + bytes + 63) / 64 * 64;
  }
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    cache_note_ = "could not write " + path + ": " + std::strerror(errno);
    return false;
  }
  bool ok = true;
  auto write_at = [&](const void* data, size_t n, uint64_t at) {
    const char* p = static_cast<const char*>(data);
    while (ok && n > 0) {
      const ssize_t w = ::pwrite(fd, p, n, off_t(at));
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) {
        ok = false;
        break;
      }
      p += w;
      n -= size_t(w);
      at += uint64_t(w);
    }
  };
  write_at(idx.data(), idx.size(), 0);
  for (size_t i = 0; i < all.size() && ok; ++i)
    write_at(all[i].view.data, matrix_bytes(all[i].view.dtype, all[i].view.rows, all[i].view.cols), offsets[i]);
  if (ok && ::ftruncate(fd, off_t(off)) != 0) ok = false;
  if (ok && ::fsync(fd) != 0) ok = false;
  const int err = errno;
  ::close(fd);
  if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0) {
    cache_note_ = "could not write " + path + ": " + std::strerror(ok ? errno : err);
    ::unlink(tmp.c_str());
    return false;
  }
  // Keep why an existing cache was not used (stale, damaged) in the note.
  cache_note_ = (cache_note_.empty() ? "" : cache_note_ + "; ") + "wrote " + std::to_string(all.size()) + " matrices";
  return true;
}

const float* WeightStore::floats(const std::string& name, const std::vector<int64_t>& shape) {
  const TensorInfo& t = checked(name, shape);
  // Mapped F32 data is used in place when aligned (safetensors pads its header
  // to 8 bytes, so it normally is).
  if (t.dtype == DType::F32 && reinterpret_cast<uintptr_t>(t.data) % alignof(float) == 0)
    return static_cast<const float*>(t.data);
  std::vector<float> tmp(size_t(t.numel()));
  std::vector<uint8_t> raw(t.nbytes);
  std::memcpy(raw.data(), t.data, t.nbytes);
  convert_rows_f32(WeightView{raw.data(), t.dtype, 1, t.numel()}, 0, 1, tmp.data());
  owned_f32_.push_back(std::move(tmp));
  return owned_f32_.back().data();
}

size_t WeightStore::owned_bytes() const {
  size_t n = 0;
  for (const auto& v : owned_f32_) n += v.size() * 4;
  for (const auto& v : owned_u16_) n += v.size() * 2;
  for (const auto& v : owned_blocks_) n += v.size();
  if (cache_file_) n += cache_file_->size();
  return n;
}

}  // namespace firstread::engine
