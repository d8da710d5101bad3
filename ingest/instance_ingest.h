// Ingest: turns a received instance into a durable file plus its index rows,
// and answers the C-STORE status. Also the start-up reconciliation between
// storage and index after a crash.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "db/instance_index.h"
#include "scp/dicom_server.h"
#include "storage/file_storage.h"

class DcmDataset;

namespace firstread::ingest {

// STOW-RS only (PS3.18 Table 10.5.3-1): the instance belongs to another study
// than the one named by POST /studies/{study}.
inline constexpr uint16_t kStoreStudyUidMismatch = 0xC122;

// A PS3.10 file received whole (a STOW-RS part), written into a NewFile as it
// arrived: its own File Meta Information names its SOP Class / Instance and
// transfer syntax, and the file keeps the bytes as sent.
struct FileInstance {
  std::string required_study_uid;  // empty: any study
  scp::Peer peer;                  // calling_ae names the transport ("STOW-RS"), host the client
};

struct FileStoreResult {
  scp::StoreResult result;
  // As far as they could be read (for the STOW-RS response's sequences).
  std::string sop_class_uid, sop_instance_uid, study_uid, series_instance_uid;
};

// The durable path, for every way an instance arrives (C-STORE streamed,
// a data set in memory such as STOW-RS):
//   1. the bytes go into an unnamed file on the storage volume as they arrive
//      (writeback started per piece);
//   2. the header is read back, validated and the file named
//      instances/<study>/<series>/<sop>.dcm;
//   3. one fsync of the file and of its directory, at the same time as the
//      database commit of its row (a group commit: rows of concurrent
//      associations share one transaction, which does not wait for its WAL
//      flush: db::GroupCommit keeps the row until the flush is confirmed and
//      records it again if PostgreSQL lost it);
//   4. Success only once the file and its name are durable and the row is
//      committed.
// A crash before 2 leaves nothing; between 2 and 4 a named file that was never
// acknowledged (with or without its row): reconciliation indexes it only if it
// reads back complete, and the sender's resend replaces it. After 4, a row
// lost with PostgreSQL's unflushed WAL is recorded again by the committer, or,
// if firstread went down too, reconciliation indexes its (durable) file.
class InstanceIngest : public scp::InstanceSink {
 public:
  // Logs whether the storage volume's file system needs a directory fsync per instance.
  InstanceIngest(storage::FileStorage& storage, db::InstanceIndex& index);

  // A data set already in memory: written, validated, made durable, indexed.
  scp::StoreResult store(const scp::ReceivedInstance& instance) override;
  // A C-STORE data set written to its file as it arrives (never parsed into
  // memory: the file holds the bytes as sent, after a File Meta Information
  // header naming the calling AE).
  std::unique_ptr<scp::InstanceStream> open_stream(const scp::StoreRequest& request) override;

  // Steps 2-4 for a file holding a complete data set (with its meta header).
  scp::StoreResult finish_file(storage::FileStorage::NewFile& file, const scp::StoreRequest& request);
  // Steps 2-4 for such a file whose header was already read (streamed
  // C-STORE: parsed from memory while the pixel data arrived).
  scp::StoreResult finish_described(storage::FileStorage::NewFile& file, db::InstanceRecord& record,
                                    const scp::StoreRequest& request);

  // Steps 2-4 for a received PS3.10 file (STOW-RS): File Meta Information and
  // data set read once (values over 4 KiB stay on disk), the same UID
  // validation, the meta header's SOP Class / Instance UIDs matched against
  // the data set's (0xA900), the study against the required one (0xC122);
  // the file's own transfer syntax and bytes are kept. Success only when file
  // and row are durable.
  FileStoreResult store_file(storage::FileStorage::NewFile& file, const FileInstance& instance);

  storage::FileStorage& storage() { return storage_; }

  // Commits the rows still queued and waits until PostgreSQL has flushed the
  // committed ones; then every store fails. Call it once nothing sends any
  // more, before the database goes.
  void stop() { committer_.stop(); }

 private:
  scp::StoreResult commit(storage::FileStorage::NewFile& file, db::InstanceRecord& record, const scp::Peer& peer);
  storage::FileStorage& storage_;
  db::InstanceIndex& index_;
  // Rows of concurrent associations committed together (one transaction).
  db::GroupCommit committer_;
};

// Reads the attributes the index needs from a data set. Throws
// std::invalid_argument naming the attribute that is missing or invalid.
db::InstanceRecord describe_instance(DcmDataset& dataset, const std::string& transfer_syntax_uid);

struct ReconcileReport {
  int indexed_files = 0;     // files found on disk without a row, now indexed
  int unreadable_files = 0;  // files on disk that are not readable DICOM (left in place, logged)
  int missing_files = 0;     // settled rows whose file is gone (logged)
  int removed_temporaries = 0;
  int removed_reports = 0;   // SR files whose report transaction never committed
};

struct ReconcileOptions {
  // Rows and files younger than this may be another node's transfer in flight.
  double grace_seconds = 30;
  const std::atomic<bool>* stop = nullptr;  // set at shutdown: return early
};

// Start-up reconciliation, safe while this and other nodes serve: a crash
// between rename and commit leaves a file without its row (indexed now); an SR
// written by a job whose transaction never committed is removed; settled rows
// whose file has gone are reported. Temporaries of nodes that are gone are
// removed. Files and rows stream in path order and are merge-compared.
ReconcileReport reconcile(storage::FileStorage& storage, db::InstanceIndex& index, db::ConnectionPool& pool,
                          const ReconcileOptions& options = {});

}  // namespace firstread::ingest
