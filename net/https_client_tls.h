#pragma once
// TLS for firstread's outgoing HTTPS connections (the STOW-RS export in reports/,
// the OpenAI-compatible remote inference client in pipeline/): one place that
// decides the protocol versions, where trust comes from and which name the
// server's certificate must carry, so the two clients cannot drift apart.
#include <openssl/ssl.h>

#include <boost/asio/ssl/context.hpp>

#include <string>

namespace firstread::net {

// True for an IPv4 / IPv6 address literal ("127.0.0.1", "::1"), false for a DNS name.
bool is_ip_literal(const std::string& host);

// A TLS 1.2+ client context. verify: the peer's chain is checked against
// ca_file (PEM), or the system's CA store when ca_file is empty; !verify: no
// check at all (the caller logs that). Throws boost::system::system_error when
// ca_file cannot be loaded.
boost::asio::ssl::context make_client_context(bool verify, const std::string& ca_file);

// "ca_file = PATH" or "the system's CA store": where trust came from, for errors.
std::string trust_source(const std::string& ca_file);

// Before the handshake: SNI for a DNS name, and (verify) the name the
// certificate must carry: the host as a DNS name or as an IP address.
void expect_peer_name(SSL* ssl, const std::string& host, bool verify);

// After a failed handshake: OpenSSL's verification result as text, or "" when the
// chain verified (the failure was something else: protocol, reset, timeout).
std::string verify_failure(SSL* ssl);

// Whether the verification failed only because the certificate names another host.
bool verify_failed_on_name(SSL* ssl);

}  // namespace firstread::net
