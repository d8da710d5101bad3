#include "engine/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <sentencepiece_processor.h>
#include <unicode/unorm2.h>
#include <unicode/ustring.h>

#include <algorithm>
#include <climits>
#include <map>
#include <nlohmann/json.hpp>

#include "engine/common.h"

namespace firstread::engine {

using nlohmann::json;

std::string nfc_normalize(const std::string& s) {
  // ASCII is always NFC; skip ICU for the common case.
  if (std::all_of(s.begin(), s.end(), [](char c) { return (unsigned char)c < 0x80; })) return s;
  UErrorCode err = U_ZERO_ERROR;
  const UNormalizer2* nfc = unorm2_getNFCInstance(&err);
  if (U_FAILURE(err)) throw EngineError("ICU NFC normaliser unavailable");
  int32_t len16 = 0;
  u_strFromUTF8(nullptr, 0, &len16, s.data(), int32_t(s.size()), &err);
  if (err != U_BUFFER_OVERFLOW_ERROR && U_FAILURE(err)) throw EngineError("text is not valid UTF-8");
  err = U_ZERO_ERROR;
  std::u16string u16(size_t(len16), u'\0');
  u_strFromUTF8(reinterpret_cast<UChar*>(u16.data()), len16, nullptr, s.data(), int32_t(s.size()), &err);
  if (U_FAILURE(err)) throw EngineError("text is not valid UTF-8");
  std::u16string out(size_t(len16) * 3 + 16, u'\0');
  int32_t n = unorm2_normalize(nfc, reinterpret_cast<const UChar*>(u16.data()), len16,
                               reinterpret_cast<UChar*>(out.data()), int32_t(out.size()), &err);
  if (U_FAILURE(err)) throw EngineError("NFC normalisation failed");
  int32_t len8 = 0;
  u_strToUTF8(nullptr, 0, &len8, reinterpret_cast<const UChar*>(out.data()), n, &err);
  err = U_ZERO_ERROR;
  std::string r(size_t(len8), '\0');
  u_strToUTF8(r.data(), len8, nullptr, reinterpret_cast<const UChar*>(out.data()), n, &err);
  if (U_FAILURE(err)) throw EngineError("NFC normalisation failed");
  return r;
}

// ------------------------------------------------------------ common part

void Tokenizer::add_token(const AddedToken& t) {
  if (t.content.empty() || t.id < 0) return;
  auto it = added_by_content_.find(t.content);
  if (it != added_by_content_.end()) {
    // Later sources refine flags (tokenizer_config.json has lstrip/rstrip).
    for (auto& a : added_)
      if (a.content == t.content) a = t;
    added_by_content_[t.content] = t.id;
  } else {
    added_.push_back(t);
    added_by_content_[t.content] = t.id;
  }
  std::stable_sort(added_.begin(), added_.end(),
                   [](const AddedToken& a, const AddedToken& b) { return a.content.size() > b.content.size(); });
  added_by_id_.clear();
  for (size_t i = 0; i < added_.size(); ++i) added_by_id_[added_[i].id] = i;
}

static std::string token_string(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return "";
}

static AddedToken added_from_json(const json& e, int id) {
  AddedToken t;
  t.id = id;
  t.content = token_string(e);
  if (e.is_object()) {
    t.special = e.value("special", false);
    t.lstrip = e.value("lstrip", false);
    t.rstrip = e.value("rstrip", false);
  }
  return t;
}

void Tokenizer::load_special_config(const std::string& dir) {
  std::string added_path = join_path(dir, "added_tokens.json");
  if (file_exists(added_path)) {
    json j;
    try {
      j = json::parse(read_text_file(added_path));
    } catch (const json::exception& e) {
      throw EngineError(added_path + ": not valid JSON (" + e.what() + ")");
    }
    if (!j.is_object()) throw EngineError(added_path + ": not an object of token -> id");
    for (auto it = j.begin(); it != j.end(); ++it) {
      if (!it.value().is_number_integer()) throw EngineError(added_path + ": id of '" + it.key() + "' is not an integer");
      AddedToken t;
      t.content = it.key();
      t.id = it.value().get<int>();
      if (!added_by_content_.count(t.content)) add_token(t);
    }
  }
  std::string cfg_path = join_path(dir, "tokenizer_config.json");
  if (file_exists(cfg_path)) {
    json j;
    try {
      j = json::parse(read_text_file(cfg_path));
    } catch (const json::exception& e) {
      throw EngineError(cfg_path + ": not valid JSON (" + e.what() + ")");
    }
    if (j.contains("added_tokens_decoder") && j["added_tokens_decoder"].is_object())
      for (auto it = j["added_tokens_decoder"].begin(); it != j["added_tokens_decoder"].end(); ++it) {
        int id = -1;
        try {
          id = std::stoi(it.key());
        } catch (...) {
          throw EngineError(cfg_path + ": added_tokens_decoder key '" + it.key() + "' is not an id");
        }
        add_token(added_from_json(it.value(), id));
      }
    if (j.contains("add_bos_token") && j["add_bos_token"].is_boolean()) add_bos_ = j["add_bos_token"].get<bool>();
    if (j.contains("bos_token")) bos_token_ = token_string(j["bos_token"]);
    if (j.contains("eos_token")) eos_token_ = token_string(j["eos_token"]);
    if (j.contains("pad_token")) pad_token_ = token_string(j["pad_token"]);
  }
  if (!bos_token_.empty() && token_id(bos_token_) >= 0) bos_id_ = token_id(bos_token_);
  if (!eos_token_.empty() && token_id(eos_token_) >= 0) eos_id_ = token_id(eos_token_);
  if (!pad_token_.empty() && token_id(pad_token_) >= 0) pad_id_ = token_id(pad_token_);
}

int Tokenizer::token_id(const std::string& token) const {
  auto it = added_by_content_.find(token);
  if (it != added_by_content_.end()) return it->second;
  return piece_id(token);
}

int Tokenizer::vocab_size() const {
  int n = model_vocab_size();
  for (const auto& a : added_) n = std::max(n, a.id + 1);
  return n;
}

std::vector<int> Tokenizer::encode(const std::string& text, bool add_special_tokens) const {
  std::vector<int> ids;
  if (add_special_tokens && add_bos_ && bos_id_ >= 0) ids.push_back(bos_id_);
  // Split on added tokens: at each position the earliest, then longest, match.
  struct Seg {
    std::string text;
    int id;  // -1: ordinary text
  };
  std::vector<Seg> segs;
  size_t pos = 0, start = 0;
  while (pos < text.size()) {
    const AddedToken* hit = nullptr;
    for (const auto& a : added_)  // longest first
      if (text.compare(pos, a.content.size(), a.content) == 0) {
        hit = &a;
        break;
      }
    if (!hit) {
      ++pos;
      continue;
    }
    if (pos > start) segs.push_back({text.substr(start, pos - start), -1});
    segs.push_back({"", hit->id});
    pos += hit->content.size();
    start = pos;
  }
  if (start < text.size()) segs.push_back({text.substr(start), -1});
  // lstrip/rstrip flags eat whitespace next to the token.
  auto is_ws = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; };
  for (size_t i = 0; i < segs.size(); ++i) {
    if (segs[i].id < 0) continue;
    const AddedToken& a = added_[added_by_id_.at(segs[i].id)];
    if (a.rstrip && i + 1 < segs.size() && segs[i + 1].id < 0) {
      std::string& s = segs[i + 1].text;
      size_t k = 0;
      while (k < s.size() && is_ws(s[k])) ++k;
      s.erase(0, k);
    }
    if (a.lstrip && i > 0 && segs[i - 1].id < 0) {
      std::string& s = segs[i - 1].text;
      while (!s.empty() && is_ws(s.back())) s.pop_back();
    }
  }
  for (const auto& s : segs) {
    if (s.id >= 0) ids.push_back(s.id);
    else if (!s.text.empty()) encode_piece(s.text, ids);
  }
  return ids;
}

std::string Tokenizer::decode(const std::vector<int>& ids, bool skip_special) const {
  std::string out;
  std::vector<int> run;
  auto flush = [&] {
    if (!run.empty()) out += decode_run(run);
    run.clear();
  };
  for (int id : ids) {
    auto it = added_by_id_.find(id);
    const bool skippable = id == bos_id_ || id == eos_id_ || id == pad_id_;
    if (skip_special && skippable) {
      flush();
      continue;
    }
    if (it != added_by_id_.end()) {
      flush();
      out += added_[it->second].content;
    } else {
      // Ids past the tokenizer (padding rows of a larger embedding table) have
      // no text; Hugging Face decodes them to nothing as well.
      if (id >= 0 && id < model_vocab_size()) run.push_back(id);
    }
  }
  flush();
  return out;
}

// ------------------------------------------------------------ SentencePiece

namespace {

// SentencePiece piece types (sentencepiece_model.proto); libsentencepiece's
// public API has no IsUserDefined, so the types are read from the proto.
constexpr int kControl = 3, kUserDefined = 4;

bool read_varint(const std::string& b, size_t& p, uint64_t& v) {
  v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (p >= b.size()) return false;
    uint8_t c = uint8_t(b[p++]);
    v |= uint64_t(c & 0x7f) << shift;
    if (!(c & 0x80)) return true;
  }
  return false;
}

// Walks ModelProto: field 1 = repeated SentencePiece {1: piece, 2: score, 3: type}.
std::vector<int> piece_types(const std::string& b, const std::string& path) {
  std::vector<int> types;
  size_t p = 0;
  auto skip = [&](const std::string& buf, size_t& q, uint64_t wt) {
    uint64_t v;
    if (wt == 0) return read_varint(buf, q, v);
    if (wt == 1) return (q += 8) <= buf.size();
    if (wt == 5) return (q += 4) <= buf.size();
    if (wt == 2) return read_varint(buf, q, v) && v <= buf.size() - q && ((q += v), true);
    return false;
  };
  while (p < b.size()) {
    uint64_t key;
    if (!read_varint(b, p, key)) throw EngineError(path + ": malformed SentencePiece model");
    if ((key >> 3) == 1 && (key & 7) == 2) {
      uint64_t len;
      if (!read_varint(b, p, len) || len > b.size() - p) throw EngineError(path + ": malformed SentencePiece model");
      const std::string sub = b.substr(p, len);
      p += len;
      int type = 1;  // NORMAL is the proto default
      size_t q = 0;
      while (q < sub.size()) {
        uint64_t k2;
        if (!read_varint(sub, q, k2)) throw EngineError(path + ": malformed SentencePiece piece");
        if ((k2 >> 3) == 3 && (k2 & 7) == 0) {
          uint64_t v;
          if (!read_varint(sub, q, v)) throw EngineError(path + ": malformed SentencePiece piece");
          type = int(v);
        } else if (!skip(sub, q, k2 & 7)) {
          throw EngineError(path + ": malformed SentencePiece piece");
        }
      }
      types.push_back(type);
    } else if (!skip(b, p, key & 7)) {
      throw EngineError(path + ": malformed SentencePiece model");
    }
  }
  return types;
}

class SentencePieceTokenizer : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(const std::string& dir) {
    kind_ = "sentencepiece";
    const std::string path = join_path(dir, "tokenizer.model");
    auto st = sp_.Load(path);
    if (!st.ok()) throw EngineError(path + ": cannot load SentencePiece model (" + st.ToString() + ")");
    bos_id_ = sp_.bos_id();
    eos_id_ = sp_.eos_id();
    pad_id_ = sp_.pad_id();
    add_bos_ = true;  // LlamaTokenizer / InternLM2Tokenizer default
    // User-defined and control pieces (<|im_start|>, <s>, ...) are added
    // tokens in Hugging Face's view: text is split on them before SentencePiece
    // sees it, so no dummy-prefix piece appears in front of them.
    const std::vector<int> types = piece_types(read_text_file(path), path);
    for (int id = 0; id < sp_.GetPieceSize() && id < int(types.size()); ++id)
      if (types[size_t(id)] == kUserDefined || (types[size_t(id)] == kControl && !sp_.IdToPiece(id).empty())) {
        AddedToken t;
        t.content = sp_.IdToPiece(id);
        t.id = id;
        t.special = types[size_t(id)] == kControl;
        add_token(t);
      }
    load_special_config(dir);
  }

 protected:
  void encode_piece(const std::string& text, std::vector<int>& out) const override {
    std::vector<int> ids;
    auto st = sp_.Encode(text, &ids);
    if (!st.ok()) throw EngineError("SentencePiece encode failed: " + st.ToString());
    out.insert(out.end(), ids.begin(), ids.end());
  }
  std::string decode_run(const std::vector<int>& ids) const override {
    std::string s;
    auto st = sp_.Decode(ids, &s);
    if (!st.ok()) throw EngineError("SentencePiece decode failed: " + st.ToString());
    return s;
  }
  int piece_id(const std::string& piece) const override {
    int id = sp_.PieceToId(piece);
    // PieceToId answers unk for unknown pieces; only unk itself maps to unk.
    if (id == sp_.unk_id() && sp_.IdToPiece(id) != piece) return -1;
    return id;
  }
  int model_vocab_size() const override { return sp_.GetPieceSize(); }

 private:
  sentencepiece::SentencePieceProcessor sp_;
};

// ------------------------------------------------------------ byte-level BPE

const char* kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

std::string codepoint_utf8(uint32_t cp) {
  std::string s;
  if (cp < 0x80) s += char(cp);
  else if (cp < 0x800) {
    s += char(0xC0 | (cp >> 6));
    s += char(0x80 | (cp & 0x3F));
  } else {
    s += char(0xE0 | (cp >> 12));
    s += char(0x80 | ((cp >> 6) & 0x3F));
    s += char(0x80 | (cp & 0x3F));
  }
  return s;
}

class BpeTokenizer : public Tokenizer {
 public:
  // Slow-tokenizer layout (Qwen2Tokenizer): vocab.json + merges.txt, with the
  // normalisation and pre-tokenizer regex Qwen2Tokenizer hard-codes.
  BpeTokenizer(const std::string& dir, bool slow_files) {
    kind_ = "bpe";
    const std::string vpath = join_path(dir, "vocab.json"), mpath = join_path(dir, "merges.txt");
    json v;
    try {
      v = json::parse(read_text_file(vpath));
    } catch (const json::exception& e) {
      throw EngineError(vpath + ": not valid JSON (" + e.what() + ")");
    }
    json model = {{"type", "BPE"}, {"vocab", v}, {"merges", json::array()}};
    std::string merges = read_text_file(mpath);
    size_t pos = 0;
    while (pos < merges.size()) {
      size_t e = merges.find('\n', pos);
      if (e == std::string::npos) e = merges.size();
      std::string line = merges.substr(pos, e - pos);
      pos = e + 1;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.empty() || line.rfind("#version", 0) == 0) continue;
      model["merges"].push_back(line);
    }
    (void)slow_files;
    init(json{{"model", model},
              {"normalizer", {{"type", "NFC"}}},
              {"pre_tokenizer",
               {{"type", "Sequence"},
                {"pretokenizers",
                 {{{"type", "Split"}, {"pattern", {{"Regex", kQwen2Pattern}}}, {"behavior", "Isolated"}, {"invert", false}},
                  {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}}}},
         vpath);
    load_special_config(dir);
  }

  explicit BpeTokenizer(const std::string& dir) {
    kind_ = "bpe";
    const std::string path = join_path(dir, "tokenizer.json");
    json j;
    try {
      j = json::parse(read_text_file(path));
    } catch (const json::exception& e) {
      throw EngineError(path + ": not valid JSON (" + e.what() + ")");
    }
    init(j, path);
    load_special_config(dir);
  }

  void init(const json& j, const std::string& path) {
    if (!j.contains("model") || !j["model"].is_object()) throw EngineError(path + ": missing model");
    const json& m = j["model"];
    if (m.value("type", std::string()) != "BPE")
      throw EngineError(path + ": model type '" + m.value("type", std::string()) + "' unsupported (BPE)");
    if (!m.contains("vocab") || !m["vocab"].is_object()) throw EngineError(path + ": missing model.vocab");
    for (auto it = m["vocab"].begin(); it != m["vocab"].end(); ++it) {
      if (!it.value().is_number_integer()) throw EngineError(path + ": vocab id of '" + it.key() + "' not an integer");
      int id = it.value().get<int>();
      if (id < 0) throw EngineError(path + ": negative vocab id for '" + it.key() + "'");
      vocab_[it.key()] = id;
      if (size_t(id) >= id_to_token_.size()) id_to_token_.resize(size_t(id) + 1);
      id_to_token_[size_t(id)] = it.key();
    }
    int rank = 0;
    if (m.contains("merges") && m["merges"].is_array())
      for (const json& e : m["merges"]) {
        std::string a, b;
        if (e.is_string()) {
          std::string s = e.get<std::string>();
          size_t sp = s.find(' ', 1);
          if (sp == std::string::npos) throw EngineError(path + ": bad merge '" + s + "'");
          a = s.substr(0, sp);
          b = s.substr(sp + 1);
        } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
          a = e[0].get<std::string>();
          b = e[1].get<std::string>();
        } else {
          throw EngineError(path + ": bad merge entry " + e.dump());
        }
        merges_.emplace(a + " " + b, rank++);
      }
    ignore_merges_ = m.value("ignore_merges", false);
    if (m.contains("unk_token") && m["unk_token"].is_string()) {
      auto it = vocab_.find(m["unk_token"].get<std::string>());
      if (it != vocab_.end()) unk_id_ = it->second;
    }
    // Normalizer: NFC (alone or in a Sequence); anything else is refused.
    if (j.contains("normalizer") && !j["normalizer"].is_null()) {
      std::vector<json> norms;
      if (j["normalizer"].value("type", std::string()) == "Sequence") {
        for (const json& n : j["normalizer"]["normalizers"]) norms.push_back(n);
      } else {
        norms.push_back(j["normalizer"]);
      }
      for (const json& n : norms) {
        std::string t = n.value("type", std::string());
        if (t == "NFC") nfc_ = true;
        else throw EngineError(path + ": normalizer '" + t + "' unsupported (NFC)");
      }
    }
    // Pre-tokenizer: Split(regex, Isolated) and/or ByteLevel.
    if (j.contains("pre_tokenizer") && !j["pre_tokenizer"].is_null()) {
      std::vector<json> pres;
      if (j["pre_tokenizer"].value("type", std::string()) == "Sequence") {
        for (const json& p : j["pre_tokenizer"]["pretokenizers"]) pres.push_back(p);
      } else {
        pres.push_back(j["pre_tokenizer"]);
      }
      for (const json& p : pres) {
        std::string t = p.value("type", std::string());
        if (t == "Split") {
          if (!p.contains("pattern") || !p["pattern"].contains("Regex"))
            throw EngineError(path + ": Split pre-tokenizer without a Regex pattern");
          if (p.value("behavior", std::string()) != "Isolated" || p.value("invert", false))
            throw EngineError(path + ": Split behaviour other than Isolated unsupported");
          patterns_.push_back(compile(p["pattern"]["Regex"].get<std::string>(), path));
        } else if (t == "ByteLevel") {
          if (p.value("add_prefix_space", false)) throw EngineError(path + ": ByteLevel add_prefix_space unsupported");
          if (p.value("use_regex", true)) patterns_.push_back(compile(kGpt2Pattern, path));
        } else {
          throw EngineError(path + ": pre-tokenizer '" + t + "' unsupported (Split, ByteLevel)");
        }
      }
    }
    // GPT-2 bytes_to_unicode: printable bytes map to themselves, others to 256+n.
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      uint32_t cp = printable ? uint32_t(b) : uint32_t(256 + n++);
      byte_to_str_[b] = codepoint_utf8(cp);
      str_to_byte_[byte_to_str_[b]] = uint8_t(b);
    }
    if (j.contains("added_tokens") && j["added_tokens"].is_array())
      for (const json& e : j["added_tokens"]) {
        if (!e.contains("id") || !e["id"].is_number_integer()) throw EngineError(path + ": added token without id");
        add_token(added_from_json(e, e["id"].get<int>()));
      }
  }
  ~BpeTokenizer() override {
    for (auto* p : patterns_) pcre2_code_free(p);
  }

 protected:
  static pcre2_code* compile(const std::string& pat, const std::string& path) {
    int err = 0;
    PCRE2_SIZE off = 0;
    pcre2_code* re = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pat.data()), pat.size(), PCRE2_UTF | PCRE2_UCP, &err,
                                   &off, nullptr);
    if (!re) {
      PCRE2_UCHAR buf[256];
      pcre2_get_error_message(err, buf, sizeof buf);
      throw EngineError(path + ": pre-tokenizer regex does not compile at offset " + std::to_string(off) + ": " +
                        reinterpret_cast<char*>(buf));
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);  // optional speed-up; interpretive if it fails
    return re;
  }

  // Splits `pieces` by one regex, keeping matches and the gaps (Isolated).
  static std::vector<std::string> split(pcre2_code* re, const std::vector<std::string>& pieces) {
    std::vector<std::string> out;
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(re, nullptr);
    for (const std::string& s : pieces) {
      size_t pos = 0, last = 0;
      while (pos <= s.size()) {
        int rc = pcre2_match(re, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), pos, 0, md, nullptr);
        if (rc < 0) break;
        PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
        size_t b = ov[0], e = ov[1];
        if (e == b) {  // empty match: step one UTF-8 character
          pos = b + 1;
          while (pos < s.size() && (static_cast<unsigned char>(s[pos]) & 0xC0) == 0x80) ++pos;
          continue;
        }
        if (b > last) out.push_back(s.substr(last, b - last));
        out.push_back(s.substr(b, e - b));
        last = pos = e;
      }
      if (last < s.size()) out.push_back(s.substr(last));
    }
    pcre2_match_data_free(md);
    return out;
  }

  void encode_piece(const std::string& text, std::vector<int>& out) const override {
    std::vector<std::string> pieces{nfc_ ? nfc_normalize(text) : text};
    for (auto* re : patterns_) pieces = split(re, pieces);
    for (const std::string& p : pieces) bpe(p, out);
  }

  void bpe(const std::string& piece, std::vector<int>& out) const {
    std::vector<std::string> sym;
    std::string whole;
    for (unsigned char c : piece) {
      sym.push_back(byte_to_str_[c]);
      whole += byte_to_str_[c];
    }
    if (ignore_merges_) {
      auto it = vocab_.find(whole);
      if (it != vocab_.end()) {
        out.push_back(it->second);
        return;
      }
    }
    while (sym.size() > 1) {
      int best = INT_MAX;
      size_t best_i = 0;
      for (size_t i = 0; i + 1 < sym.size(); ++i) {
        auto it = merges_.find(sym[i] + " " + sym[i + 1]);
        if (it != merges_.end() && it->second < best) {
          best = it->second;
          best_i = i;
        }
      }
      if (best == INT_MAX) break;
      // Merge every occurrence of the best pair, left to right.
      const std::string a = sym[best_i], b = sym[best_i + 1];
      std::vector<std::string> next;
      for (size_t i = 0; i < sym.size();) {
        if (i + 1 < sym.size() && sym[i] == a && sym[i + 1] == b) {
          next.push_back(a + b);
          i += 2;
        } else {
          next.push_back(sym[i++]);
        }
      }
      sym.swap(next);
    }
    for (const auto& s : sym) {
      auto it = vocab_.find(s);
      if (it != vocab_.end()) out.push_back(it->second);
      else if (unk_id_ >= 0) out.push_back(unk_id_);
      else throw EngineError("BPE symbol not in vocabulary and no unk token");
    }
  }

  std::string decode_run(const std::vector<int>& ids) const override {
    std::string bytes;
    for (int id : ids) {
      const std::string& t = id_to_token_[size_t(id)];
      // Walk UTF-8 characters of the token and map each back to its byte.
      for (size_t i = 0; i < t.size();) {
        size_t len = 1;
        unsigned char c = t[i];
        if (c >= 0xF0) len = 4;
        else if (c >= 0xE0) len = 3;
        else if (c >= 0xC0) len = 2;
        auto it = str_to_byte_.find(t.substr(i, len));
        if (it != str_to_byte_.end()) bytes += char(it->second);
        else bytes += t.substr(i, len);
        i += len;
      }
    }
    return bytes;
  }
  int piece_id(const std::string& piece) const override {
    auto it = vocab_.find(piece);
    return it == vocab_.end() ? -1 : it->second;
  }
  int model_vocab_size() const override { return int(id_to_token_.size()); }

 private:
  std::unordered_map<std::string, int> vocab_;
  std::vector<std::string> id_to_token_;
  std::unordered_map<std::string, int> merges_;
  bool ignore_merges_ = false, nfc_ = false;
  int unk_id_ = -1;
  std::vector<pcre2_code*> patterns_;
  std::string byte_to_str_[256];
  std::map<std::string, uint8_t> str_to_byte_;
};

}  // namespace

std::unique_ptr<Tokenizer> Tokenizer::load(const std::string& dir) {
  if (file_exists(join_path(dir, "tokenizer.model"))) return std::make_unique<SentencePieceTokenizer>(dir);
  if (file_exists(join_path(dir, "tokenizer.json"))) return std::make_unique<BpeTokenizer>(dir);
  if (file_exists(join_path(dir, "vocab.json")) && file_exists(join_path(dir, "merges.txt")))
    return std::make_unique<BpeTokenizer>(dir, true);
  throw EngineError(dir + ": no tokenizer (tokenizer.model, tokenizer.json, or vocab.json + merges.txt) found");
}

}  // namespace firstread::engine
