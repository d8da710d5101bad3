// Binds named tensors of a SafetensorsSet to the shapes config.json implies.
// Matrices stay in the mapping (zero copy) unless a different storage format
// was requested; vectors (norms, biases, tables) become float32 copies.
#pragma once

#include <deque>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/kernels.h"
#include "engine/safetensors.h"

namespace firstread::engine {

enum class WeightFormat { AsStored, F32, BF16, F16, Q8, Q4 };
// auto|f32|bf16|f16|int8 (= q8, q8_0)|int4 (= q4, q4_0)
WeightFormat parse_weight_format(const std::string& s);
const char* weight_format_name(WeightFormat f);  // canonical: auto, f32, bf16, f16, int8, int4
// vision_weights: auto (empty) | f32 | bf16 | int8 (= q8, q8_0). auto keeps the
// earlier rule: the decoder's format when it is f32/bf16/f16, else as stored.
WeightFormat parse_vision_weight_format(const std::string& s, WeightFormat decoder);

class WeightStore {
 public:
  WeightStore(const SafetensorsSet& st, WeightFormat fmt) : st_(st), fmt_(fmt) {}
  bool has(const std::string& name) const { return st_.find(name) != nullptr; }
  // A [rows, cols] matrix; `shape` is what the file must say (e.g. a conv
  // kernel [d,3,p,p] viewed as [d, 3*p*p]).
  WeightView matrix(const std::string& name, int64_t rows, int64_t cols, std::vector<int64_t> shape = {});
  // A float32 copy (or the mapping itself for F32) with the exact `shape`.
  const float* floats(const std::string& name, const std::vector<int64_t>& shape);
  size_t owned_bytes() const;
  // int8/int4 apply to the decoder's matrices only (decode is bandwidth-bound;
  // the vision encoder is compute-bound and keeps its stored precision).
  void set_quantize_allowed(bool on) { quantize_allowed_ = on; }
  // The format later matrix() calls convert to (the vision encoder's
  // vision_weights after the decoder's weights).
  void set_format(WeightFormat f) { fmt_ = f; }

  // Quantised-weight cache: a file holding every matrix this store converted,
  // valid only for `key` (the format and the weight files' sizes and
  // modification times). open_cache maps it and later matrix() calls take
  // their blocks from it instead of quantising again; a missing, stale or
  // damaged file is ignored (the reason is in cache_note()).
  bool open_cache(const std::string& path, const std::string& key);
  // Writes what was converted (temp file + rename). False with cache_note()
  // saying why when the file cannot be written (e.g. a read-only model dir).
  bool write_cache(const std::string& path, const std::string& key);
  size_t matrices_converted() const { return converted_.size(); }
  const std::string& cache_note() const { return cache_note_; }

 private:
  const TensorInfo& checked(const std::string& name, const std::vector<int64_t>& shape);
  const SafetensorsSet& st_;
  WeightFormat fmt_;
  bool quantize_allowed_ = true;
  std::deque<std::vector<uint8_t>> owned_blocks_;
  std::deque<std::vector<float>> owned_f32_;
  std::deque<std::vector<uint16_t>> owned_u16_;
  struct Converted {
    std::string name;
    WeightView view;
  };
  std::vector<Converted> converted_;
  std::unique_ptr<MappedFile> cache_file_;
  std::map<std::string, WeightView> cached_;
  std::string cache_note_;
};

std::string shape_str(const std::vector<int64_t>& s);

// Conversion at load goes through a float32 buffer of at most this many bytes
// (a block of rows), whatever the matrix size; the memory plan counts it.
constexpr int64_t kConvertBlockBytes = int64_t(32) << 20;

}  // namespace firstread::engine
