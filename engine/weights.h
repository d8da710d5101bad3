// Binds named tensors of a SafetensorsSet to the shapes config.json implies.
// Matrices stay in the mapping (zero copy) unless a different storage format
// was requested; vectors (norms, biases, tables) become float32 copies.
#pragma once

#include <deque>
#include <string>
#include <vector>

#include "engine/kernels.h"
#include "engine/safetensors.h"

namespace firstread::engine {

enum class WeightFormat { AsStored, F32, BF16, F16, Q8 };
WeightFormat parse_weight_format(const std::string& s);  // auto|f32|bf16|f16|q8

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
  // Q8 applies to the decoder's matrices only (decode is bandwidth-bound;
  // the vision encoder is compute-bound and keeps its stored precision).
  void set_quantize_allowed(bool on) { quantize_allowed_ = on; }

 private:
  const TensorInfo& checked(const std::string& name, const std::vector<int64_t>& shape);
  const SafetensorsSet& st_;
  WeightFormat fmt_;
  bool quantize_allowed_ = true;
  std::deque<std::vector<BlockQ8>> owned_q8_;
  std::deque<std::vector<float>> owned_f32_;
  std::deque<std::vector<uint16_t>> owned_u16_;
};

std::string shape_str(const std::vector<int64_t>& s);

}  // namespace firstread::engine
