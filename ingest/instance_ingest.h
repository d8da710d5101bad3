// Ingest: turns a received instance into a durable file plus its index rows,
// and answers the C-STORE status. Also the start-up reconciliation between
// storage and index after a crash.
#pragma once

#include <atomic>
#include <string>

#include "db/instance_index.h"
#include "scp/dicom_server.h"
#include "storage/file_storage.h"

class DcmDataset;

namespace firstread::ingest {

class InstanceIngest : public scp::InstanceSink {
 public:
  InstanceIngest(storage::FileStorage& storage, db::InstanceIndex& index) : storage_(storage), index_(index) {}

  // Validates, writes durably (fsync, rename, directory fsync), commits the
  // rows, and only then returns Success.
  scp::StoreResult store(const scp::ReceivedInstance& instance) override;

 private:
  storage::FileStorage& storage_;
  db::InstanceIndex& index_;
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
