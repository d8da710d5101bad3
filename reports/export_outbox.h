// The export outbox: every SR waits in firstread.exports until a C-STORE to
// its destination succeeds. A destination that is down is retried with
// exponential backoff, across restarts (the state is in the database), until
// export.max_attempts, after which the export is marked failed with its error.
#pragma once

#include <atomic>
#include <string>
#include <thread>

#include "config/config.h"
#include "db/database.h"
#include "scp/tls_options.h"
#include "storage/file_storage.h"

namespace firstread::reports {

struct SendResult {
  bool ok = false;
  std::string error;
};

// One C-STORE of a file to a peer with DCMTK's SCU (the file's own SOP class
// and transfer syntax, plus explicit/implicit little endian). With `tls`, over
// DICOM TLS (scp/tls.h): the peer's certificate must be signed by one of
// tls->ca_certificates (and name tls->verify_host when set); a refused
// handshake is the error, in words.
SendResult send_file(const std::string& path, const std::string& calling_ae, const std::string& called_ae,
                     const std::string& host, int port, int timeout_seconds = 30,
                     const scp::TlsOptions* tls = nullptr);

// export.destinations[].tls as the SCU's TLS options (verify_host: the destination's host).
scp::TlsOptions destination_tls_options(const config::ExportDestination& destination);

class ExportOutbox {
 public:
  ExportOutbox(db::ConnectionPool& pool, storage::FileStorage& storage, const config::ExportConfig& config,
               std::string conninfo)
      : pool_(pool), storage_(storage), config_(config), conninfo_(std::move(conninfo)) {}
  ~ExportOutbox() { stop(); }

  void start();
  void stop();
  // Sends every export that is due; returns how many were attempted.
  int send_due();

 private:
  db::ConnectionPool& pool_;
  storage::FileStorage& storage_;
  const config::ExportConfig& config_;
  std::string conninfo_;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

}  // namespace firstread::reports
