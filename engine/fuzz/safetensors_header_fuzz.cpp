// libFuzzer harness: the safetensors header parser must reject or accept any
// input without crashing, and never return a tensor outside the data section.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "engine/common.h"
#include "engine/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 8) return 0;
  // First 8 bytes: the claimed data-section length (bounded), then the JSON.
  uint64_t data_len;
  std::memcpy(&data_len, data, 8);
  data_len %= (1u << 20);
  try {
    auto tensors = firstread::engine::parse_safetensors_header(reinterpret_cast<const char*>(data + 8), size - 8,
                                                               size_t(data_len), "fuzz");
    for (const auto& t : tensors)
      if (reinterpret_cast<uintptr_t>(t.data) + t.nbytes > data_len) std::abort();
  } catch (const firstread::engine::EngineError&) {
  }
  return 0;
}
