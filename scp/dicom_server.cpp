#include "scp/dicom_server.h"

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcostrma.h>
#include <dcmtk/dcmdata/dcuid.h>
#include <dcmtk/dcmdata/dcxfer.h>
#include <dcmtk/dcmnet/assoc.h>
#include <dcmtk/dcmnet/dcmtrans.h>
#include <dcmtk/dcmnet/dimse.h>
#include <dcmtk/dcmnet/dul.h>
#include <dcmtk/oflog/oflog.h>
#include <spdlog/spdlog.h>

#include "scp/tls.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>

namespace firstread::scp {
namespace {

// Transfer syntaxes accepted for storage. Anything else (an unknown or
// retired syntax) is refused at negotiation, per presentation context.
const char* kStorageTransferSyntaxes[] = {
    UID_LittleEndianExplicitTransferSyntax,
    UID_LittleEndianImplicitTransferSyntax,
    UID_BigEndianExplicitTransferSyntax,
    UID_DeflatedExplicitVRLittleEndianTransferSyntax,
    UID_JPEGProcess1TransferSyntax,
    UID_JPEGProcess2_4TransferSyntax,
    UID_JPEGProcess14TransferSyntax,
    UID_JPEGProcess14SV1TransferSyntax,
    UID_JPEGLSLosslessTransferSyntax,
    UID_JPEGLSLossyTransferSyntax,
    UID_JPEG2000LosslessOnlyTransferSyntax,
    UID_JPEG2000TransferSyntax,
    UID_JPEG2000Part2MulticomponentImageCompressionLosslessOnlyTransferSyntax,
    UID_JPEG2000Part2MulticomponentImageCompressionTransferSyntax,
    UID_RLELosslessTransferSyntax,
    UID_MPEG2MainProfileAtMainLevelTransferSyntax,
    UID_MPEG2MainProfileAtHighLevelTransferSyntax,
    UID_MPEG4HighProfileLevel4_1TransferSyntax,
    UID_MPEG4BDcompatibleHighProfileLevel4_1TransferSyntax,
    UID_MPEG4HighProfileLevel4_2_For2DVideoTransferSyntax,
    UID_MPEG4HighProfileLevel4_2_For3DVideoTransferSyntax,
    UID_MPEG4StereoHighProfileLevel4_2TransferSyntax,
    UID_HEVCMainProfileLevel5_1TransferSyntax,
    UID_HEVCMain10ProfileLevel5_1TransferSyntax,
};

const char* kEchoTransferSyntaxes[] = {UID_LittleEndianExplicitTransferSyntax, UID_BigEndianExplicitTransferSyntax,
                                       UID_LittleEndianImplicitTransferSyntax};

bool same_ae(const std::string& a, const std::string& b) {
  // AE titles compare without their padding spaces.
  auto trim = [](std::string s) {
    while (!s.empty() && s.back() == ' ') s.pop_back();
    while (!s.empty() && s.front() == ' ') s.erase(0, 1);
    return s;
  };
  return trim(a) == trim(b);
}

void reject(T_ASC_Association* assoc, T_ASC_RejectParametersResult result, T_ASC_RejectParametersReason reason) {
  T_ASC_RejectParameters rej;
  rej.result = result;
  rej.source = ASC_SOURCE_SERVICEUSER;
  if (reason == ASC_REASON_SP_PRES_LOCALLIMITEXCEEDED) rej.source = ASC_SOURCE_SERVICEPROVIDER_PRESENTATION_RELATED;
  rej.reason = reason;
  ASC_rejectAssociation(assoc, &rej);
}

bool in_list(const char* uid, const char* const* list, size_t n) {
  for (size_t i = 0; i < n; ++i)
    if (std::strcmp(uid, list[i]) == 0) return true;
  return false;
}

// Accepts, for each proposed context, the first transfer syntax in the
// *sender's* order that we support. Taking the sender's first choice means a
// compressed instance is sent as it is stored at the sender, so we store it as
// received; an order of our own would make senders decompress (or fail).
OFCondition negotiate_presentation_contexts(T_ASC_Parameters* params) {
  const size_t n_storage_ts = sizeof kStorageTransferSyntaxes / sizeof kStorageTransferSyntaxes[0];
  const size_t n_echo_ts = sizeof kEchoTransferSyntaxes / sizeof kEchoTransferSyntaxes[0];
  const int count = ASC_countPresentationContexts(params);
  for (int i = 0; i < count; ++i) {
    T_ASC_PresentationContext pc;
    OFCondition cond = ASC_getPresentationContext(params, i, &pc);
    if (cond.bad()) return cond;
    const char* const* supported = nullptr;
    size_t n_supported = 0;
    if (std::strcmp(pc.abstractSyntax, UID_VerificationSOPClass) == 0) {
      supported = kEchoTransferSyntaxes;
      n_supported = n_echo_ts;
    } else if (in_list(pc.abstractSyntax, dcmAllStorageSOPClassUIDs,
                       static_cast<size_t>(numberOfDcmAllStorageSOPClassUIDs))) {
      supported = kStorageTransferSyntaxes;
      n_supported = n_storage_ts;
    } else {
      cond = ASC_refusePresentationContext(params, pc.presentationContextID, ASC_P_ABSTRACTSYNTAXNOTSUPPORTED);
      if (cond.bad()) return cond;
      continue;
    }
    const char* chosen = nullptr;
    for (int t = 0; t < pc.transferSyntaxCount && !chosen; ++t)
      if (in_list(pc.proposedTransferSyntaxes[t], supported, n_supported)) chosen = pc.proposedTransferSyntaxes[t];
    cond = chosen ? ASC_acceptPresentationContext(params, pc.presentationContextID, chosen)
                  : ASC_refusePresentationContext(params, pc.presentationContextID, ASC_P_TRANSFERSYNTAXESNOTSUPPORTED);
    if (cond.bad()) return cond;
  }
  return EC_Normal;
}

// Our own listening socket, so that accepting is ours and never reads a byte.
int open_listener(int port, const char* what) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw std::runtime_error(std::string("DICOM: cannot create a socket: ") + std::strerror(errno));
  int reuse = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &reuse, sizeof reuse);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_ANY);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || listen(fd, 128) != 0) {
    const std::string why = std::strerror(errno);
    close(fd);
    throw std::runtime_error(std::string("DICOM: cannot listen on ") + what + " " + std::to_string(port) + ": " + why);
  }
  return fd;
}

// The A-ASSOCIATE-RQ's 6-byte header: PDU type 0x01, a reserved byte, a
// 4-byte big-endian length (PS3.8 9.3.2). Sets `needed` to the whole PDU's size.
bool associate_request_header(const unsigned char* header, uint64_t& needed, std::string& detail) {
  if (header[0] != 0x01) {
    char hex[8];
    std::snprintf(hex, sizeof hex, "0x%02X", header[0]);
    detail = std::string("first PDU type ") + hex;
    return false;
  }
  const uint64_t length = (uint64_t{header[2]} << 24) | (uint64_t{header[3]} << 16) | (uint64_t{header[4]} << 8) |
                          uint64_t{header[5]};
  needed = length + 6;
  return true;
}

}  // namespace

DicomServer::DicomServer(ServerOptions options, InstanceSink& sink, std::function<std::string()> admission)
    : options_(std::move(options)), sink_(sink), admission_(std::move(admission)) {}

DicomServer::~DicomServer() { stop(); }

void DicomServer::start() {
  // DCMTK leaves Nagle's algorithm on unless TCP_NODELAY is set in the
  // environment; with it on, every small response waits ~40 ms for an ACK.
  setenv("TCP_NODELAY", "1", 1);
  // DCMTK's own log goes to stderr in its own format; keep only its errors.
  OFLog::configure(OFLogger::ERROR_LOG_LEVEL);
  dcmDisableGethostbyaddr.set(OFTrue);  // no reverse DNS per association
  // DCMTK puts SO_RCVTIMEO/SO_SNDTIMEO of 60 s on every socket unless told
  // otherwise: use the configured DIMSE timeout instead.
  dcmSocketReceiveTimeout.set(options_.dimse_timeout_seconds);
  dcmSocketSendTimeout.set(options_.dimse_timeout_seconds);

  if (options_.tls_port > 0) tls_layer_ = std::make_unique<TlsLayer>(NET_ACCEPTOR, options_.tls);  // throws naming the file
  if (!options_.plain_port_enabled && options_.tls_port <= 0)
    throw std::runtime_error("DICOM: neither the plain port nor a TLS port is enabled");
  const int fd = options_.plain_port_enabled ? open_listener(options_.port, "port") : -1;
  int tls_fd = -1;
  if (options_.tls_port > 0) {
    try {
      tls_fd = open_listener(options_.tls_port, "TLS port");
    } catch (...) {
      if (fd >= 0) close(fd);
      throw;
    }
  }
  const int network_fd = fd >= 0 ? fd : tls_fd;
  // A DCMTK network without a listening socket of its own: initializeNetworkTCP
  // skips creating one while an external socket handle is set.
  T_ASC_Network* net = nullptr;
  OFCondition cond;
  {
    std::lock_guard<std::mutex> lock(intake_mu_);
    dcmExternalSocketHandle.set(network_fd);
    cond = ASC_initializeNetwork(NET_ACCEPTOR, options_.port, options_.acse_timeout_seconds, &net);
    dcmExternalSocketHandle.set(DCMNET_INVALID_SOCKET);
    // Plain connections get DCMTK's TCP connection from this layer too; TLS
    // ones the connection their thread prepared (TlsLayer::createConnection).
    if (cond.good() && tls_layer_) cond = ASC_setTransportLayer(net, tls_layer_.get(), 0);
  }
  if (cond.bad()) {
    if (fd >= 0) close(fd);
    if (tls_fd >= 0) close(tls_fd);
    if (net) ASC_dropNetwork(&net);
    throw std::runtime_error("DICOM: cannot initialise the network on port " + std::to_string(options_.port) + ": " +
                             cond.text());
  }
  listen_fd_ = fd;
  tls_listen_fd_ = tls_fd;
  network_ = net;
  stopping_ = false;
  acceptor_ = std::thread([this] { accept_loop(); });
  std::string ports;
  if (fd >= 0) ports = "port " + std::to_string(options_.port);
  if (tls_fd >= 0)
    ports += (ports.empty() ? "port " : " and TLS port ") + std::to_string(options_.tls_port) +
             (ports.empty() ? " (TLS only, plain port off)" : "") + " (" +
             (options_.tls.profile == TlsProfile::bcp195 ? "bcp195" : "bcp195-extended") + ", client certificate " +
             (options_.tls.require_peer_certificate ? "required" : "optional") + ")";
  spdlog::info("DICOM: {} listening on {} (max {} associations, {} negotiating, {} per host)", options_.ae_title,
               ports, options_.max_associations, options_.max_pending_associations,
               options_.max_associations_per_host);
}

void DicomServer::stop() {
  if (!network_) return;
  stopping_ = true;
  if (acceptor_.joinable()) acceptor_.join();
  {
    std::unique_lock<std::mutex> lock(threads_mu_);
    threads_cv_.wait(lock, [&] { return running_threads_ == 0; });
  }
  if (listen_fd_ >= 0) close(listen_fd_);
  if (tls_listen_fd_ >= 0) close(tls_listen_fd_);
  listen_fd_ = tls_listen_fd_ = -1;
  T_ASC_Network* net = static_cast<T_ASC_Network*>(network_);
  ASC_dropNetwork(&net);  // the TLS layer was lent, not given: ours to free after
  network_ = nullptr;
  tls_layer_.reset();
  spdlog::info("DICOM: stopped accepting associations");
}

void DicomServer::accept_loop() {
  while (!stopping_) {
    pollfd p[2] = {{listen_fd_, POLLIN, 0}, {tls_listen_fd_, POLLIN, 0}};  // poll skips a negative fd
    if (poll(p, 2, 200) <= 0) continue;  // a short poll so that stop() is noticed promptly
    if (p[0].revents & POLLIN) accept_one(listen_fd_, false);
    if (p[1].revents & POLLIN) accept_one(tls_listen_fd_, true);
  }
}

void DicomServer::accept_one(int listen_fd, bool tls) {
  sockaddr_in from{};
  socklen_t len = sizeof from;
  const int fd = accept4(listen_fd, reinterpret_cast<sockaddr*>(&from), &len, SOCK_CLOEXEC);
  if (fd < 0) {
    if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
      spdlog::error("DICOM: cannot accept a connection: {}", std::strerror(errno));
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return;
  }
  char host_buf[INET_ADDRSTRLEN] = "?";
  inet_ntop(AF_INET, &from.sin_addr, host_buf, sizeof host_buf);
  const std::string host = host_buf;
  std::string over_limit;
  {
    std::lock_guard<std::mutex> lock(slots_mu_);
    if (negotiating_ >= options_.max_pending_associations) {
      over_limit = std::to_string(negotiating_) + " connections are still negotiating (dicom.max_pending_associations)";
    } else if (per_host_[host] >= options_.max_associations_per_host) {
      over_limit = std::to_string(per_host_[host]) + " connections from this host already (dicom.max_associations_per_host)";
    } else {
      ++negotiating_;
      ++per_host_[host];
    }
  }
  if (!over_limit.empty()) {
    spdlog::warn("DICOM: closed a connection from {} at once: {}", host, over_limit);
    ++counters_.connections_closed_over_limit;
    close(fd);
    return;
  }
  ++counters_.associations_negotiating;
  {
    std::lock_guard<std::mutex> lock(threads_mu_);
    ++running_threads_;
  }
  std::thread([this, fd, host, tls] {
    if (tls)
      serve_tls_connection(fd, host);
    else
      serve_connection(fd, host);
    {
      std::lock_guard<std::mutex> lock(slots_mu_);
      if (--per_host_[host] <= 0) per_host_.erase(host);
    }
    std::lock_guard<std::mutex> lock(threads_mu_);
    --running_threads_;
    threads_cv_.notify_all();
  }).detach();
}

void DicomServer::end_negotiation(bool& negotiating) {
  if (!negotiating) return;
  negotiating = false;
  --counters_.associations_negotiating;
  std::lock_guard<std::mutex> lock(slots_mu_);
  --negotiating_;
}

// An A-ASSOCIATE-RQ is PDU type 0x01 with a 4-byte big-endian length after a
// reserved byte (PS3.8 9.3.2). Waits until all of it has arrived, peeking only.
DicomServer::RequestWait DicomServer::wait_for_associate_request(int fd, std::string& detail) {
  using clock = std::chrono::steady_clock;
  const auto deadline = clock::now() + std::chrono::seconds(options_.acse_timeout_seconds);
  bool enlarged_buffer = false;
  int available = 0;
  while (!stopping_) {
    const auto now = clock::now();
    if (now >= deadline) {
      detail = std::to_string(available) + " bytes";
      return RequestWait::kTimedOut;
    }
    // Nothing yet: sleep in poll until bytes come. Part of a request: poll would
    // return at once, so look again a little later.
    const int wait_ms = available > 0 ? 20 : 200;
    pollfd p{fd, POLLIN | POLLRDHUP, 0};
    const int ready = poll(&p, 1, wait_ms);
    if (ready < 0 && errno != EINTR) return RequestWait::kClosedMidRequest;
    if (ready > 0 && (p.revents & (POLLERR | POLLHUP)) && !(p.revents & POLLIN))
      return available > 0 ? RequestWait::kClosedMidRequest : RequestWait::kClosedSilently;
    unsigned char header[6];
    const ssize_t n = recv(fd, header, sizeof header, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0) return RequestWait::kClosedSilently;  // orderly close with nothing sent
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) continue;
      return available > 0 ? RequestWait::kClosedMidRequest : RequestWait::kClosedSilently;
    }
    uint64_t needed = 0;
    if (!associate_request_header(header, needed, detail)) return RequestWait::kNotARequest;
    if (ioctl(fd, FIONREAD, &available) != 0) return RequestWait::kClosedMidRequest;
    if (n < 6) {
      if (ready > 0 && (p.revents & POLLRDHUP)) return RequestWait::kClosedMidRequest;
      continue;
    }
    if (needed > dcmAssociatePDUSizeLimit.get()) {
      detail = std::to_string(needed - 6) + " bytes announced";
      return RequestWait::kTooLarge;
    }
    if (static_cast<uint64_t>(available) >= needed) return RequestWait::kReady;
    if (ready > 0 && (p.revents & POLLRDHUP)) {
      detail = std::to_string(available) + " of " + std::to_string(needed) + " bytes";
      return RequestWait::kClosedMidRequest;
    }
    // A request larger than the socket's initial receive buffer (hundreds of
    // presentation contexts) must fit in it whole before we hand it on.
    if (!enlarged_buffer && needed > 32 * 1024) {
      int size = static_cast<int>(needed * 2);
      setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
      enlarged_buffer = true;
    }
  }
  return RequestWait::kStopping;
}

void DicomServer::log_request_wait(RequestWait waited, const std::string& host, const std::string& detail) {
  switch (waited) {
    case RequestWait::kClosedSilently:
      spdlog::debug("DICOM: {} connected and closed without sending anything", host);
      break;
    case RequestWait::kClosedMidRequest:
      spdlog::warn("DICOM: {} closed the connection in the middle of its A-ASSOCIATE-RQ ({})", host, detail);
      ++counters_.associations_failed;
      break;
    case RequestWait::kTimedOut:
      spdlog::warn("DICOM: {} sent no complete A-ASSOCIATE-RQ within {} s (dicom.acse_timeout_seconds; {} received); "
                   "connection closed",
                   host, options_.acse_timeout_seconds, detail);
      ++counters_.associations_failed;
      break;
    case RequestWait::kNotARequest:
      spdlog::warn("DICOM: {} did not open with an A-ASSOCIATE-RQ ({}); connection closed", host, detail);
      ++counters_.associations_failed;
      break;
    case RequestWait::kTooLarge:
      spdlog::warn("DICOM: {} announced an A-ASSOCIATE-RQ of {}, over DCMTK's limit; connection closed", host,
                   detail);
      ++counters_.associations_failed;
      break;
    default:
      break;
  }
}

void* DicomServer::receive_association(int fd, const std::string& host, void* tls_connection) {
  T_ASC_Association* assoc = nullptr;
  OFCondition cond;
  DcmTransportConnection* unused = nullptr;
  {
    // The request is complete in the receive buffer (or, over TLS, in memory):
    // DCMTK parses it without waiting.
    std::lock_guard<std::mutex> lock(intake_mu_);
    dcmExternalSocketHandle.set(fd);
    if (tls_connection) TlsLayer::prepare_handover(static_cast<DcmTransportConnection*>(tls_connection));
    cond = ASC_receiveAssociation(static_cast<T_ASC_Network*>(network_), &assoc, static_cast<long>(options_.max_pdu),
                                  nullptr, nullptr, tls_connection ? OFTrue : OFFalse, DUL_NOBLOCK,
                                  options_.acse_timeout_seconds);
    dcmExternalSocketHandle.set(DCMNET_INVALID_SOCKET);
    if (tls_connection) unused = TlsLayer::take_unused_handover();
  }
  delete unused;  // DCMTK failed before taking it: this closes the socket
  if (cond.bad()) {
    spdlog::warn("DICOM: bad association request from {}: {}", host, cond.text());
    ++counters_.associations_failed;
    if (assoc) {
      ASC_dropAssociation(assoc);  // closes the socket
      ASC_destroyAssociation(&assoc);
    }
    return nullptr;
  }
  return assoc;
}

void DicomServer::serve_connection(int fd, const std::string& host) {
  bool negotiating = true;
  std::string detail;
  const RequestWait waited = wait_for_associate_request(fd, detail);
  if (waited != RequestWait::kReady) {
    log_request_wait(waited, host, detail);
    close(fd);
    end_negotiation(negotiating);
    return;
  }
  if (void* assoc = receive_association(fd, host, nullptr)) serve_association(assoc, Peer{"", "", host}, negotiating);
  end_negotiation(negotiating);
}

// Handshake, then the whole A-ASSOCIATE-RQ, both non-blocking on this thread
// and within dicom.acse_timeout_seconds of the connection; then DCMTK.
void DicomServer::serve_tls_connection(int fd, const std::string& host) {
  bool negotiating = true;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(options_.acse_timeout_seconds);
  auto give_up = [&](ssl_st* ssl) {
    free_tls(ssl);
    close(fd);
    end_negotiation(negotiating);
  };
  TlsIntake intake = accept_tls(*tls_layer_, fd, deadline, stopping_);
  switch (intake.outcome) {
    case TlsIntake::kReady:
      break;
    case TlsIntake::kPlainDicom:
      spdlog::warn("DICOM TLS: refused a connection from {} on TLS port {}: it sent plain (unencrypted) DICOM; it must "
                   "use TLS here{}",
                   host, options_.tls_port,
                   options_.plain_port_enabled ? " or the plain port " + std::to_string(options_.port) : "");
      ++counters_.tls_handshakes_failed;
      return give_up(nullptr);
    case TlsIntake::kRefused:
      spdlog::warn("DICOM TLS: refused a connection from {} on TLS port {}: {}", host, options_.tls_port,
                   intake.failure);
      ++counters_.tls_handshakes_failed;
      return give_up(nullptr);
    case TlsIntake::kTimedOut:
      spdlog::warn("DICOM TLS: {} completed no TLS handshake within {} s (dicom.acse_timeout_seconds); connection "
                   "closed",
                   host, options_.acse_timeout_seconds);
      ++counters_.tls_handshakes_failed;
      return give_up(nullptr);
    case TlsIntake::kClosed:
      spdlog::debug("DICOM TLS: {} connected and closed without sending anything", host);
      return give_up(nullptr);
    case TlsIntake::kStopping:
      return give_up(nullptr);
  }
  // The A-ASSOCIATE-RQ, whole, before DCMTK sees the connection.
  std::string request;
  std::string detail;
  RequestWait waited = RequestWait::kReady;
  int rc = tls_read_exactly(intake.ssl, fd, 6, request, deadline, stopping_);
  uint64_t needed = 0;
  if (rc == 1 && !associate_request_header(reinterpret_cast<const unsigned char*>(request.data()), needed, detail)) {
    waited = RequestWait::kNotARequest;
  } else if (rc == 1 && needed > dcmAssociatePDUSizeLimit.get()) {
    detail = std::to_string(needed - 6) + " bytes announced";
    waited = RequestWait::kTooLarge;
  } else if (rc == 1) {
    rc = tls_read_exactly(intake.ssl, fd, static_cast<size_t>(needed - 6), request, deadline, stopping_);
  }
  if (waited == RequestWait::kReady && rc != 1) {
    detail = std::to_string(request.size()) + " bytes";
    waited = rc == -2   ? RequestWait::kTimedOut
             : rc == -3 ? RequestWait::kStopping
             : request.empty() && rc == 0 ? RequestWait::kClosedSilently
                                          : RequestWait::kClosedMidRequest;
  }
  if (waited != RequestWait::kReady) {
    log_request_wait(waited, host, detail);
    return give_up(intake.ssl);
  }
  DcmTransportConnection* connection = make_prefetched_connection(fd, intake.ssl, std::move(request));
  if (void* assoc = receive_association(fd, host, connection)) {
    Peer transport{"", "", host, true, intake.peer_subject};
    serve_association(assoc, transport, negotiating);
  }
  end_negotiation(negotiating);
}

std::string DicomServer::refusal_reason(const Peer& peer) {
  if (!options_.allowed_peers.empty()) {
    bool allowed = false;
    for (const auto& p : options_.allowed_peers) {
      if ((p.ae_title.empty() || same_ae(p.ae_title, peer.calling_ae)) && (p.host.empty() || p.host == peer.host) &&
          (p.certificate_subject.empty() || (peer.tls && p.certificate_subject == peer.certificate_subject))) {
        allowed = true;
        break;
      }
    }
    if (!allowed)
      return peer.tls ? "calling AE/host/client certificate subject '" + peer.certificate_subject +
                            "' not in dicom.allowed_peers"
                      : "calling AE/host not in dicom.allowed_peers";
  }
  return "";
}

// The association policy, in the order a PACS administrator would debug it:
// called AE, allowed peers, a free association slot (taken here when it
// returns true), the node's admission check (disk, database). A refusal is
// logged with its reason and sets `result` / `reason` for the A-ASSOCIATE-RJ.
bool DicomServer::admit(const Peer& peer, bool& holds_slot, unsigned char& result, unsigned char& reason) {
  if (!same_ae(peer.called_ae, options_.ae_title)) {
    spdlog::warn("DICOM: refused association from {} calling_ae={}: called AE '{}' is not '{}'", peer.host,
                 peer.calling_ae, peer.called_ae, options_.ae_title);
    result = ASC_RESULT_REJECTEDPERMANENT;
    reason = ASC_REASON_SU_CALLEDAETITLENOTRECOGNIZED;
    return false;
  }
  if (std::string why = refusal_reason(peer); !why.empty()) {
    spdlog::warn("DICOM: refused association from {} calling_ae={}: {}", peer.host, peer.calling_ae, why);
    result = ASC_RESULT_REJECTEDPERMANENT;
    reason = ASC_REASON_SU_CALLINGAETITLENOTRECOGNIZED;
    return false;
  }
  result = ASC_RESULT_REJECTEDTRANSIENT;
  reason = ASC_REASON_SP_PRES_LOCALLIMITEXCEEDED;
  {
    std::lock_guard<std::mutex> lock(slots_mu_);
    if (associated_ < options_.max_associations) {
      ++associated_;
      holds_slot = true;
    }
  }
  if (!holds_slot) {
    spdlog::warn("DICOM: refused association from {} calling_ae={}: {} associations already active (dicom.max_associations)",
                 peer.host, peer.calling_ae, options_.max_associations);
    return false;
  }
  if (admission_) {
    if (std::string why = admission_(); !why.empty()) {
      spdlog::error("DICOM: refused association from {} calling_ae={}: {}", peer.host, peer.calling_ae, why);
      return false;
    }
  }
  return true;
}

void DicomServer::serve_association(void* handle, const Peer& transport, bool& negotiating) {
  T_ASC_Association* assoc = static_cast<T_ASC_Association*>(handle);
  char calling[17] = {0}, called[17] = {0};
  ASC_getAPTitles(assoc->params, calling, sizeof calling, called, sizeof called, nullptr, 0);
  Peer peer = transport;
  peer.calling_ae = calling;
  peer.called_ae = called;

  bool holds_slot = false;
  auto finish = [&] {
    ASC_dropSCPAssociation(assoc);
    ASC_destroyAssociation(&assoc);
    if (holds_slot) {
      std::lock_guard<std::mutex> lock(slots_mu_);
      --associated_;
    }
  };
  unsigned char result = 0, reason = 0;
  if (!admit(peer, holds_slot, result, reason)) {
    // Counted before the peer hears it, so a scrape after the peer's refusal sees it.
    ++counters_.associations_refused;
    reject(assoc, static_cast<T_ASC_RejectParametersResult>(result), static_cast<T_ASC_RejectParametersReason>(reason));
    end_negotiation(negotiating);
    return finish();
  }

  OFCondition cond = negotiate_presentation_contexts(assoc->params);
  if (cond.good()) cond = ASC_acknowledgeAssociation(assoc);
  end_negotiation(negotiating);
  if (cond.bad()) {
    spdlog::warn("DICOM: association from {} calling_ae={} failed during negotiation: {}", peer.host,
                 peer.calling_ae, cond.text());
    ++counters_.associations_failed;
    return finish();
  }
  ++counters_.associations_accepted;
  ++counters_.associations_active;
  spdlog::debug("DICOM: association accepted from {} calling_ae={}{} ({} presentation contexts accepted)", peer.host,
                peer.calling_ae, peer.tls ? " over TLS, certificate '" + peer.certificate_subject + "'" : "",
                ASC_countAcceptedPresentationContexts(assoc->params));
  serve_commands(assoc, peer);
  finish();  // the slot is free before the gauge says so: a peer that sees no association open finds a slot
  --counters_.associations_active;
}

// An accepted association's DIMSE commands until the peer releases or
// aborts it, it stays idle past dimse_timeout_seconds, or the node stops.
void DicomServer::serve_commands(void* handle, const Peer& peer) {
  T_ASC_Association* assoc = static_cast<T_ASC_Association*>(handle);
  int idle_seconds = 0;
  bool open = true;
  while (open) {
    T_DIMSE_Message msg;
    T_ASC_PresentationContextID pres_id = 0;
    // Short polls so that a stop request is noticed between commands.
    OFCondition cond = DIMSE_receiveCommand(assoc, DIMSE_NONBLOCKING, 1, &pres_id, &msg, nullptr);
    if (cond == DIMSE_NODATAAVAILABLE) {
      if (stopping_) {
        spdlog::info("DICOM: shutting down: aborting idle association from {} calling_ae={}", peer.host,
                     peer.calling_ae);
        ASC_abortAssociation(assoc);
        break;
      }
      if (++idle_seconds >= options_.dimse_timeout_seconds) {
        spdlog::warn("DICOM: association from {} calling_ae={} idle for {} s, aborted", peer.host, peer.calling_ae,
                     idle_seconds);
        ASC_abortAssociation(assoc);
        ++counters_.associations_failed;
        break;
      }
      continue;
    }
    idle_seconds = 0;
    if (cond == DUL_PEERREQUESTEDRELEASE) {
      ASC_acknowledgeRelease(assoc);
      break;
    }
    if (cond == DUL_PEERABORTEDASSOCIATION) {
      spdlog::info("DICOM: association from {} calling_ae={} aborted by peer", peer.host, peer.calling_ae);
      break;
    }
    if (cond.bad()) {
      spdlog::warn("DICOM: association from {} calling_ae={} failed: {}", peer.host, peer.calling_ae, cond.text());
      ++counters_.associations_failed;
      ASC_abortAssociation(assoc);
      break;
    }
    switch (msg.CommandField) {
      case DIMSE_C_ECHO_RQ:
        ++counters_.echoes;
        cond = DIMSE_sendEchoResponse(assoc, pres_id, &msg.msg.CEchoRQ, STATUS_Success, nullptr);
        if (cond.bad()) open = false;
        break;
      case DIMSE_C_STORE_RQ:
        open = handle_store(assoc, &msg, pres_id, peer);
        break;
      default:
        spdlog::warn("DICOM: association from {} calling_ae={}: unsupported DIMSE command 0x{:04x}, aborting",
                     peer.host, peer.calling_ae, static_cast<unsigned>(msg.CommandField));
        ASC_abortAssociation(assoc);
        ++counters_.associations_failed;
        open = false;
    }
  }
}

bool DicomServer::handle_store(void* handle, void* message, unsigned char pres_id, const Peer& peer) {
  T_ASC_Association* assoc = static_cast<T_ASC_Association*>(handle);
  T_DIMSE_C_StoreRQ& req = static_cast<T_DIMSE_Message*>(message)->msg.CStoreRQ;
  T_ASC_PresentationContext cmd_pc;
  ASC_findAcceptedPresentationContext(assoc->params, pres_id, &cmd_pc);
  std::unique_ptr<InstanceStream> stream =
      sink_.open_stream({peer, req.AffectedSOPClassUID, req.AffectedSOPInstanceUID, cmd_pc.acceptedTransferSyntax});
  DcmDataset* raw = nullptr;
  T_ASC_PresentationContextID data_pres_id = pres_id;
  OFCondition cond = stream ? DIMSE_receiveDataSetInFile(assoc, DIMSE_NONBLOCKING, options_.dimse_timeout_seconds,
                                                         &data_pres_id, &stream->data(), nullptr, nullptr)
                            : DIMSE_receiveDataSetInMemory(assoc, DIMSE_NONBLOCKING, options_.dimse_timeout_seconds,
                                                           &data_pres_id, &raw, nullptr, nullptr);
  std::unique_ptr<DcmDataset> dataset(raw);

  T_DIMSE_C_StoreRSP rsp;
  std::memset(&rsp, 0, sizeof rsp);
  rsp.MessageIDBeingRespondedTo = req.MessageID;
  OFStandard::strlcpy(rsp.AffectedSOPClassUID, req.AffectedSOPClassUID, sizeof rsp.AffectedSOPClassUID);
  OFStandard::strlcpy(rsp.AffectedSOPInstanceUID, req.AffectedSOPInstanceUID, sizeof rsp.AffectedSOPInstanceUID);
  rsp.DataSetType = DIMSE_DATASET_NULL;
  rsp.opts = O_STORE_AFFECTEDSOPCLASSUID | O_STORE_AFFECTEDSOPINSTANCEUID;

  StoreResult result;
  if (stream && cond.bad() && !stream->data().good()) {
    result = stream->write_failure();  // the rest of the data set was read and dropped
  } else if (stream && cond.good()) {
    counters_.bytes_received += static_cast<uint64_t>(stream->data().tell());
    try {
      result = data_pres_id == pres_id
                   ? stream->finish()
                   : StoreResult{kStoreCannotUnderstand, "data set sent on another presentation context"};
    } catch (const std::exception& e) {
      result = {kStoreOutOfResources, e.what()};
    }
  } else if (cond.bad() || !dataset) {
    if (cond == DUL_PEERABORTEDASSOCIATION || cond == DUL_NETWORKCLOSED || cond == DIMSE_READPDVFAILED ||
        cond == DUL_READTIMEOUT || cond == DIMSE_NODATAAVAILABLE || cond.code() == DULC_NETWORKCLOSED) {
      // A peer that stalls mid-data-set for dicom.dimse_timeout_seconds ends up here too.
      spdlog::warn("DICOM: C-STORE sop={} calling_ae={}: connection lost while receiving: {}",
                   req.AffectedSOPInstanceUID, peer.calling_ae, cond.text());
      ++counters_.instances_failed;
      ++counters_.associations_failed;
      return false;
    }
    result = {kStoreCannotUnderstand, std::string("cannot parse data set: ") + cond.text()};
  } else {
    T_ASC_PresentationContext pc;
    ASC_findAcceptedPresentationContext(assoc->params, data_pres_id, &pc);
    counters_.bytes_received += dataset->getLength(DcmXfer(pc.acceptedTransferSyntax).getXfer());
    ReceivedInstance instance{peer, req.AffectedSOPClassUID, req.AffectedSOPInstanceUID,
                              pc.acceptedTransferSyntax, *dataset};
    try {
      result = sink_.store(instance);
    } catch (const std::exception& e) {
      result = {kStoreOutOfResources, e.what()};
    }
  }
  rsp.DimseStatus = result.status;
  if (result.status == kStoreSuccess) {
    ++counters_.instances_stored;
  } else {
    ++counters_.instances_failed;
    spdlog::warn("DICOM: C-STORE sop={} calling_ae={} answered 0x{:04X}: {}", req.AffectedSOPInstanceUID,
                 peer.calling_ae, result.status, result.error_comment);
  }
  std::unique_ptr<DcmDataset> detail;
  if (!result.error_comment.empty()) {
    detail = std::make_unique<DcmDataset>();
    detail->putAndInsertString(DCM_ErrorComment, result.error_comment.substr(0, 64).c_str());
  }
  DcmDataset* detail_ptr = detail.get();
  cond = DIMSE_sendStoreResponse(assoc, pres_id, &req, &rsp, detail_ptr);
  if (cond.bad()) {
    spdlog::warn("DICOM: C-STORE sop={} calling_ae={}: cannot send response: {}", req.AffectedSOPInstanceUID,
                 peer.calling_ae, cond.text());
    return false;
  }
  return true;
}

}  // namespace firstread::scp
