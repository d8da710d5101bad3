#include "storage/file_storage.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <random>

#include "dicom/uid.h"

namespace fs = std::filesystem;

namespace firstread::storage {
namespace {

std::string errno_text() { return std::strerror(errno); }

std::string temp_name() {
  static std::atomic<uint64_t> counter{0};
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return std::to_string(getpid()) + "-" + std::to_string(counter++) + "-" + std::to_string(rng() % 1000000000) +
         ".part";
}

}  // namespace

FileStorage::FileStorage(const std::string& root, bool fsync) : fsync_(fsync) {
  std::error_code ec;
  fs::create_directories(root, ec);
  if (ec) throw StorageError("storage: cannot create " + root + ": " + ec.message());
  root_ = fs::canonical(root, ec).string();
  if (ec) throw StorageError("storage: cannot resolve " + root + ": " + ec.message());
  for (const char* sub : {"tmp", "instances"}) {
    fs::create_directories(root_ + "/" + sub, ec);
    if (ec) throw StorageError("storage: cannot create " + root_ + "/" + sub + ": " + ec.message());
  }
  if (access(root_.c_str(), W_OK) != 0) throw StorageError("storage: " + root_ + " is not writable");
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
  fsync_path(dir.empty() ? root_ : root_ + "/" + dir, true);
}

void FileStorage::discard(const StagedFile& staged) { unlink(staged.temp_path.c_str()); }

uint64_t FileStorage::free_bytes() const {
  struct statvfs s{};
  if (statvfs(root_.c_str(), &s) != 0) return 0;
  return static_cast<uint64_t>(s.f_bavail) * s.f_frsize;
}

int FileStorage::remove_stale_temporaries() {
  int removed = 0;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(root_ + "/tmp", ec)) {
    if (e.path().extension() == ".part" && fs::remove(e.path(), ec)) ++removed;
  }
  return removed;
}

std::vector<std::string> FileStorage::list_instance_files() const {
  std::vector<std::string> out;
  std::error_code ec;
  const std::string base = root_ + "/";
  for (auto it = fs::recursive_directory_iterator(root_ + "/instances", ec); it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    if (ec) break;
    if (it->is_regular_file() && it->path().extension() == ".dcm") out.push_back(it->path().string().substr(base.size()));
  }
  return out;
}

}  // namespace firstread::storage
