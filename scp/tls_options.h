// The settings of one side of a DICOM TLS connection (see scp/tls.h), in a
// header light enough for dicom_server.h and the export's callers.
#pragma once

#include <string>

namespace firstread::scp {

enum class TlsProfile {
  bcp195,           // DICOM Non-downgrading BCP 195 profile (PS3.15 B.10): TLS 1.2 or 1.3
  bcp195_extended,  // DICOM Extended BCP 195 profile (PS3.15 B.11): TLS 1.2, ECDHE/DHE with AES-GCM only
};

struct TlsOptions {
  std::string certificate;      // PEM: this side's certificate (chain); required for the acceptor
  std::string private_key;      // PEM, unencrypted
  std::string ca_certificates;  // PEM file or a directory of PEM files: whom we trust
  bool require_peer_certificate = true;  // acceptor: refuse clients without one
  TlsProfile profile = TlsProfile::bcp195;
  // requestor: the server's certificate must name this host (DNS name or IP address); empty = no check
  std::string verify_host;
};

}  // namespace firstread::scp
