// libFuzzer harness: both tokenizers (SentencePiece and byte-level BPE) must
// encode any bytes without crashing (a clear EngineError for invalid UTF-8 is
// fine), and BPE must decode what it encoded back to the NFC text.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>

#include "engine/common.h"
#include "engine/tokenizer.h"

using firstread::engine::Tokenizer;

static std::unique_ptr<Tokenizer> g_sp, g_bpe;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* root = std::getenv("FIRSTREAD_FUZZ_FIXTURES");
  if (!root) std::abort();
  g_sp = Tokenizer::load(std::string(root) + "/v12");
  g_bpe = Tokenizer::load(std::string(root) + "/1b");
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    auto ids = g_sp->encode(text, true);
    g_sp->decode(ids, true);
  } catch (const firstread::engine::EngineError&) {
  }
  try {
    auto ids = g_bpe->encode(text, false);
    if (g_bpe->decode(ids) != firstread::engine::nfc_normalize(text)) std::abort();
  } catch (const firstread::engine::EngineError&) {
  }
  return 0;
}
