// A 64-byte-aligned scratch buffer that grows to the largest size asked and
// then stays: a GEMM keeps one per thread (thread_local) for its panels, so no
// product allocates once the largest shape has run.
//
// Out of line on purpose (common.cpp, built without ISA flags): the GEMM units
// compiled with AVX2 / AVX-512 / AMX flags share it without emitting their
// own copy of its code, which the linker might keep for every caller.
#pragma once

#include <cstdint>

namespace firstread::engine {

struct ThreadBuffer {
  ThreadBuffer() = default;
  ThreadBuffer(const ThreadBuffer&) = delete;
  ThreadBuffer& operator=(const ThreadBuffer&) = delete;
  ~ThreadBuffer();
  // At least `bytes` bytes, 64-byte aligned; the contents are not kept when it grows.
  uint8_t* get(int64_t bytes);

 private:
  uint8_t* p_ = nullptr;
  int64_t cap_ = 0;
};

}  // namespace firstread::engine
