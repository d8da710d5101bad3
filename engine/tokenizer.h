// Tokenizers of the InternVL family: SentencePiece (tokenizer.model, through
// libsentencepiece) and byte-level BPE (tokenizer.json). Both first split the
// text on added/special tokens, as Hugging Face does, then run the model on
// the pieces in between.
#pragma once

#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace firstread::engine {

struct AddedToken {
  std::string content;
  int id = -1;
  bool special = false;
  bool lstrip = false, rstrip = false;
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Loads tokenizer.model (preferred when present) or tokenizer.json from
  // `dir`, with added tokens from tokenizer.json, tokenizer_config.json and
  // added_tokens.json. Throws EngineError when none is usable.
  static std::unique_ptr<Tokenizer> load(const std::string& dir);

  // Ids for `text`; add_bos prepends BOS when the tokenizer config asks for it.
  std::vector<int> encode(const std::string& text, bool add_special_tokens = false) const;
  // Text for `ids`; skip_special drops BOS/EOS/PAD-like special tokens.
  std::string decode(const std::vector<int>& ids, bool skip_special = false) const;
  // Id of a token string (added token or vocabulary piece), -1 if none.
  int token_id(const std::string& token) const;
  int vocab_size() const;
  int bos_id() const { return bos_id_; }
  int eos_id() const { return eos_id_; }
  bool adds_bos() const { return add_bos_; }
  const std::string& kind() const { return kind_; }

 protected:
  // The model part: encodes one piece of text with no added tokens in it.
  virtual void encode_piece(const std::string& text, std::vector<int>& out) const = 0;
  // Decodes a run of ordinary (non-added) ids.
  virtual std::string decode_run(const std::vector<int>& ids) const = 0;
  virtual int piece_id(const std::string& piece) const = 0;
  virtual int model_vocab_size() const = 0;

  void add_token(const AddedToken& t);
  void load_special_config(const std::string& dir);

  std::string kind_;
  std::vector<AddedToken> added_;  // longest first for matching
  std::unordered_map<int, size_t> added_by_id_;
  std::unordered_map<std::string, int> added_by_content_;
  int bos_id_ = -1, eos_id_ = -1, pad_id_ = -1;
  bool add_bos_ = false;
  std::string bos_token_, eos_token_, pad_token_;
};

// Unicode NFC (ICU), exposed for tests.
std::string nfc_normalize(const std::string& utf8);

}  // namespace firstread::engine
