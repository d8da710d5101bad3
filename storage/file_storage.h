// Durable files under storage.path. Every file is written to a temporary file
// on the same volume, fsynced, renamed into place and its directory fsynced, so
// that after a crash a file either exists complete under its final name or not
// at all. Paths handed out and stored in the database are relative to the root.
#pragma once

#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

namespace firstread::storage {

class StorageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class FileStorage {
 public:
  // fsync=false skips fsync calls (benchmarks, throw-away setups only).
  FileStorage(const std::string& root, bool fsync = true);

  const std::string& root() const { return root_; }
  std::string absolute(const std::string& relpath) const { return root_ + "/" + relpath; }

  // instances/<study>/<series>/<sop>.dcm. Throws StorageError naming the bad UID
  // unless every UID is valid (digits and dots, <= 64 characters): nothing
  // derived from an unchecked UID ever reaches the file system.
  static std::string instance_path(const std::string& study_uid, const std::string& series_uid,
                                   const std::string& sop_uid);

  // Writes a file durably. `write` is given a temporary path on the same volume
  // and must create the complete file there (or throw). Replaces an existing
  // file atomically. Returns the file size.
  uint64_t write_durably(const std::string& relpath, const std::function<void(const std::string&)>& write);

  // The same in two steps, so that a caller can overlap other durable work
  // (the database commit) with the fsyncs: stage() writes the temporary file,
  // publish() fsyncs it, renames it into place and fsyncs the directory.
  struct StagedFile {
    std::string relpath;
    std::string temp_path;
    uint64_t size = 0;
  };
  StagedFile stage(const std::string& relpath, const std::function<void(const std::string&)>& write);
  void publish(const StagedFile& staged);
  void discard(const StagedFile& staged);

  // Bytes available to unprivileged users on the storage volume.
  uint64_t free_bytes() const;

  // Removes temporary files left by a crash (they were never acknowledged).
  int remove_stale_temporaries();

  // Every finished instance file, relative to the root (for reconciliation).
  std::vector<std::string> list_instance_files() const;

 private:
  void ensure_directory(const std::string& relpath);
  void fsync_path(const std::string& abspath, bool directory) const;
  std::string root_;
  bool fsync_;
};

}  // namespace firstread::storage
