// The DICOM network node: association policy, C-ECHO and C-STORE, on DCMTK's
// association (ASC) and DIMSE layers. It knows nothing of files or databases:
// each received instance is handed to an InstanceSink, whose answer becomes
// the C-STORE response status, so Success is only sent after the sink has
// made the instance durable.
//
// Accepting never waits on a peer: the accept thread only accepts the TCP
// connection, applies the connection limits (pending negotiations, connections
// per host) and hands the socket to a thread of its own. That thread waits, with
// its own deadline (dicom.acse_timeout_seconds), until the peer's whole
// A-ASSOCIATE-RQ PDU is in the kernel's receive buffer, and only then lets DCMTK
// parse it (DCMTK 3.6.7 offers no way to hand it an accepted socket other than
// the process-wide dcmExternalSocketHandle, so that hand-over is serialised; it
// takes microseconds because the request is already there).
//
// DICOM TLS (dicom.tls) listens on a port of its own; the plain port may stay
// open or be off. A TLS connection's thread runs the handshake and reads the
// whole A-ASSOCIATE-RQ itself, non-blocking and within the same deadline
// (scp/tls.h), so a peer that stalls its handshake holds only its own thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "scp/tls_options.h"

class DcmDataset;
class DcmOutputStream;

namespace firstread::scp {

struct AllowedPeer {
  std::string ae_title;  // empty = any
  std::string host;      // empty = any
  // empty = any; else the TLS client certificate's subject, RFC 2253
  // ("CN=ct1,O=Hospital"): only TLS peers with that certificate match
  std::string certificate_subject;
};

class TlsLayer;

struct ServerOptions {
  std::string ae_title = "FIRSTREAD";
  int port = 11112;
  std::vector<AllowedPeer> allowed_peers;  // empty = anyone
  int max_associations = 16;
  // TCP connections still negotiating (no complete A-ASSOCIATE-RQ answered yet);
  // beyond this, new connections are closed at once.
  int max_pending_associations = 32;
  // Connections (negotiating or associated) from one IP address.
  int max_associations_per_host = 8;
  uint32_t max_pdu = 131072;
  int acse_timeout_seconds = 30;   // deadline for the A-ASSOCIATE-RQ to arrive
  int dimse_timeout_seconds = 60;  // idle time between commands, and socket send/receive timeout
  bool plain_port_enabled = true;  // false: only the TLS port listens
  int tls_port = 0;                // 0: no DICOM TLS
  TlsOptions tls;
};

struct Peer {
  std::string calling_ae;
  std::string called_ae;
  std::string host;
  bool tls = false;
  std::string certificate_subject;  // TLS: the client certificate's subject (RFC 2253), "" if none
};

struct ReceivedInstance {
  const Peer& peer;
  std::string sop_class_uid;     // from the C-STORE request
  std::string sop_instance_uid;  // from the C-STORE request
  std::string transfer_syntax_uid;  // of the presentation context: the data set's encoding
  DcmDataset& dataset;
};

// DIMSE status codes we answer with (PS3.4 Annex B).
enum StoreStatus : uint16_t {
  kStoreSuccess = 0x0000,
  kStoreOutOfResources = 0xA700,
  kStoreDataSetDoesNotMatchSopClass = 0xA900,
  kStoreCannotUnderstand = 0xC000,
};

struct StoreResult {
  uint16_t status = kStoreSuccess;
  std::string error_comment;  // sent as Error Comment (0000,0902), at most 64 characters
};

// What a C-STORE request says before its data set arrives.
struct StoreRequest {
  const Peer& peer;
  std::string sop_class_uid;
  std::string sop_instance_uid;
  std::string transfer_syntax_uid;  // of the presentation context
};

// A data set taken by the sink as it arrives (PDV by PDV, bytes as sent),
// instead of parsed into memory first.
class InstanceStream {
 public:
  virtual ~InstanceStream() = default;  // destroyed without finish(): nothing is kept
  // Receives the data set's bytes in the request's transfer syntax. A write
  // the sink cannot do makes the stream bad; the rest is then read and dropped.
  virtual DcmOutputStream& data() = 0;
  // After a bad data(): the answer naming the sink's own failure (disk full).
  virtual StoreResult write_failure() const = 0;
  // The whole data set has arrived: validate, make durable, answer.
  virtual StoreResult finish() = 0;
};

class InstanceSink {
 public:
  virtual ~InstanceSink() = default;
  virtual StoreResult store(const ReceivedInstance& instance) = 0;
  // A stream for the request's data set, or nullptr to receive it in memory
  // and hand it to store().
  virtual std::unique_ptr<InstanceStream> open_stream(const StoreRequest&) { return nullptr; }
};

struct ServerCounters {
  std::atomic<uint64_t> associations_accepted{0};
  std::atomic<uint64_t> associations_refused{0};
  std::atomic<uint64_t> associations_failed{0};  // bad PDUs, aborts, timeouts
  // TCP connections closed before negotiation: over dicom.max_pending_associations
  // or dicom.max_associations_per_host.
  std::atomic<uint64_t> connections_closed_over_limit{0};
  std::atomic<int> associations_negotiating{0};
  // TLS connections refused before any association: handshake failed or timed
  // out, or plain DICOM sent to the TLS port.
  std::atomic<uint64_t> tls_handshakes_failed{0};
  std::atomic<uint64_t> echoes{0};
  std::atomic<uint64_t> instances_stored{0};
  std::atomic<uint64_t> instances_failed{0};
  std::atomic<uint64_t> bytes_received{0};
  std::atomic<int> associations_active{0};
};

class DicomServer {
 public:
  // admission: called for each association request; a non-empty answer refuses
  // it (e.g. storage below min_free_bytes) and is logged.
  DicomServer(ServerOptions options, InstanceSink& sink, std::function<std::string()> admission = {});
  ~DicomServer();

  // Opens the port (throws std::runtime_error naming the port if it cannot)
  // and starts accepting associations on a background thread.
  void start();
  // Stops accepting, lets each association finish the command in flight,
  // then releases it. Returns when every association thread has ended.
  void stop();

  const ServerCounters& counters() const { return counters_; }
  int port() const { return options_.port; }
  int tls_port() const { return options_.tls_port; }

 private:
  void accept_loop();
  // Runs on the connection's own thread: waits for the A-ASSOCIATE-RQ, lets
  // DCMTK read it, then serves the association.
  void serve_connection(int fd, const std::string& host);
  void serve_tls_connection(int fd, const std::string& host);
  enum class RequestWait { kReady, kClosedSilently, kClosedMidRequest, kTimedOut, kNotARequest, kTooLarge, kStopping };
  RequestWait wait_for_associate_request(int fd, std::string& detail);
  void log_request_wait(RequestWait waited, const std::string& host, const std::string& detail);
  // Hands the socket (and, over TLS, its prepared connection) to DCMTK, which
  // parses the A-ASSOCIATE-RQ already received; nullptr if it cannot.
  void* receive_association(int fd, const std::string& host, void* tls_connection);
  void serve_association(void* assoc, const Peer& transport, bool& negotiating);
  // serve_association's stages: the policy (A-ASSOCIATE-RJ result / reason
  // when refused), then the accepted association's commands.
  bool admit(const Peer& peer, bool& holds_slot, unsigned char& result, unsigned char& reason);
  void serve_commands(void* assoc, const Peer& peer);
  void accept_one(int listen_fd, bool tls);
  void end_negotiation(bool& negotiating);
  bool handle_store(void* assoc, void* message, unsigned char pres_id, const Peer& peer);
  std::string refusal_reason(const Peer& peer);

  ServerOptions options_;
  InstanceSink& sink_;
  std::function<std::string()> admission_;
  void* network_ = nullptr;
  int listen_fd_ = -1;      // the plain port; -1 when off
  int tls_listen_fd_ = -1;  // the TLS port; -1 when off
  std::unique_ptr<TlsLayer> tls_layer_;
  std::atomic<bool> stopping_{false};
  // DCMTK reads the accepted socket from a process-wide variable: one hand-over at a time.
  std::mutex intake_mu_;
  // Connection slots: negotiating connections, associations, connections per host.
  std::mutex slots_mu_;
  int negotiating_ = 0;
  int associated_ = 0;
  std::map<std::string, int> per_host_;
  std::thread acceptor_;
  // Association threads are detached; stop() waits for this count to reach 0.
  std::mutex threads_mu_;
  std::condition_variable threads_cv_;
  int running_threads_ = 0;
  ServerCounters counters_;
};

}  // namespace firstread::scp
