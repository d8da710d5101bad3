#include "engine/common.h"
#include "engine/thread_buffer.h"

#include <sys/stat.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <new>
#include <sstream>

namespace firstread::engine {

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw EngineError("cannot open " + path + ": " + std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw EngineError("cannot read " + path);
  return ss.str();
}

bool file_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string join_path(const std::string& dir, const std::string& name) {
  if (dir.empty()) return name;
  if (dir.back() == '/') return dir + name;
  return dir + "/" + name;
}

double now_ms() {
  using namespace std::chrono;
  return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}

ThreadBuffer::~ThreadBuffer() { ::operator delete[](p_, std::align_val_t(64)); }

uint8_t* ThreadBuffer::get(int64_t bytes) {
  if (bytes > cap_) {
    ::operator delete[](p_, std::align_val_t(64));
    p_ = nullptr;
    p_ = static_cast<uint8_t*>(::operator new[](size_t(bytes), std::align_val_t(64)));
    cap_ = bytes;
  }
  return p_;
}

}  // namespace firstread::engine
