#include "engine/weights.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstring>

#include "engine/common.h"

namespace firstread::engine {

WeightFormat parse_weight_format(const std::string& s) {
  if (s.empty() || s == "auto" || s == "stored") return WeightFormat::AsStored;
  if (s == "f32") return WeightFormat::F32;
  if (s == "bf16") return WeightFormat::BF16;
  if (s == "f16") return WeightFormat::F16;
  if (s == "q8" || s == "q8_0") return WeightFormat::Q8;
  throw EngineError("unknown weights format '" + s + "' (auto, f32, bf16, f16, q8)");
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

// After a tensor was converted into engine-owned memory its mapped pages are
// not read again: drop them from this process (they stay in the page cache),
// so resident memory is the converted copy alone.
static void release_mapped(const TensorInfo& t) {
  const uintptr_t page = uintptr_t(::sysconf(_SC_PAGESIZE));
  uintptr_t b = (reinterpret_cast<uintptr_t>(t.data) + page - 1) & ~(page - 1);
  uintptr_t e = (reinterpret_cast<uintptr_t>(t.data) + t.nbytes) & ~(page - 1);
  if (e > b) ::madvise(reinterpret_cast<void*>(b), e - b, MADV_DONTNEED);
}

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
  if (fmt_ == WeightFormat::Q8 && quantize_allowed_ && cols % kQ8Block == 0) want = DType::Q8_0;
  const bool aligned = reinterpret_cast<uintptr_t>(t.data) % dtype_size(t.dtype) == 0;
  if (want == t.dtype && aligned) return w;
  const int64_t n = rows * cols;
  std::vector<float> tmp(static_cast<size_t>(n));
  if (!aligned) {  // a header with odd offsets: take an aligned copy first
    std::vector<uint8_t> raw(t.nbytes);
    std::memcpy(raw.data(), t.data, t.nbytes);
    convert_rows_f32(WeightView{raw.data(), t.dtype, rows, cols}, 0, rows, tmp.data());
  } else {
    convert_rows_f32(w, 0, rows, tmp.data());
  }
  release_mapped(t);
  if (want == DType::Q8_0) {
    std::vector<BlockQ8> q(static_cast<size_t>(n / kQ8Block));
    quantize_rows_q8(tmp.data(), rows, cols, q.data());
    owned_q8_.push_back(std::move(q));
    return WeightView{owned_q8_.back().data(), DType::Q8_0, rows, cols};
  }
  if (want == DType::F32) {
    owned_f32_.push_back(std::move(tmp));
    return WeightView{owned_f32_.back().data(), DType::F32, rows, cols};
  }
  std::vector<uint16_t> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) out[size_t(i)] = want == DType::BF16 ? f32_to_bf16(tmp[size_t(i)]) : f32_to_f16(tmp[size_t(i)]);
  owned_u16_.push_back(std::move(out));
  return WeightView{owned_u16_.back().data(), want, rows, cols};
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
  for (const auto& v : owned_q8_) n += v.size() * sizeof(BlockQ8);
  return n;
}

}  // namespace firstread::engine
