// safetensors reading by mmap: one file or a sharded set named by
// model.safetensors.index.json. The header parser validates everything a
// file claims (sizes, dtypes, offsets) before any tensor data is touched.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace firstread::engine {

// F32/F16/BF16 come from files; Q8_0 and Q4_0 are engine-side storage
// formats chosen at load (blocks of 32 weights with one FP16 scale, kernels.h).
enum class DType { F32, F16, BF16, Q8_0, Q4_0 };
const char* dtype_name(DType t);
size_t dtype_size(DType t);

// One tensor as the file describes it; data points into the mapping.
struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t nbytes = 0;
  std::string file;  // which file holds it, for error messages
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

// Parses a safetensors header (the JSON after the 8-byte length) against the
// size of the data section. Throws EngineError naming `file` and the tensor.
// Exposed separately so the fuzz harness and tests reach it without files.
std::vector<TensorInfo> parse_safetensors_header(const char* json, size_t json_len,
                                                 size_t data_len, const std::string& file);

// The tensors of one safetensors file read from its header alone (pread of
// the length and the JSON; the data is neither mapped nor read). `data` of
// each TensorInfo holds the offset of the tensor in the data section, not a
// pointer. Used by the memory plan, which must not map 80 GB to size them.
std::vector<TensorInfo> read_safetensors_header_file(const std::string& path);

// The weight files of a model directory, in the order SafetensorsSet opens
// them: the shards model.safetensors.index.json names (checked to exist),
// else model.safetensors, else every *.safetensors sorted. Empty when the
// directory holds no weights (a config-only directory, for planning).
std::vector<std::string> model_weight_files(const std::string& dir);

// A read-only memory mapping of one file.
class MappedFile {
 public:
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// All tensors of a model directory (single file or sharded), mapped once.
class SafetensorsSet {
 public:
  // Opens `dir`/model.safetensors.index.json if present, else every
  // *.safetensors in the directory (normally one model.safetensors).
  explicit SafetensorsSet(const std::string& dir);
  // Adds one file (used by the directory constructor and by tests).
  SafetensorsSet() = default;
  void add_file(const std::string& path);

  const TensorInfo* find(const std::string& name) const;
  const TensorInfo& get(const std::string& name) const;  // throws if missing
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  size_t total_bytes() const;
  std::vector<std::string> file_paths() const;

 private:
  std::vector<std::unique_ptr<MappedFile>> files_;
  std::map<std::string, TensorInfo> tensors_;
};

}  // namespace firstread::engine
