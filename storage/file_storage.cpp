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
#include <future>
#include <algorithm>
#include <cctype>
#include <chrono>
#include <fstream>
#include <map>
#include <sstream>
#include <sys/sysmacros.h>

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


// Buffered writes go to the file system once this much has gathered: each
// received PDV (up to dicom.max_pdu, 128 KiB by default) goes out as it
// arrives, DCMTK's small element writes are gathered.
constexpr size_t kNewFileBuffer = 64 * 1024;

// Writeback of a file being received starts each time this much more of it
// has been written. Started per 64 KiB instead, a 520 KB CT image went to the
// disk as 8 separate requests before its fsync (12-14 write requests per
// instance against 4 in one piece, and no faster: the cache flush, not the
// transfer, is what the fsync waits for on this project's disks).
constexpr uint64_t kWritebackChunk = 4 * 1024 * 1024;

// The file system type of the mount holding `path`, from /proc/self/mountinfo
// (the entry whose device is the path's): "" when it cannot be told.
std::string file_system_of(const std::string& path) {
  struct stat st{};
  if (stat(path.c_str(), &st) != 0) return "";
  const std::string dev = std::to_string(major(st.st_dev)) + ":" + std::to_string(minor(st.st_dev));
  std::ifstream in("/proc/self/mountinfo");
  std::string line, found;
  while (std::getline(in, line)) {
    // id parent major:minor root mountpoint options [optional fields] - fstype source super-options
    std::istringstream fields(line);
    std::string id, parent, device;
    fields >> id >> parent >> device;
    if (device != dev) continue;
    const auto sep = line.find(" - ");
    if (sep == std::string::npos) continue;
    std::istringstream rest(line.substr(sep + 3));
    rest >> found;
    break;
  }
  return found;
}

// See FileStorage::names_durable_with_file().
bool fsync_carries_new_name(const std::string& file_system) {
  return file_system == "ext4" || file_system == "xfs";
}

// Directories fsynced at the same time (different series arriving at once).
constexpr int kDirectorySyncThreads = 4;

void check_relpath(const std::string& relpath) {
  if (relpath.empty() || relpath.front() == '/' || relpath.find("..") != std::string::npos)
    throw StorageError("storage: refusing path '" + relpath + "'");
}

void fsync_fd(int fd, const std::string& what) {
  if (fsync(fd) != 0) throw StorageError("storage: fsync " + what + " failed: " + errno_text());
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
  file_system_ = file_system_of(root_ + "/instances");
  names_durable_with_file_ = fsync_carries_new_name(file_system_);
  // Held until this process ends (the kernel drops it at exit or crash), so
  // that other nodes can tell our temporaries are in flight.
  const std::string lock_path = root_ + "/nodes/" + node_id_ + ".lock";
  lock_fd_ = open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (lock_fd_ < 0) throw StorageError("storage: cannot create " + lock_path + ": " + errno_text());
  if (flock(lock_fd_, LOCK_EX | LOCK_NB) != 0)
    throw StorageError("storage: cannot lock " + lock_path + ": " + errno_text());
  if (fsync_)
    for (int i = 0; i < kDirectorySyncThreads; ++i) dir_sync_threads_.emplace_back([this] { directory_sync_loop(); });
}

FileStorage::~FileStorage() {
  {
    std::lock_guard<std::mutex> lock(dir_sync_mu_);
    dir_sync_stop_ = true;
  }
  dir_sync_cv_.notify_all();
  for (auto& t : dir_sync_threads_) t.join();
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
  check_relpath(relpath);
  const std::string temp_path = root_ + "/tmp/" + temp_name();
  uint64_t size = 0;
  try {
    write(temp_path);
    struct stat st{};
    if (stat(temp_path.c_str(), &st) != 0)
      throw StorageError("storage: cannot stat " + temp_path + ": " + errno_text());
    size = static_cast<uint64_t>(st.st_size);
    fsync_path(temp_path, false);
    const auto slash = relpath.rfind('/');
    const std::string dir = slash == std::string::npos ? "" : relpath.substr(0, slash);
    if (!dir.empty()) ensure_directory(dir);
    const std::string final_path = root_ + "/" + relpath;
    if (rename(temp_path.c_str(), final_path.c_str()) != 0)
      throw StorageError("storage: cannot rename into " + final_path + ": " + errno_text());
    sync_directory(dir.empty() ? root_ : root_ + "/" + dir);
  } catch (...) {
    unlink(temp_path.c_str());
    throw;
  }
  return size;
}

FileStorage::NewFile::~NewFile() {
  if (fd_ >= 0) close(fd_);
  if (!named_ && !temp_path_.empty()) unlink(temp_path_.c_str());
}

std::string FileStorage::NewFile::read_path() const { return "/proc/self/fd/" + std::to_string(fd_); }

// The buffer never grows past kNewFileBuffer (its one allocation stays below
// malloc's mmap threshold, so it is reused rather than mapped and faulted in
// for every file): a piece that would overflow it goes out after it.
void FileStorage::NewFile::write(const void* data, size_t size) {
  const char* p = static_cast<const char*>(data);
  if (buffer_.size() + size > kNewFileBuffer) {
    flush();
    if (size >= kNewFileBuffer) {
      write_out(p, size);
      return;
    }
  }
  buffer_.insert(buffer_.end(), p, p + size);
  size_ += size;
}

void FileStorage::NewFile::flush() {
  if (buffer_.empty()) return;
  const size_t n = buffer_.size();
  size_ -= n;
  write_out(buffer_.data(), n);
  buffer_.clear();
}

void FileStorage::NewFile::write_out(const char* data, size_t size) {
  for (size_t done = 0; done < size;) {
    const ssize_t n = ::write(fd_, data + done, size - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      size_ += done;
      written_ += done;
      throw StorageError("storage: cannot write " + (temp_path_.empty() ? std::string("new file") : temp_path_) +
                         ": " + std::strerror(err));
    }
    done += static_cast<size_t>(n);
  }
  written_ += size;
  size_ += size;
  // Start writing a large file's pages to the disk while the rest is still
  // arriving; the fsync in sync() then waits only for what came last.
  if (kick_writeback_ && written_ - writeback_from_ >= kWritebackChunk) {
    sync_file_range(fd_, static_cast<off_t>(writeback_from_), static_cast<off_t>(written_ - writeback_from_),
                    SYNC_FILE_RANGE_WRITE);
    writeback_from_ = written_;
  }
}

std::unique_ptr<FileStorage::NewFile> FileStorage::create_file() {
  std::unique_ptr<NewFile> file(new NewFile());
  file->kick_writeback_ = fsync_;
  const std::string dir = root_ + "/tmp";
  int fd = open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0644);
  if (fd < 0 && (errno == EOPNOTSUPP || errno == EISDIR || errno == EINVAL || errno == ENOENT)) {
    // No O_TMPFILE on this file system: a named temporary of this node.
    file->temp_path_ = dir + "/" + temp_name();
    fd = open(file->temp_path_.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  }
  if (fd < 0) throw StorageError("storage: cannot create a file in " + dir + ": " + errno_text());
  file->fd_ = fd;
  file->buffer_.reserve(kNewFileBuffer);
  return file;
}

void FileStorage::link(NewFile& file, const std::string& relpath) {
  check_relpath(relpath);
  if (file.named_) throw StorageError("storage: " + relpath + ": file already named");
  file.flush();
  const auto slash = relpath.rfind('/');
  if (slash != std::string::npos) ensure_directory(relpath.substr(0, slash));
  const std::string final_path = root_ + "/" + relpath;
  if (file.temp_path_.empty()) {
    const std::string proc = file.read_path();
    int rc = linkat(AT_FDCWD, proc.c_str(), AT_FDCWD, final_path.c_str(), AT_SYMLINK_FOLLOW);
    if (rc != 0 && errno == ENOENT)  // no /proc: needs CAP_DAC_READ_SEARCH
      rc = linkat(file.fd_, "", AT_FDCWD, final_path.c_str(), AT_EMPTY_PATH);
    if (rc == 0) {
      file.named_ = true;
      file.linked_new_ = true;
      file.relpath_ = relpath;
      return;
    }
    if (errno != EEXIST) throw StorageError("storage: cannot link into " + final_path + ": " + errno_text());
    // A file is already there (a resend). It may have been acknowledged: replace
    // it only by complete data, through a name of ours in tmp/ and a rename.
    if (fsync_) fsync_fd(file.fd_, "new file for " + final_path);
    file.temp_path_ = root_ + "/tmp/" + temp_name();
    if (linkat(AT_FDCWD, proc.c_str(), AT_FDCWD, file.temp_path_.c_str(), AT_SYMLINK_FOLLOW) != 0 &&
        linkat(file.fd_, "", AT_FDCWD, file.temp_path_.c_str(), AT_EMPTY_PATH) != 0) {
      const std::string err = errno_text();
      file.temp_path_.clear();
      throw StorageError("storage: cannot link into " + root_ + "/tmp: " + err);
    }
    file.replaced_ = true;
  } else if (access(final_path.c_str(), F_OK) == 0) {
    if (fsync_) fsync_fd(file.fd_, file.temp_path_);
    file.replaced_ = true;
  }
  if (rename(file.temp_path_.c_str(), final_path.c_str()) != 0)
    throw StorageError("storage: cannot rename into " + final_path + ": " + errno_text());
  file.temp_path_.clear();
  file.named_ = true;
  file.relpath_ = relpath;
}

void FileStorage::sync(NewFile& file) {
  if (!file.named_) throw StorageError("storage: sync of a file without a name");
  if (!fsync_) return;
  // A new name linked from the unnamed file: where the file's fsync carries it
  // (ext4, XFS), that one fsync and its one cache flush make data, inode and
  // name durable. A rename (a resend replacing a stored file, or the named
  // temporary of a file system without O_TMPFILE) also changes another
  // directory entry, which only a directory fsync covers everywhere.
  if (file.linked_new_ && names_durable_with_file_) {
    fsync_fd(file.fd_, root_ + "/" + file.relpath_);
    return;
  }
  const auto slash = file.relpath_.rfind('/');
  const std::string dir = slash == std::string::npos ? root_ : root_ + "/" + file.relpath_.substr(0, slash);
  // Both at once, so that the two writes and cache flushes overlap instead
  // of queueing one behind the other.
  std::future<void> directory = request_directory_sync(dir);
  std::string file_error;
  try {
    fsync_fd(file.fd_, root_ + "/" + file.relpath_);
  } catch (const std::exception& e) {
    file_error = e.what();
  }
  directory.get();
  if (!file_error.empty()) throw StorageError(file_error);
}

void FileStorage::unlink_file(NewFile& file) {
  if (!file.named_) return;
  unlink((root_ + "/" + file.relpath_).c_str());
  file.named_ = false;
  file.linked_new_ = false;
}

void FileStorage::sync_directory(const std::string& abspath) {
  if (!fsync_) return;
  request_directory_sync(abspath).get();
}

std::future<void> FileStorage::request_directory_sync(const std::string& abspath) {
  DirectorySyncRequest request{abspath, {}};
  std::future<void> done = request.done.get_future();
  {
    std::lock_guard<std::mutex> lock(dir_sync_mu_);
    dir_sync_requests_.push_back(std::move(request));
  }
  dir_sync_cv_.notify_one();
  return done;
}

void FileStorage::directory_sync_loop() {
  std::unique_lock<std::mutex> lock(dir_sync_mu_);
  for (;;) {
    dir_sync_cv_.wait(lock, [&] { return dir_sync_stop_ || !dir_sync_requests_.empty(); });
    if (dir_sync_requests_.empty()) return;
    // Every request for the first waiting directory: their renames and links
    // were made before they were queued, so before the fsync below starts.
    const std::string path = dir_sync_requests_.front().path;
    std::vector<DirectorySyncRequest> served;
    auto kept = dir_sync_requests_.begin();
    for (auto& r : dir_sync_requests_) {
      if (r.path == path)
        served.push_back(std::move(r));
      else
        *kept++ = std::move(r);
    }
    dir_sync_requests_.erase(kept, dir_sync_requests_.end());
    lock.unlock();
    std::exception_ptr error;
    try {
      fsync_path(path, true);
    } catch (...) {
      error = std::current_exception();
    }
    for (auto& r : served) {
      if (error)
        r.done.set_exception(error);
      else
        r.done.set_value();
    }
    lock.lock();
  }
}

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
