#include "engine/safetensors.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "engine/common.h"

namespace firstread::engine {

using nlohmann::json;

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::Q8_0: return "Q8_0";
    case DType::Q4_0: return "Q4_0";
  }
  return "?";
}

size_t dtype_size(DType t) { return t == DType::F32 ? 4 : (t == DType::Q8_0 || t == DType::Q4_0) ? 1 : 2; }

// Header larger than this is not a model header but a corrupt length field.
static constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

std::vector<TensorInfo> parse_safetensors_header(const char* text, size_t len, size_t data_len,
                                                 const std::string& file) {
  json header;
  try {
    header = json::parse(text, text + len);
  } catch (const std::exception& e) {
    throw EngineError(file + ": safetensors header is not valid JSON (" + e.what() + ")");
  }
  if (!header.is_object()) throw EngineError(file + ": safetensors header is not a JSON object");
  std::vector<TensorInfo> out;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    if (name == "__metadata__") continue;
    const json& e = it.value();
    auto fail = [&](const std::string& why) -> EngineError {
      return EngineError(file + ": tensor '" + name + "': " + why);
    };
    if (!e.is_object()) throw fail("entry is not an object");
    if (!e.contains("dtype") || !e["dtype"].is_string()) throw fail("missing dtype");
    if (!e.contains("shape") || !e["shape"].is_array()) throw fail("missing shape");
    if (!e.contains("data_offsets") || !e["data_offsets"].is_array() || e["data_offsets"].size() != 2)
      throw fail("missing data_offsets [begin, end]");
    TensorInfo t;
    t.name = name;
    t.file = file;
    std::string dt = e["dtype"].get<std::string>();
    if (dt == "F32") t.dtype = DType::F32;
    else if (dt == "F16") t.dtype = DType::F16;
    else if (dt == "BF16") t.dtype = DType::BF16;
    else throw fail("unsupported dtype " + dt + " (F32, F16, BF16 are supported)");
    // numel with overflow checks: a lying shape must not wrap around.
    uint64_t numel = 1;
    for (const json& d : e["shape"]) {
      if (!d.is_number_unsigned() && !(d.is_number_integer() && d.get<int64_t>() >= 0))
        throw fail("shape entries must be non-negative integers");
      uint64_t v = d.get<uint64_t>();
      if (v != 0 && numel > std::numeric_limits<uint64_t>::max() / 8 / v) throw fail("shape overflows");
      numel *= v;
      t.shape.push_back(static_cast<int64_t>(v));
    }
    const json& off = e["data_offsets"];
    for (const json& o : off)
      if (!o.is_number_unsigned() && !(o.is_number_integer() && o.get<int64_t>() >= 0))
        throw fail("data_offsets must be non-negative integers");
    uint64_t begin = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
    if (begin > end) throw fail("data_offsets begin > end");
    if (end > data_len)
      throw fail("data_offsets end " + std::to_string(end) + " lies beyond the data section (" +
                 std::to_string(data_len) + " bytes; file truncated?)");
    uint64_t want = numel * dtype_size(t.dtype);
    if (end - begin != want)
      throw fail("data_offsets span " + std::to_string(end - begin) + " bytes but dtype and shape need " +
                 std::to_string(want));
    t.nbytes = static_cast<size_t>(want);
    // Keep the offset in `data` for now; the caller rebases it onto the mapping.
    t.data = reinterpret_cast<const void*>(static_cast<uintptr_t>(begin));
    out.push_back(std::move(t));
  }
  // Tensors must not overlap: a header that reuses bytes is lying.
  std::vector<std::pair<uint64_t, uint64_t>> spans;
  for (const auto& t : out) {
    uint64_t b = reinterpret_cast<uintptr_t>(t.data);
    if (t.nbytes) spans.push_back({b, b + t.nbytes});
  }
  std::sort(spans.begin(), spans.end());
  for (size_t i = 1; i < spans.size(); ++i)
    if (spans[i].first < spans[i - 1].second)
      throw EngineError(file + ": safetensors header has overlapping tensor data at offset " +
                        std::to_string(spans[i].first));
  return out;
}

MappedFile::MappedFile(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw EngineError("cannot open " + path + ": " + std::strerror(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    throw EngineError("cannot stat " + path + ": " + std::strerror(err));
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int err = errno;
      ::close(fd);
      throw EngineError("cannot mmap " + path + ": " + std::strerror(err));
    }
    data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

void SafetensorsSet::add_file(const std::string& path) {
  auto mf = std::make_unique<MappedFile>(path);
  if (mf->size() < 8) throw EngineError(path + ": file too short for a safetensors header (" +
                                        std::to_string(mf->size()) + " bytes)");
  uint64_t hlen = 0;
  std::memcpy(&hlen, mf->data(), 8);  // little-endian on the machines we target
  if (hlen > kMaxHeaderBytes) throw EngineError(path + ": safetensors header length " + std::to_string(hlen) +
                                                " is implausible (corrupt file?)");
  if (hlen > mf->size() - 8)
    throw EngineError(path + ": safetensors header length " + std::to_string(hlen) + " exceeds the file size " +
                      std::to_string(mf->size()) + " (truncated file?)");
  size_t data_len = mf->size() - 8 - hlen;
  const uint8_t* data_base = mf->data() + 8 + hlen;
  auto infos = parse_safetensors_header(reinterpret_cast<const char*>(mf->data() + 8), hlen, data_len, path);
  for (auto& t : infos) {
    t.data = data_base + reinterpret_cast<uintptr_t>(t.data);
    if (tensors_.count(t.name))
      throw EngineError(path + ": tensor '" + t.name + "' also appears in " + tensors_[t.name].file);
    tensors_.emplace(t.name, std::move(t));
  }
  files_.push_back(std::move(mf));
}

namespace {

// The index's weight_map, validated (plain file names); throws naming the index.
json read_weight_map(const std::string& index) {
  json j;
  try {
    j = json::parse(read_text_file(index));
  } catch (const json::exception& e) {
    throw EngineError(index + ": not valid JSON (" + e.what() + ")");
  }
  if (!j.contains("weight_map") || !j["weight_map"].is_object()) throw EngineError(index + ": missing weight_map");
  for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
    if (!it.value().is_string()) throw EngineError(index + ": weight_map['" + it.key() + "'] is not a file name");
    const std::string f = it.value().get<std::string>();
    if (f.find('/') != std::string::npos) throw EngineError(index + ": shard name '" + f + "' must be a plain file name");
  }
  return j["weight_map"];
}

}  // namespace

std::vector<std::string> model_weight_files(const std::string& dir) {
  const std::string index = join_path(dir, "model.safetensors.index.json");
  if (file_exists(index)) {
    std::set<std::string> shards;
    const json wm = read_weight_map(index);
    for (auto it = wm.begin(); it != wm.end(); ++it) shards.insert(it.value().get<std::string>());
    std::vector<std::string> out;
    for (const auto& f : shards) {
      std::string p = join_path(dir, f);
      if (!file_exists(p)) throw EngineError(index + " names shard " + f + " but " + p + " does not exist");
      out.push_back(p);
    }
    return out;
  }
  const std::string single = join_path(dir, "model.safetensors");
  if (file_exists(single)) return {single};
  std::vector<std::string> found;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (dirent* e = ::readdir(d)) {
      std::string n = e->d_name;
      if (n.size() > 12 && n.compare(n.size() - 12, 12, ".safetensors") == 0) found.push_back(n);
    }
    ::closedir(d);
  } else {
    throw EngineError("model directory " + dir + " cannot be opened: " + std::strerror(errno));
  }
  std::sort(found.begin(), found.end());
  for (auto& f : found) f = join_path(dir, f);
  return found;
}

std::vector<TensorInfo> read_safetensors_header_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw EngineError("cannot open " + path + ": " + std::strerror(errno));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st;
  if (::fstat(fd, &st) != 0) throw EngineError("cannot stat " + path + ": " + std::strerror(errno));
  const uint64_t size = uint64_t(st.st_size);
  auto read_at = [&](void* dst, size_t n, uint64_t at) {
    char* p = static_cast<char*>(dst);
    while (n > 0) {
      const ssize_t r = ::pread(fd, p, n, off_t(at));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) throw EngineError("cannot read " + path + ": " + (r < 0 ? std::strerror(errno) : "short file"));
      p += r;
      n -= size_t(r);
      at += uint64_t(r);
    }
  };
  if (size < 8) throw EngineError(path + ": file too short for a safetensors header (" + std::to_string(size) + " bytes)");
  uint64_t hlen = 0;
  read_at(&hlen, 8, 0);
  if (hlen > kMaxHeaderBytes)
    throw EngineError(path + ": safetensors header length " + std::to_string(hlen) + " is implausible (corrupt file?)");
  if (hlen > size - 8)
    throw EngineError(path + ": safetensors header length " + std::to_string(hlen) + " exceeds the file size " +
                      std::to_string(size) + " (truncated file?)");
  std::string text(size_t(hlen), '\0');
  read_at(text.data(), text.size(), 8);
  return parse_safetensors_header(text.data(), text.size(), size_t(size - 8 - hlen), path);
}

SafetensorsSet::SafetensorsSet(const std::string& dir) {
  const std::vector<std::string> files = model_weight_files(dir);
  if (files.empty()) throw EngineError(dir + ": no model.safetensors, model.safetensors.index.json or *.safetensors");
  for (const auto& f : files) add_file(f);
  const std::string index = join_path(dir, "model.safetensors.index.json");
  if (!file_exists(index)) return;
  const json wm = read_weight_map(index);
  for (auto it = wm.begin(); it != wm.end(); ++it) {
    auto t = tensors_.find(it.key());
    if (t == tensors_.end())
      throw EngineError(index + ": tensor '" + it.key() + "' is not in " + it.value().get<std::string>());
    if (t->second.file != join_path(dir, it.value().get<std::string>()))
      throw EngineError(index + ": tensor '" + it.key() + "' is listed in " + it.value().get<std::string>() +
                        " but found in " + t->second.file);
  }
}

const TensorInfo* SafetensorsSet::find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

const TensorInfo& SafetensorsSet::get(const std::string& name) const {
  auto* t = find(name);
  if (!t) {
    std::string files;
    for (const auto& f : files_) files += (files.empty() ? "" : ", ") + f->path();
    throw EngineError("tensor '" + name + "' is missing from " + (files.empty() ? "the model" : files));
  }
  return *t;
}

std::vector<std::string> SafetensorsSet::file_paths() const {
  std::vector<std::string> v;
  for (const auto& f : files_) v.push_back(f->path());
  return v;
}

size_t SafetensorsSet::total_bytes() const {
  size_t n = 0;
  for (const auto& kv : tensors_) n += kv.second.nbytes;
  return n;
}

}  // namespace firstread::engine
