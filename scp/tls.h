// DICOM TLS (PS3.15 Annex B, BCP 195 profiles) on DCMTK's dcmtls and Debian's
// OpenSSL, shared by the node (scp/dicom_server.cpp, the acceptor) and the
// export's C-STORE SCU (reports/export_outbox.cpp, the requestor).
//
// The acceptor never lets DCMTK run a handshake: DCMTK's handshake blocks on a
// socket, and the node hands sockets to DCMTK one at a time (see
// dicom_server.h). Each connection's own thread runs the handshake and reads
// the whole A-ASSOCIATE-RQ non-blocking, against the connection's deadline;
// only then is the established TLS connection handed to DCMTK, which reads the
// request from memory.
//
// Refused handshakes are described in words a PACS administrator can act on:
// whose certificate, and whether it expired, is not trusted, names another
// host, or was not sent at all.
#pragma once

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmnet/assoc.h>
#include <dcmtk/dcmtls/tlslayer.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>

#include "scp/tls_options.h"

struct ssl_st;

namespace firstread::scp {

// What went wrong in a handshake, filled by the certificate check as it runs.
struct TlsVerifyRecord {
  int error = 0;  // X509_V_OK or the first X509_V_ERR_* seen
  std::string subject;    // of the certificate that failed (RFC 2253)
  std::string leaf_subject;  // of the peer's own certificate, when the failure is further up its chain
  int depth = 0;             // of the failing certificate: 0 the peer's own, 1 its issuer, ...
  std::string not_after;  // its notAfter, for expiry messages
  std::string not_before;
};

// A DcmTLSTransportLayer configured from TlsOptions: the profile's cipher
// suites, TLS 1.2 as the lowest version, the certificate and key, the CAs.
// Throws std::runtime_error naming the file that cannot be used.
class TlsLayer : public DcmTLSTransportLayer {
 public:
  TlsLayer(T_ASC_NetworkRole role, const TlsOptions& options);

  // DCMTK asks for each association's connection. Acceptor: the connection
  // this thread prepared (prepare_handover), never one that would handshake
  // under DCMTK's control. Requestor: a connection whose handshake records
  // why it failed (last_failure).
  DcmTransportConnection* createConnection(DcmNativeSocketType socket, OFBool use_secure_layer) override;

  // Acceptor: the next createConnection on this thread returns `connection`.
  static void prepare_handover(DcmTransportConnection* connection);
  // What prepare_handover left unused (DCMTK failed before asking); the caller deletes it.
  static DcmTransportConnection* take_unused_handover();

  // Requestor: why the last handshake failed ("" if it did not).
  std::string last_failure() const;

  const TlsOptions& options() const { return options_; }

 private:
  friend class RecordingClientConnection;
  T_ASC_NetworkRole role_;
  TlsOptions options_;
  std::string last_failure_;
};

// The acceptor's side of one connection, on that connection's thread.
struct TlsIntake {
  enum Outcome { kReady, kRefused, kPlainDicom, kClosed, kTimedOut, kStopping } outcome = kClosed;
  std::string failure;       // kRefused: why, in words
  std::string peer_subject;  // kReady: the client certificate's subject (RFC 2253), "" if it sent none
  ssl_st* ssl = nullptr;     // kReady: the established session (owned by the caller until handed over)
};

// Runs the server handshake on an accepted socket, non-blocking, until `deadline`.
TlsIntake accept_tls(TlsLayer& layer, int fd, std::chrono::steady_clock::time_point deadline,
                     const std::atomic<bool>& stopping);

// Reads exactly `n` more bytes of application data into `out` from an
// established non-blocking session. Returns 1 when done, 0 if the peer
// closed, -1 on a TLS error, -2 at the deadline, -3 when stopping.
int tls_read_exactly(ssl_st* ssl, int fd, size_t n, std::string& out, std::chrono::steady_clock::time_point deadline,
                     const std::atomic<bool>& stopping);

// The established session as DCMTK's connection, with the bytes already read
// (the A-ASSOCIATE-RQ) served first. Takes ownership of fd and ssl.
DcmTransportConnection* make_prefetched_connection(int fd, ssl_st* ssl, std::string prefetched);

// Frees a session that will not be handed over (does not close fd).
void free_tls(ssl_st* ssl);

// "CN=...,O=..." as `openssl x509 -noout -subject -nameopt RFC2253` prints it.
std::string rfc2253_subject_of_peer(ssl_st* ssl);

}  // namespace firstread::scp
