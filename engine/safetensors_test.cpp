#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <string>

#include "engine/common.h"
#include "engine/safetensors.h"

using namespace firstread::engine;

namespace {

std::string tmp_path(const std::string& name) {
  return "/tmp/firstread_engine_st_" + std::to_string(::getpid()) + "_" + name;
}

// Writes an 8-byte length, the header text and `data_len` bytes of data.
std::string write_file(const std::string& name, const std::string& header, size_t data_len,
                       uint64_t claimed_len = UINT64_MAX) {
  std::string p = tmp_path(name);
  std::ofstream f(p, std::ios::binary);
  uint64_t n = claimed_len == UINT64_MAX ? header.size() : claimed_len;
  f.write(reinterpret_cast<const char*>(&n), 8);
  f << header;
  std::string data(data_len, '\0');
  for (size_t i = 0; i < data_len; ++i) data[i] = char(i);
  f << data;
  return p;
}

std::string error_of(const std::string& path) {
  try {
    SafetensorsSet s;
    s.add_file(path);
  } catch (const EngineError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(engine_safetensors, ReadsValidFile) {
  std::string p = write_file("ok", R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},)"
                                   R"("b":{"dtype":"BF16","shape":[4],"data_offsets":[24,32]}})", 32);
  SafetensorsSet s;
  s.add_file(p);
  const TensorInfo& a = s.get("a");
  EXPECT_EQ(a.dtype, DType::F32);
  EXPECT_EQ(a.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(a.nbytes, 24u);
  EXPECT_EQ(static_cast<const uint8_t*>(s.get("b").data)[0], 24);
  EXPECT_EQ(s.total_bytes(), 32u);
  EXPECT_EQ(s.find("c"), nullptr);
  try {
    s.get("c");
    FAIL();
  } catch (const EngineError& e) {
    EXPECT_NE(std::string(e.what()).find("'c'"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find(p), std::string::npos);
  }
  std::remove(p.c_str());
}

TEST(engine_safetensors, TruncatedData) {
  std::string p = write_file("trunc", R"({"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}})", 10);
  std::string e = error_of(p);
  EXPECT_NE(e.find("'a'"), std::string::npos) << e;
  EXPECT_NE(e.find("truncated"), std::string::npos) << e;
  std::remove(p.c_str());
}

TEST(engine_safetensors, HeaderLengthBeyondFile) {
  std::string p = write_file("hlen", R"({})", 0, 1000);
  EXPECT_NE(error_of(p).find("exceeds the file size"), std::string::npos);
  std::string q = write_file("hbig", R"({})", 0, 1ull << 40);
  EXPECT_NE(error_of(q).find("implausible"), std::string::npos);
  std::remove(p.c_str());
  std::remove(q.c_str());
}

TEST(engine_safetensors, LyingOffsetsAndShapes) {
  struct Case {
    const char* header;
    const char* want;
  } cases[] = {
      {R"({"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}})", "need 24"},
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}})", "begin > end"},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
       "overlapping"},
      {R"({"a":{"dtype":"I8","shape":[2],"data_offsets":[0,2]}})", "unsupported dtype I8"},
      {R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", "non-negative"},
      {R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}})", "overflow"},
      {R"({"a":{"dtype":"F32","shape":[2]}})", "data_offsets"},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,99999999999]}})", "beyond the data section"},
      {R"({"a":[1,2]})", "not an object"},
      {R"({"a":)", "not valid JSON"},
      {R"([1,2,3])", "not a JSON object"},
  };
  int i = 0;
  for (const auto& c : cases) {
    std::string p = write_file("lie" + std::to_string(i++), c.header, 64);
    std::string e = error_of(p);
    EXPECT_NE(e.find(c.want), std::string::npos) << c.header << " -> " << e;
    std::remove(p.c_str());
  }
}

TEST(engine_safetensors, MissingAndTinyFiles) {
  EXPECT_NE(error_of("/nonexistent/model.safetensors").find("cannot open"), std::string::npos);
  std::string p = tmp_path("tiny");
  std::ofstream(p) << "abc";
  EXPECT_NE(error_of(p).find("too short"), std::string::npos);
  std::remove(p.c_str());
  try {
    SafetensorsSet s("/nonexistent_dir_for_test");
    FAIL();
  } catch (const EngineError& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent_dir_for_test"), std::string::npos);
  }
}

TEST(engine_safetensors, ParserNeverCrashesOnGarbage) {
  // Cheap in-test fuzz: random mutations of a valid header must throw or parse, never crash.
  std::string base = R"({"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"b":{"dtype":"BF16","shape":[4],"data_offsets":[24,32]}})";
  uint32_t seed = 12345;
  for (int it = 0; it < 3000; ++it) {
    std::string h = base;
    for (int k = 0; k < 1 + it % 4; ++k) {
      seed = seed * 1664525u + 1013904223u;
      size_t pos = (seed >> 8) % h.size();
      seed = seed * 1664525u + 1013904223u;
      h[pos] = "0123456789[]{},:\"-eE .FBI"[(seed >> 8) % 25];
    }
    try {
      auto v = parse_safetensors_header(h.data(), h.size(), 32, "fuzz");
      for (const auto& t : v) EXPECT_LE(reinterpret_cast<uintptr_t>(t.data) + t.nbytes, 32u);
    } catch (const EngineError&) {
    }
  }
}
