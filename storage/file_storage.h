// Durable files under storage.path. write_durably() (SRs, presentation states)
// writes a temporary file on the same volume, fsyncs it, renames it into place
// and fsyncs the directory, so that after a crash a file either exists
// complete under its final name or not at all. Received instances take the
// faster NewFile path below (one sync for data and name; the database row is
// the commit point). Paths handed out and stored in the database are relative
// to the root.
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
#include <memory>
#include <mutex>
#include <cstdint>
#include <functional>
#include <future>
#include <stdexcept>
#include <thread>
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

  // A file written as its data arrives, for instances (the receive path):
  // an unnamed file (O_TMPFILE) on the storage volume, so that a crash before
  // it is named leaves nothing at all. Writeback of a large file starts every
  // kWritebackChunk (sync_file_range), so its final sync waits only for the
  // tail; a file smaller than that (a CT or MR image) goes to the disk whole in
  // that sync, in a few large requests. Where the file system has no
  // O_TMPFILE, a named temporary in tmp/ stands in. Destroyed without link():
  // the data is gone.
  class NewFile {
   public:
    ~NewFile();
    NewFile(const NewFile&) = delete;
    NewFile& operator=(const NewFile&) = delete;
    // Throws StorageError naming the file and the cause (e.g. No space left on device).
    void write(const void* data, size_t size);
    // Everything written so far reaches the file (before it is read back or named).
    void flush();
    uint64_t size() const { return size_; }
    // A path this process can open the (possibly unnamed) file by, for reading it back.
    std::string read_path() const;
    bool named() const { return named_; }
    // link() replaced a file that was already there (a resend).
    bool replaced() const { return replaced_; }

   private:
    friend class FileStorage;
    NewFile() = default;
    void write_out(const char* data, size_t size);
    int fd_ = -1;
    std::string temp_path_;  // only for the named fallback
    std::string relpath_;    // once linked
    bool named_ = false;
    bool replaced_ = false;  // link() replaced an existing file
    bool kick_writeback_ = true;
    bool linked_new_ = false;  // named by linkat() of the unnamed file under a new name
    uint64_t size_ = 0, written_ = 0, writeback_from_ = 0;
    std::vector<char> buffer_;
  };
  std::unique_ptr<NewFile> create_file();
  // Gives the file its final name. A new name: the data and the name become
  // durable together in sync(), so a crash before that may leave the name
  // with part of the data (never acknowledged; reconciliation checks such a
  // file before indexing it). An existing file under that name (a resend) is
  // replaced atomically and only by complete, synced data: the file it
  // replaces may have been acknowledged.
  void link(NewFile& file, const std::string& relpath);
  // fsync of the file and, unless that fsync makes the new name durable too
  // (names_durable_with_file()), of its directory (shared with concurrent
  // publishers).
  void sync(NewFile& file);
  // Removes the name link() gave (a failed sync or a refused instance).
  void unlink_file(NewFile& file);

  // Bytes available to unprivileged users on the storage volume.
  uint64_t free_bytes() const;

  // The storage volume's file system type as the kernel names it ("ext4", "xfs", "nfs4", ...).
  const std::string& file_system() const { return file_system_; }
  // Whether the fsync of a file that was just linked under a new name also
  // makes that name durable on this file system, with the same single cache
  // flush: ext4 (with a journal the link is in the commit the fsync waits
  // for; without one, ext4_fsync_nojournal writes the new entry's directory
  // block and inode first, ext4_sync_parent) and XFS (the fsync forces the
  // log through the link's transaction). Elsewhere (NFS, btrfs, anything
  // unknown) the directory is fsynced as well: two flushes per instance.
  bool names_durable_with_file() const { return names_durable_with_file_; }

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
  // fsync of a directory, shared by concurrent publishers (group commit): a
  // rename or link is durable once an fsync of its directory that *started*
  // after it has finished, so one fsync serves every request waiting when it
  // starts. Run by a few persistent threads (distinct directories at once),
  // not by a thread per request.
  void sync_directory(const std::string& abspath);
  std::future<void> request_directory_sync(const std::string& abspath);
  void directory_sync_loop();
  void fsync_path(const std::string& abspath, bool directory) const;
  std::string root_;
  bool fsync_;
  std::string file_system_;
  bool names_durable_with_file_ = false;
  std::string node_id_;
  int lock_fd_ = -1;
  std::atomic<uint64_t> temp_counter_{0};
  struct DirectorySyncRequest {
    std::string path;
    std::promise<void> done;
  };
  std::mutex dir_sync_mu_;
  std::condition_variable dir_sync_cv_;
  std::vector<DirectorySyncRequest> dir_sync_requests_;
  bool dir_sync_stop_ = false;
  std::vector<std::thread> dir_sync_threads_;
};

}  // namespace firstread::storage
