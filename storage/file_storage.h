// Durable files under storage.path. Every file is written to a temporary file
// on the same volume, fsynced, renamed into place and its directory fsynced, so
// that after a crash a file either exists complete under its final name or not
// at all. Paths handed out and stored in the database are relative to the root.
//
// Several nodes may share one storage volume. Each FileStorage has a node
// identity (host, pid, start time) that names its temporaries
// (tmp/<node>.<n>.part), and holds an flock on nodes/<node>.lock for as long as
// it lives: a temporary is stale only if it is ours or its owner's lock can be
// taken (the owner is gone), never while another node may be writing it.
#pragma once

#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
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
  ~FileStorage();
  FileStorage(const FileStorage&) = delete;
  FileStorage& operator=(const FileStorage&) = delete;

  // host-pid-startmillis[-k], unique among the nodes sharing the volume.
  const std::string& node_id() const { return node_id_; }

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

  // Removes temporary files left by a crash (they were never acknowledged):
  // those whose owner's lock is free (owner gone; its lock file goes too),
  // and unowned ones (older naming) not modified for unowned_grace_seconds.
  // Ours and another live node's temporaries are left alone (in flight).
  int remove_stale_temporaries(double unowned_grace_seconds = 600);

  // Every finished file under `subdir` ("instances", "reports"), relative to the
  // root, in byte order of the relative path (the order of a COLLATE "C" sort),
  // one directory listing in memory at a time.
  void for_each_file(const std::string& subdir, const std::function<void(const std::string&)>& fn) const;
  // The same for instances, collected (small archives and tests).
  std::vector<std::string> list_instance_files() const;

 private:
  std::string temp_name();
  void ensure_directory(const std::string& relpath);
  // fsync of a directory shared by concurrent publishers (group commit): a
  // rename is durable once an fsync of its directory that *started* after the
  // rename has finished, so one fsync serves every rename done before it began.
  void sync_directory(const std::string& abspath);
  void fsync_path(const std::string& abspath, bool directory) const;
  std::string root_;
  bool fsync_;
  std::string node_id_;
  int lock_fd_ = -1;
  std::atomic<uint64_t> temp_counter_{0};
  struct DirectorySync {
    uint64_t started = 0, finished = 0, failed = 0;  // epochs
    std::string error;
    bool running = false;
    int waiters = 0;
  };
  std::mutex dir_sync_mu_;
  std::condition_variable dir_sync_cv_;
  std::map<std::string, DirectorySync> dir_syncs_;
};

}  // namespace firstread::storage
