#include "scp/tls.h"

#include <dcmtk/dcmdata/dcerror.h>
#include <dcmtk/dcmtls/tlstrans.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <stdexcept>

namespace firstread::scp {
namespace {

using clock = std::chrono::steady_clock;

// ---- the certificate check's record, kept on the SSL object while it runs

int record_index() {
  static const int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

std::string asn1_time_text(const ASN1_TIME* t) {
  if (!t) return "?";
  BIO* bio = BIO_new(BIO_s_mem());
  ASN1_TIME_print(bio, t);
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio, &data);
  std::string out(data, static_cast<size_t>(std::max(0L, n)));
  BIO_free(bio);
  return out;
}

std::string rfc2253(X509_NAME* name) {
  if (!name) return "";
  BIO* bio = BIO_new(BIO_s_mem());
  X509_NAME_print_ex(bio, name, 0, XN_FLAG_RFC2253);
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio, &data);
  std::string out(data, static_cast<size_t>(std::max(0L, n)));
  BIO_free(bio);
  return out;
}

extern "C" int record_verify_result(int ok, X509_STORE_CTX* store) {
  SSL* ssl = static_cast<SSL*>(X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx()));
  auto* record = ssl ? static_cast<TlsVerifyRecord*>(SSL_get_ex_data(ssl, record_index())) : nullptr;
  if (!ok && record && record->error == X509_V_OK) {
    record->error = X509_STORE_CTX_get_error(store);
    record->depth = X509_STORE_CTX_get_error_depth(store);
    if (X509* leaf = X509_STORE_CTX_get0_cert(store)) record->leaf_subject = rfc2253(X509_get_subject_name(leaf));
    X509* cert = X509_STORE_CTX_get_current_cert(store);
    if (cert) {
      record->subject = rfc2253(X509_get_subject_name(cert));
      record->not_after = asn1_time_text(X509_get0_notAfter(cert));
      record->not_before = asn1_time_text(X509_get0_notBefore(cert));
    }
  }
  return ok;
}

void attach_record(SSL* ssl, TlsVerifyRecord* record) {
  SSL_set_ex_data(ssl, record_index(), record);
  SSL_set_verify(ssl, SSL_get_verify_mode(ssl), record_verify_result);
}

void detach_record(SSL* ssl) { SSL_set_ex_data(ssl, record_index(), nullptr); }

enum class Side { acceptor, requestor };

std::string describe_verify_error(const TlsVerifyRecord& r, Side side, const TlsOptions& o) {
  const std::string whose = side == Side::acceptor ? "its client certificate" : "the server's certificate";
  // The peer's own certificate first; an issuer up its chain that failed, after it.
  const std::string cert = whose + " '" + (r.depth > 0 && !r.leaf_subject.empty() ? r.leaf_subject : r.subject) + "'" +
                           (r.depth > 0 ? " (its chain's '" + r.subject + "')" : "");
  const std::string ca_key = side == Side::acceptor ? "dicom.tls.ca_certificates" : "tls.ca_certificates";
  switch (r.error) {
    case X509_V_ERR_CERT_HAS_EXPIRED:
      return cert + " has expired (valid until " + r.not_after + ")";
    case X509_V_ERR_CERT_NOT_YET_VALID:
      return cert + " is not valid yet (valid from " + r.not_before + ")";
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
    case X509_V_ERR_CERT_UNTRUSTED:
    case X509_V_ERR_CERT_SIGNATURE_FAILURE:
      return cert + " is not trusted: " + X509_verify_cert_error_string(r.error) + " (not issued by a CA in " +
             ca_key + (o.ca_certificates.empty() ? ", which is empty" : " = " + o.ca_certificates) + ")";
    case X509_V_ERR_HOSTNAME_MISMATCH:
    case X509_V_ERR_IP_ADDRESS_MISMATCH:
      return cert + " does not name the host '" + o.verify_host + "' it was reached at (" +
             X509_verify_cert_error_string(r.error) + ")";
    default:
      return cert + " was refused: " + X509_verify_cert_error_string(r.error);
  }
}

std::string describe_failure(const TlsVerifyRecord& record, unsigned long err, Side side, const TlsOptions& o) {
  if (record.error != X509_V_OK) return describe_verify_error(record, side, o);
  if (err == 0) return "the connection closed during the TLS handshake";
  const int reason = ERR_GET_REASON(err);
  const char* text = ERR_reason_error_string(err);
  const std::string reason_text = text ? text : ("OpenSSL error " + std::to_string(err));
  if (reason == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE)
    return "it sent no client certificate, and dicom.tls.require_peer_certificate is true";
  if (reason == SSL_R_NO_SHARED_CIPHER)
    return "no cipher suite in common (" + std::string(o.profile == TlsProfile::bcp195 ? "bcp195" : "bcp195-extended") +
           " profile)";
  if (reason == SSL_R_UNSUPPORTED_PROTOCOL || reason == SSL_R_VERSION_TOO_LOW)
    return "it offers only TLS versions older than 1.2 (" + reason_text + ")";
  // An alert from the peer: it refused our certificate or our parameters.
  if (std::strstr(reason_text.c_str(), "alert"))
    return "the peer ended the handshake: " + reason_text +
           (side == Side::requestor ? " (does it require a client certificate, tls.certificate, or trust our CA?)"
                                    : " (does it trust the CA of dicom.tls.certificate?)");
  return "TLS handshake failed: " + reason_text;
}

// Waits until fd is readable (or writable), the deadline passes or the server
// stops. 1 ready, -2 deadline, -3 stopping.
int wait_for(int fd, bool for_write, clock::time_point deadline, const std::atomic<bool>& stopping) {
  while (true) {
    if (stopping) return -3;
    const auto now = clock::now();
    if (now >= deadline) return -2;
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now).count();
    pollfd p{fd, static_cast<short>(for_write ? POLLOUT : POLLIN), 0};
    const int ready = poll(&p, 1, static_cast<int>(std::min<long long>(left + 1, 200)));
    if (ready > 0) return 1;
    if (ready < 0 && errno != EINTR) return 1;  // let the TLS call report the socket's error
  }
}

void set_blocking(int fd, bool blocking) {
  const int flags = fcntl(fd, F_GETFL, 0);
  fcntl(fd, F_SETFL, blocking ? (flags & ~O_NONBLOCK) : (flags | O_NONBLOCK));
}

bool is_ip_address(const std::string& host) {
  unsigned char buf[16];
  return inet_pton(AF_INET, host.c_str(), buf) == 1 || inet_pton(AF_INET6, host.c_str(), buf) == 1;
}

// The acceptor's connection, prepared before DCMTK sees it: handshake done,
// the A-ASSOCIATE-RQ already read (served from memory first).
class PrefetchedConnection : public DcmTLSConnection {
 public:
  PrefetchedConnection(int fd, SSL* ssl, std::string prefetched)
      : DcmTLSConnection(fd, ssl), prefetched_(std::move(prefetched)) {}

  OFCondition serverSideHandshake() override { return EC_Normal; }  // done, with the connection's deadline

  ssize_t read(void* buf, size_t nbyte) override {
    if (offset_ < prefetched_.size()) {
      const size_t n = std::min(nbyte, prefetched_.size() - offset_);
      std::memcpy(buf, prefetched_.data() + offset_, n);
      offset_ += n;
      return static_cast<ssize_t>(n);
    }
    return DcmTLSConnection::read(buf, nbyte);
  }

  OFBool networkDataAvailable(int timeout) override {
    return offset_ < prefetched_.size() ? OFTrue : DcmTLSConnection::networkDataAvailable(timeout);
  }

 private:
  std::string prefetched_;
  size_t offset_ = 0;
};

thread_local DcmTransportConnection* t_handover = nullptr;

}  // namespace

// The requestor's connection: its handshake keeps why it failed.
class RecordingClientConnection : public DcmTLSConnection {
 public:
  RecordingClientConnection(int fd, SSL* ssl, TlsLayer& layer) : DcmTLSConnection(fd, ssl), ssl_(ssl), layer_(layer) {}

  OFCondition clientSideHandshake() override {
    TlsVerifyRecord record;
    attach_record(ssl_, &record);
    ERR_clear_error();
    const int rc = SSL_connect(ssl_);
    detach_record(ssl_);
    if (rc == 1) {
      layer_.last_failure_.clear();
      return EC_Normal;
    }
    layer_.last_failure_ = describe_failure(record, ERR_get_error(), Side::requestor, layer_.options_);
    ERR_clear_error();
    return OFCondition(OFM_dcmtls, 1, OF_error, layer_.last_failure_.c_str());
  }

 private:
  SSL* ssl_;
  TlsLayer& layer_;
};

TlsLayer::TlsLayer(T_ASC_NetworkRole role, const TlsOptions& o)
    : DcmTLSTransportLayer(role, nullptr, OFFalse), role_(role), options_(o) {
  const std::string side = role == NET_ACCEPTOR ? "DICOM TLS" : "DICOM TLS (export)";
  if (!*this) throw std::runtime_error(side + ": cannot create an OpenSSL context");
  SSL_CTX* ctx = getNativeHandle();
  // An encrypted key would make OpenSSL ask on the console; a service has none.
  SSL_CTX_set_default_passwd_cb(ctx, [](char*, int, int, void*) { return 0; });
  OFCondition cond;
  if (!o.ca_certificates.empty()) {
    std::error_code ec;
    cond = std::filesystem::is_directory(o.ca_certificates, ec)
               ? addTrustedCertificateDir(o.ca_certificates.c_str(), DCF_Filetype_PEM)
               : addTrustedCertificateFile(o.ca_certificates.c_str(), DCF_Filetype_PEM);
    if (cond.bad())
      throw std::runtime_error(side + ": cannot read the CA certificates " + o.ca_certificates + ": " + cond.text());
  }
  if (!o.certificate.empty() || !o.private_key.empty()) {
    if (setPrivateKeyFile(o.private_key.c_str(), DCF_Filetype_PEM).bad())
      throw std::runtime_error(side + ": cannot read the private key " + o.private_key +
                               " (PEM, not encrypted with a passphrase)");
    if (setCertificateFile(o.certificate.c_str(), DCF_Filetype_PEM).bad())
      throw std::runtime_error(side + ": cannot read the certificate " + o.certificate + " (PEM)");
    if (!checkPrivateKeyMatchesCertificate())
      throw std::runtime_error(side + ": the private key " + o.private_key + " does not belong to the certificate " +
                               o.certificate);
  }
  cond = setTLSProfile(o.profile == TlsProfile::bcp195 ? TSP_Profile_BCP195_ND : TSP_Profile_BCP195_Extended);
  if (cond.good()) cond = activateCipherSuites();
  if (cond.bad()) throw std::runtime_error(side + ": cannot set the TLS profile: " + std::string(cond.text()));
  // The profiles already say so; TLS 1.2 stays the floor whatever DCMTK's defaults become.
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  if (role == NET_ACCEPTOR)
    setCertificateVerification(o.require_peer_certificate ? DCV_requireCertificate : DCV_checkCertificate);
  else
    setCertificateVerification(DCV_requireCertificate);  // a server without a trusted certificate is refused
}

DcmTransportConnection* TlsLayer::createConnection(DcmNativeSocketType socket, OFBool use_secure_layer) {
  if (!use_secure_layer) return DcmTransportLayer::createConnection(socket, OFFalse);
  if (role_ == NET_ACCEPTOR) {
    DcmTransportConnection* prepared = t_handover;
    t_handover = nullptr;
    return prepared;  // nullptr: DCMTK refuses the association rather than handshake on its own
  }
  SSL* ssl = SSL_new(getNativeHandle());
  if (!ssl) return nullptr;
  SSL_set_fd(ssl, socket);
  const std::string& host = options_.verify_host;
  if (!host.empty()) {
    if (is_ip_address(host)) {
      X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host.c_str());
    } else {
      SSL_set1_host(ssl, host.c_str());
      SSL_set_tlsext_host_name(ssl, host.c_str());
    }
  }
  return new RecordingClientConnection(socket, ssl, *this);
}

void TlsLayer::prepare_handover(DcmTransportConnection* connection) { t_handover = connection; }

DcmTransportConnection* TlsLayer::take_unused_handover() {
  DcmTransportConnection* left = t_handover;
  t_handover = nullptr;
  return left;
}

std::string TlsLayer::last_failure() const { return last_failure_; }

TlsIntake accept_tls(TlsLayer& layer, int fd, clock::time_point deadline, const std::atomic<bool>& stopping) {
  TlsIntake intake;
  // A plain A-ASSOCIATE-RQ starts with 0x01, a TLS handshake record with 0x16.
  const int waited = wait_for(fd, false, deadline, stopping);
  if (waited != 1) {
    intake.outcome = waited == -3 ? TlsIntake::kStopping : TlsIntake::kTimedOut;
    return intake;
  }
  unsigned char first = 0;
  const ssize_t n = recv(fd, &first, 1, MSG_PEEK | MSG_DONTWAIT);
  if (n <= 0) {
    intake.outcome = TlsIntake::kClosed;
    return intake;
  }
  if (first == 0x01) {
    intake.outcome = TlsIntake::kPlainDicom;
    return intake;
  }
  SSL* ssl = SSL_new(layer.getNativeHandle());
  if (!ssl) {
    intake.outcome = TlsIntake::kRefused;
    intake.failure = "cannot create a TLS session (out of memory?)";
    return intake;
  }
  SSL_set_fd(ssl, fd);
  set_blocking(fd, false);
  TlsVerifyRecord record;
  attach_record(ssl, &record);
  ERR_clear_error();
  while (true) {
    const int rc = SSL_accept(ssl);
    if (rc == 1) break;
    const int e = SSL_get_error(ssl, rc);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
      const int w = wait_for(fd, e == SSL_ERROR_WANT_WRITE, deadline, stopping);
      if (w == 1) continue;
      intake.outcome = w == -3 ? TlsIntake::kStopping : TlsIntake::kTimedOut;
    } else {
      intake.outcome = TlsIntake::kRefused;
      intake.failure = describe_failure(record, ERR_get_error(), Side::acceptor, layer.options());
    }
    ERR_clear_error();
    SSL_free(ssl);
    return intake;
  }
  detach_record(ssl);
  intake.outcome = TlsIntake::kReady;
  intake.peer_subject = rfc2253_subject_of_peer(ssl);
  intake.ssl = ssl;
  return intake;
}

int tls_read_exactly(SSL* ssl, int fd, size_t n, std::string& out, clock::time_point deadline,
                     const std::atomic<bool>& stopping) {
  char buf[16384];
  while (n > 0) {
    // Bytes already decrypted are read before the socket is polled again.
    const int rc = SSL_read(ssl, buf, static_cast<int>(std::min(n, sizeof buf)));
    if (rc > 0) {
      out.append(buf, static_cast<size_t>(rc));
      n -= static_cast<size_t>(rc);
      continue;
    }
    const int e = SSL_get_error(ssl, rc);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
      const int w = wait_for(fd, e == SSL_ERROR_WANT_WRITE, deadline, stopping);
      if (w != 1) return w;
      continue;
    }
    ERR_clear_error();
    return e == SSL_ERROR_ZERO_RETURN || e == SSL_ERROR_SYSCALL ? 0 : -1;
  }
  return 1;
}

DcmTransportConnection* make_prefetched_connection(int fd, SSL* ssl, std::string prefetched) {
  set_blocking(fd, true);  // DCMTK reads and writes with blocking calls and its own timeouts
  return new PrefetchedConnection(fd, ssl, std::move(prefetched));
}

void free_tls(SSL* ssl) {
  if (ssl) SSL_free(ssl);
}

std::string rfc2253_subject_of_peer(SSL* ssl) {
  X509* cert = SSL_get1_peer_certificate(ssl);
  if (!cert) return "";
  std::string subject = rfc2253(X509_get_subject_name(cert));
  X509_free(cert);
  return subject;
}

}  // namespace firstread::scp
