// Certificates made by the openssl command line for the TLS tests (issue 17):
// a test CA, certificates it signs (good, expired via `openssl ca -startdate
// -enddate`, any subject and subjectAltName), and a second CA nobody trusts.
// RSA 2048 / SHA-256, as BCP 195 asks.
#pragma once

#include <string>

namespace firstread::testing {

struct TestCert {
  std::string cert;     // PEM path
  std::string key;      // PEM path (unencrypted)
  std::string subject;  // RFC 2253, as firstread logs and matches it
};

class TestPki {
 public:
  explicit TestPki(const std::string& dir);  // creates dir/ca.pem and dir/other-ca.pem; throws with openssl's output

  // A certificate for /O=firstread test/CN=common_name (RFC 2253: "CN=common_name,O=firstread test") signed by the test CA
  // (or by the other CA when untrusted). san: "DNS:localhost,IP:127.0.0.1" or
  // "" for none. Expired: valid 2020-01-01 .. 2020-02-01 only.
  TestCert issue(const std::string& name, const std::string& common_name, const std::string& san = "",
                 bool expired = false, bool untrusted = false);

  const std::string& ca() const { return ca_; }              // the test CA's certificate
  const std::string& other_ca() const { return other_ca_; }  // a CA nobody in the tests trusts
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_, ca_, other_ca_;
  int serial_ = 1;
};

}  // namespace firstread::testing
