#include "net/https_client_tls.h"

#include <openssl/x509v3.h>

#include <boost/asio/ip/address.hpp>

namespace firstread::net {

namespace ssl = boost::asio::ssl;

bool is_ip_literal(const std::string& host) {
  boost::system::error_code ec;
  boost::asio::ip::make_address(host, ec);
  return !ec;
}

ssl::context make_client_context(bool verify, const std::string& ca_file) {
  ssl::context ctx(ssl::context::tls_client);
  ctx.set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 | ssl::context::no_sslv3 |
                  ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1);
  if (!verify) {
    ctx.set_verify_mode(ssl::verify_none);
    return ctx;
  }
  ctx.set_verify_mode(ssl::verify_peer);
  if (ca_file.empty()) ctx.set_default_verify_paths();
  else ctx.load_verify_file(ca_file);
  return ctx;
}

std::string trust_source(const std::string& ca_file) {
  return ca_file.empty() ? "the system's CA store" : "ca_file = " + ca_file;
}

void expect_peer_name(SSL* ssl, const std::string& host, bool verify) {
  const bool ip = is_ip_literal(host);
  if (!ip) SSL_set_tlsext_host_name(ssl, host.c_str());
  if (!verify) return;
  X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
  if (ip) X509_VERIFY_PARAM_set1_ip_asc(param, host.c_str());
  else X509_VERIFY_PARAM_set1_host(param, host.c_str(), 0);
}

std::string verify_failure(SSL* ssl) {
  const long result = SSL_get_verify_result(ssl);
  return result == X509_V_OK ? std::string() : std::string(X509_verify_cert_error_string(result));
}

bool verify_failed_on_name(SSL* ssl) {
  const long result = SSL_get_verify_result(ssl);
  return result == X509_V_ERR_HOSTNAME_MISMATCH || result == X509_V_ERR_IP_ADDRESS_MISMATCH;
}

}  // namespace firstread::net
