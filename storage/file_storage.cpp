#include "storage/file_storage.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <algorithm>
#include <cctype>
#include <chrono>
#include <map>

#include "dicom/uid.h"

namespace fs = std::filesystem;

namespace firstread::storage {
namespace {

std::string errno_text() { return std::strerror(errno); }

std::string make_node_id() {
  char host[256] = "host";
  gethostname(host, sizeof host - 1);
  std::string h;
  for (const char* c = host; *c; ++c) h += (std::isalnum(static_cast<unsigned char>(*c)) || *c == '-') ? *c : '_';
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::system_clock::now().time_since_epoch()).count();
  // A second FileStorage in the same process within the same millisecond
  // (tests) must not share the first one's identity and lock.
  static std::atomic<int> instances{0};
  const int k = instances++;
  return h + "-" + std::to_string(getpid()) + "-" + std::to_string(ms) + (k ? "-" + std::to_string(k) : "");
}

// tmp/<owner>.<n>.part -> <owner>; "" for names without an owner (older versions).
std::string owner_of(const std::string& name) {
  const auto last = name.rfind(".part");
  if (last == std::string::npos || last == 0) return "";
  const auto dot = name.rfind('.', last - 1);
  if (dot == std::string::npos || dot == 0) return "";
  return name.substr(0, dot);
}


}  // namespace

FileStorage::FileStorage(const std::string& root, bool fsync) : fsync_(fsync), node_id_(make_node_id()) {
  std::error_code ec;
  fs::create_directories(root, ec);
  if (ec) throw StorageError("storage: cannot create " + root + ": " + ec.message());
  root_ = fs::canonical(root, ec).string();
  if (ec) throw StorageError("storage: cannot resolve " + root + ": " + ec.message());
  for (const char* sub : {"tmp", "instances", "nodes"}) {
    fs::create_directories(root_ + "/" + sub, ec);
    if (ec) throw StorageError("storage: cannot create " + root_ + "/" + sub + ": " + ec.message());
  }
  if (access(root_.c_str(), W_OK) != 0) throw StorageError("storage: " + root_ + " is not writable");
  // Held until this process ends (the kernel drops it at exit or crash), so
  // that other nodes can tell our temporaries are in flight.
  const std::string lock_path = root_ + "/nodes/" + node_id_ + ".lock";
  lock_fd_ = open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (lock_fd_ < 0) throw StorageError("storage: cannot create " + lock_path + ": " + errno_text());
  if (flock(lock_fd_, LOCK_EX | LOCK_NB) != 0)
    throw StorageError("storage: cannot lock " + lock_path + ": " + errno_text());
}

FileStorage::~FileStorage() {
  if (lock_fd_ < 0) return;
  unlink((root_ + "/nodes/" + node_id_ + ".lock").c_str());
  close(lock_fd_);
}

std::string FileStorage::temp_name() {
  return node_id_ + "." + std::to_string(temp_counter_++) + ".part";
}

std::string FileStorage::instance_path(const std::string& study_uid, const std::string& series_uid,
                                       const std::string& sop_uid) {
  if (!dicom::is_valid_uid(study_uid)) throw StorageError("invalid Study Instance UID '" + study_uid + "'");
  if (!dicom::is_valid_uid(series_uid)) throw StorageError("invalid Series Instance UID '" + series_uid + "'");
  if (!dicom::is_valid_uid(sop_uid)) throw StorageError("invalid SOP Instance UID '" + sop_uid + "'");
  return "instances/" + study_uid + "/" + series_uid + "/" + sop_uid + ".dcm";
}

void FileStorage::fsync_path(const std::string& abspath, bool directory) const {
  if (!fsync_) return;
  int fd = open(abspath.c_str(), directory ? (O_RDONLY | O_DIRECTORY) : O_RDONLY);
  if (fd < 0) throw StorageError("storage: cannot open " + abspath + " for fsync: " + errno_text());
  int rc = fsync(fd);
  int err = errno;
  close(fd);
  if (rc != 0) throw StorageError("storage: fsync " + abspath + " failed: " + std::strerror(err));
}

// Creates each missing directory of relpath and fsyncs its parent, so that
// the new directory entry itself survives a power loss.
void FileStorage::ensure_directory(const std::string& relpath) {
  std::string current = root_;
  size_t start = 0;
  while (start < relpath.size()) {
    size_t slash = relpath.find('/', start);
    if (slash == std::string::npos) slash = relpath.size();
    const std::string parent = current;
    current += "/" + relpath.substr(start, slash - start);
    if (mkdir(current.c_str(), 0755) == 0) {
      fsync_path(parent, true);
    } else if (errno != EEXIST) {
      throw StorageError("storage: cannot create directory " + current + ": " + errno_text());
    }
    start = slash + 1;
  }
}

uint64_t FileStorage::write_durably(const std::string& relpath,
                                    const std::function<void(const std::string&)>& write) {
  StagedFile staged = stage(relpath, write);
  try {
    publish(staged);
  } catch (...) {
    discard(staged);
    throw;
  }
  return staged.size;
}

FileStorage::StagedFile FileStorage::stage(const std::string& relpath,
                                           const std::function<void(const std::string&)>& write) {
  if (relpath.empty() || relpath.front() == '/' || relpath.find("..") != std::string::npos)
    throw StorageError("storage: refusing path '" + relpath + "'");
  StagedFile staged{relpath, root_ + "/tmp/" + temp_name(), 0};
  try {
    write(staged.temp_path);
    struct stat st{};
    if (stat(staged.temp_path.c_str(), &st) != 0)
      throw StorageError("storage: cannot stat " + staged.temp_path + ": " + errno_text());
    staged.size = static_cast<uint64_t>(st.st_size);
  } catch (...) {
    unlink(staged.temp_path.c_str());
    throw;
  }
  return staged;
}

void FileStorage::publish(const StagedFile& staged) {
  fsync_path(staged.temp_path, false);
  const auto slash = staged.relpath.rfind('/');
  const std::string dir = slash == std::string::npos ? "" : staged.relpath.substr(0, slash);
  if (!dir.empty()) ensure_directory(dir);
  const std::string final_path = root_ + "/" + staged.relpath;
  if (rename(staged.temp_path.c_str(), final_path.c_str()) != 0)
    throw StorageError("storage: cannot rename into " + final_path + ": " + errno_text());
  sync_directory(dir.empty() ? root_ : root_ + "/" + dir);
}

void FileStorage::sync_directory(const std::string& abspath) {
  if (!fsync_) return;
  std::unique_lock<std::mutex> lock(dir_sync_mu_);
  DirectorySync& d = dir_syncs_[abspath];
  ++d.waiters;
  const uint64_t needed = d.started + 1;  // the first fsync to start after our rename
  while (d.finished < needed) {
    if (d.running) {
      dir_sync_cv_.wait(lock);
      continue;
    }
    d.running = true;
    const uint64_t epoch = ++d.started;
    lock.unlock();
    std::string error;
    try {
      fsync_path(abspath, true);
    } catch (const std::exception& e) {
      error = e.what();
    }
    lock.lock();
    d.running = false;
    d.finished = epoch;
    if (!error.empty()) {
      d.failed = epoch;
      d.error = error;
    }
    dir_sync_cv_.notify_all();
  }
  const bool failed = d.failed >= needed;
  const std::string error = d.error;
  if (--d.waiters == 0 && !d.running) dir_syncs_.erase(abspath);
  if (failed) throw StorageError(error);
}

void FileStorage::discard(const StagedFile& staged) { unlink(staged.temp_path.c_str()); }

uint64_t FileStorage::free_bytes() const {
  struct statvfs s{};
  if (statvfs(root_.c_str(), &s) != 0) return 0;
  return static_cast<uint64_t>(s.f_bavail) * s.f_frsize;
}

int FileStorage::remove_stale_temporaries(double unowned_grace_seconds) {
  int removed = 0;
  std::error_code ec;
  std::map<std::string, bool> owner_gone;  // owner id -> its lock could be taken
  std::vector<int> taken_locks;
  const auto now = fs::file_time_type::clock::now();
  for (const auto& e : fs::directory_iterator(root_ + "/tmp", ec)) {
    if (e.path().extension() != ".part") continue;
    const std::string owner = owner_of(e.path().filename().string());
    bool stale = false;
    if (owner.empty()) {
      // No owner in the name: stale once nothing could still be writing it.
      const auto age = std::chrono::duration<double>(now - fs::last_write_time(e.path(), ec)).count();
      stale = !ec && age > unowned_grace_seconds;
    } else if (owner == node_id_) {
      stale = false;  // ours: in flight (this runs while we already serve)
    } else {
      auto it = owner_gone.find(owner);
      if (it == owner_gone.end()) {
        const std::string lock_path = root_ + "/nodes/" + owner + ".lock";
        bool gone = false;
        int fd = open(lock_path.c_str(), O_RDWR | O_CLOEXEC);
        if (fd < 0) {
          gone = errno == ENOENT;  // its lock file was removed: the owner ended
        } else if (flock(fd, LOCK_EX | LOCK_NB) == 0) {
          gone = true;  // nobody holds it: the owner crashed; keep it locked while we clean
          taken_locks.push_back(fd);
          unlink(lock_path.c_str());
          fd = -1;
        }
        if (fd >= 0) close(fd);
        it = owner_gone.emplace(owner, gone).first;
      }
      stale = it->second;
    }
    if (stale && fs::remove(e.path(), ec)) ++removed;
  }
  for (int fd : taken_locks) close(fd);
  // Lock files of crashed nodes that left no temporaries.
  for (const auto& e : fs::directory_iterator(root_ + "/nodes", ec)) {
    const std::string name = e.path().filename().string();
    if (e.path().extension() != ".lock" || name == node_id_ + ".lock") continue;
    int fd = open(e.path().c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) continue;
    if (flock(fd, LOCK_EX | LOCK_NB) == 0) unlink(e.path().c_str());
    close(fd);
  }
  return removed;
}

// Lists one directory level sorted so that the walk yields relative paths in
// byte order: a directory "1.2" sorts as "1.2/", after "1.2.3/".
void FileStorage::for_each_file(const std::string& subdir, const std::function<void(const std::string&)>& fn) const {
  struct Entry {
    std::string key, name;
    bool dir;
  };
  std::function<void(const std::string&)> walk = [&](const std::string& rel) {
    std::vector<Entry> entries;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(root_ + "/" + rel, ec)) {
      const std::string name = e.path().filename().string();
      const bool dir = e.is_directory(ec);
      if (!dir && !e.is_regular_file(ec)) continue;
      entries.push_back({dir ? name + "/" : name, name, dir});
    }
    std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) { return a.key < b.key; });
    for (const auto& e : entries) {
      if (e.dir)
        walk(rel + "/" + e.name);
      else if (e.name.size() > 4 && e.name.compare(e.name.size() - 4, 4, ".dcm") == 0)
        fn(rel + "/" + e.name);
    }
  };
  if (fs::is_directory(root_ + "/" + subdir)) walk(subdir);
}

std::vector<std::string> FileStorage::list_instance_files() const {
  std::vector<std::string> out;
  for_each_file("instances", [&](const std::string& rel) { out.push_back(rel); });
  return out;
}

}  // namespace firstread::storage
