// DICOM TLS on the node and HTTPS with per-user tokens (issue 17), against the
// real `firstread serve`: DCMTK's echoscu / storescu with +tls, openssl
// s_client and curl, with certificates that openssl makes in the test (a CA,
// a good client, an expired one, one from a CA nobody trusts).
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <stdlib.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <regex>
#include <string>
#include <thread>

#include "tests/service_harness.h"
#include "tests/test_pki.h"

using firstread::testing::FirstreadService;
using firstread::testing::query_value;
using firstread::testing::run;
using firstread::testing::wait_until;
using firstread::testing::TestCert;
using firstread::testing::TempDir;
using firstread::testing::TestPki;
using json = nlohmann::json;

namespace {

const std::string kCtSmall = "/usr/lib/python3/dist-packages/pydicom/data/test_files/CT_small.dcm";
const std::string kMrSmall = "/usr/lib/python3/dist-packages/pydicom/data/test_files/MR_small.dcm";

// The dicom.tls block (inside dicom:, indented two spaces).
std::string dicom_tls_yaml(const TestPki& pki, const TestCert& server, int tls_port, const std::string& more = "") {
  return "  tls:\n    enabled: true\n    port: " + std::to_string(tls_port) + "\n    certificate: " + server.cert +
         "\n    private_key: " + server.key + "\n    ca_certificates: " + pki.ca() + "\n" + more;
}

// DCMTK's client with a client certificate (+tls KEY CERT), trusting the test CA.
firstread::testing::CommandResult dcmtk_tls(const std::string& tool, const TestPki& pki, const TestCert& client,
                                            int port, const std::string& file = "") {
  return run(tool + " -to 10 -aec FIRSTREAD +tls " + client.key + " " + client.cert + " +cf " + pki.ca() +
             " 127.0.0.1 " + std::to_string(port) + (file.empty() ? "" : " " + file));
}

bool log_has(const FirstreadService& s, const std::string& text) {
  return wait_until([&] { return s.log().find(text) != std::string::npos; }, 10);
}

}  // namespace

TEST(DicomTls, AGoodClientCertificateEchoesAndStoresAndEachRefusalSaysWhyWhileServingGoesOn) {
  TempDir tmp("tls");
  TestPki pki(tmp.path());
  const TestCert server = pki.issue("server", "localhost", "DNS:localhost,IP:127.0.0.1");
  const TestCert good = pki.issue("good", "modality-good");
  const TestCert expired = pki.issue("expired", "modality-expired", "", true);
  const TestCert untrusted = pki.issue("untrusted", "modality-untrusted", "", false, true);
  const int tls_port = firstread::testing::test_port(4);
  FirstreadService s("", dicom_tls_yaml(pki, server, tls_port));
  s.start();  // C-ECHO on the plain port, which stays open by default
  ASSERT_TRUE(log_has(s, "and TLS port " + std::to_string(tls_port) + " (bcp195, client certificate required)"))
      << s.log();

  auto echo = dcmtk_tls("echoscu", pki, good, tls_port);
  EXPECT_EQ(echo.exit_code, 0) << echo.output << s.log();
  auto store = dcmtk_tls("storescu", pki, good, tls_port, kCtSmall);
  EXPECT_EQ(store.exit_code, 0) << store.output << s.log();
  EXPECT_EQ(query_value(s, "SELECT count(*) FROM api.instances WHERE calling_ae = 'STORESCU'"), "1");

  const std::string refused = "DICOM TLS: refused a connection from 127.0.0.1 on TLS port " + std::to_string(tls_port);
  auto untrusted_echo = dcmtk_tls("echoscu", pki, untrusted, tls_port);
  EXPECT_NE(untrusted_echo.exit_code, 0) << untrusted_echo.output;
  EXPECT_TRUE(log_has(s, refused + ": its client certificate '" + untrusted.subject + "' is not trusted"))
      << s.log();

  auto expired_echo = dcmtk_tls("echoscu", pki, expired, tls_port);
  EXPECT_NE(expired_echo.exit_code, 0) << expired_echo.output;
  EXPECT_TRUE(log_has(s, refused + ": its client certificate '" + expired.subject + "' has expired (valid until Feb  1"))
      << s.log();

  // +tla: TLS without a client certificate.
  auto anonymous = run("echoscu -to 10 -aec FIRSTREAD +tla +cf " + pki.ca() + " 127.0.0.1 " + std::to_string(tls_port));
  EXPECT_NE(anonymous.exit_code, 0) << anonymous.output;
  EXPECT_TRUE(log_has(s, refused + ": it sent no client certificate, and dicom.tls.require_peer_certificate is true"))
      << s.log();

  auto plain = run("echoscu -to 10 -aec FIRSTREAD 127.0.0.1 " + std::to_string(tls_port));
  EXPECT_NE(plain.exit_code, 0) << plain.output;
  EXPECT_TRUE(log_has(s, refused + ": it sent plain (unencrypted) DICOM")) << s.log();

  // BCP 195: TLS 1.1 is refused by the server (its alert), TLS 1.2 gets an ECDHE/DHE AES-GCM suite.
  auto tls11 = run("openssl s_client -connect 127.0.0.1:" + std::to_string(tls_port) + " -tls1_1 -cipher "
                   "'DEFAULT:@SECLEVEL=0' -cert " + good.cert + " -key " + good.key + " </dev/null");
  EXPECT_NE(tls11.output.find("alert protocol version"), std::string::npos) << tls11.output;
  EXPECT_TRUE(log_has(s, refused + ": it offers only TLS versions older than 1.2")) << s.log();
  auto tls12 = run("openssl s_client -connect 127.0.0.1:" + std::to_string(tls_port) + " -tls1_2 -CAfile " +
                   pki.ca() + " -cert " + good.cert + " -key " + good.key + " </dev/null");
  EXPECT_TRUE(std::regex_search(tls12.output, std::regex("Cipher is (ECDHE|DHE)-RSA-AES(128|256)-GCM-SHA(256|384)")))
      << tls12.output;

  // Still serving, on both ports.
  EXPECT_EQ(dcmtk_tls("echoscu", pki, good, tls_port).exit_code, 0) << s.log();
  EXPECT_TRUE(s.echo());
  const std::string metrics =
      run("curl -s http://127.0.0.1:" + std::to_string(firstread::testing::test_port(2)) + "/metrics").output;
  EXPECT_NE(metrics.find("firstread_dicom_tls_handshakes_failed_total 5\n"), std::string::npos) << metrics;
}

TEST(DicomTls, OnlyTheTlsPortListensAndAllowedPeersMatchTheCertificateSubject) {
  TempDir tmp("tls");
  TestPki pki(tmp.path());
  const TestCert server = pki.issue("server", "localhost", "DNS:localhost,IP:127.0.0.1");
  const TestCert allowed = pki.issue("allowed", "ct-scanner-1");
  const TestCert other = pki.issue("other", "ct-scanner-2");  // same trusted CA, not listed
  const int tls_port = firstread::testing::test_port(4);
  FirstreadService s("",
                     "  allowed_peers:\n    - {certificate_subject: \"" + allowed.subject + "\"}\n" +
                         dicom_tls_yaml(pki, server, tls_port, "    keep_plain_port: false\n    profile: bcp195-extended\n"));
  s.launch();
  ASSERT_TRUE(log_has(s, "listening on port " + std::to_string(tls_port) + " (TLS only, plain port off)")) << s.log();
  ASSERT_TRUE(wait_until([&] { return dcmtk_tls("echoscu", pki, allowed, tls_port).exit_code == 0; }, 30)) << s.log();

  auto store = dcmtk_tls("storescu", pki, allowed, tls_port, kCtSmall);
  EXPECT_EQ(store.exit_code, 0) << store.output;
  auto refused = dcmtk_tls("echoscu", pki, other, tls_port);
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_NE(refused.output.find("Association Rejected"), std::string::npos) << refused.output;
  EXPECT_TRUE(log_has(s, "calling AE/host/client certificate subject '" + other.subject + "' not in dicom.allowed_peers"))
      << s.log();
  EXPECT_FALSE(s.echo()) << "the plain port must be closed";
  // bcp195-extended is TLS 1.2 only.
  auto tls13 = run("openssl s_client -connect 127.0.0.1:" + std::to_string(tls_port) + " -tls1_3 -CAfile " + pki.ca() +
                   " -cert " + allowed.cert + " -key " + allowed.key + " </dev/null");
  EXPECT_EQ(tls13.output.find("New, TLSv1.3"), std::string::npos) << tls13.output;
  auto tls12 = run("openssl s_client -connect 127.0.0.1:" + std::to_string(tls_port) + " -tls1_2 -CAfile " + pki.ca() +
                   " -cert " + allowed.cert + " -key " + allowed.key + " </dev/null");
  EXPECT_NE(tls12.output.find("New, TLSv1.2"), std::string::npos) << tls12.output;
  EXPECT_EQ(query_value(s, "SELECT count(*) FROM api.instances"), "1");
}

TEST(HttpsService, RolesOverHttpsWithTokensMadeByTheCliAndNoTokenInAnyLog) {
  TempDir tmp("tls");
  TestPki pki(tmp.path());
  const TestCert server = pki.issue("server", "localhost", "DNS:localhost,IP:127.0.0.1");
  // Tokens from the real CLI; one user inline, one in a tokens file.
  auto created = [&](const std::string& name, const std::string& role) {
    auto r = run(firstread::testing::firstread_binary() + " token create --name " + name + " --role " + role +
                 " --json");
    if (r.exit_code != 0) throw std::runtime_error(r.output);
    return json::parse(r.output);
  };
  const json vera = created("vera", "viewer"), ada = created("ada", "admin");
  const std::string tokens_file = tmp.path() + "/tokens.yaml";
  std::ofstream(tokens_file) << "- name: ada\n  role: admin\n  token_hash: " << ada.at("token_hash").get<std::string>()
                             << "\n";
  const std::string audit = tmp.path() + "/audit.log";
  FirstreadService s("log:\n  level: debug\n", "", "",
                     "  tls:\n    certificate: " + server.cert + "\n    private_key: " + server.key +
                         "\n  users:\n    - {name: vera, role: viewer, token_hash: \"" +
                         vera.at("token_hash").get<std::string>() + "\"}\n  tokens_file: " + tokens_file +
                         "\n  audit_log: " + audit + "\n");
  s.start();
  ASSERT_EQ(run("storescu -to 10 -aec FIRSTREAD 127.0.0.1 " + std::to_string(s.port()) + " " + kCtSmall).exit_code, 0);
  const std::string study = query_value(s, "SELECT study_uid FROM api.studies");
  ASSERT_FALSE(study.empty());

  const std::string base = "https://localhost:" + std::to_string(firstread::testing::test_port(2));
  auto curl = [&](const std::string& token, const std::string& path, const std::string& method = "GET") {
    return run("curl -s -o /dev/null -w '%{http_code}' --resolve localhost:" +
               std::to_string(firstread::testing::test_port(2)) + ":127.0.0.1 --cacert " + pki.ca() + " -X " + method +
               (token.empty() ? "" : " -H 'Authorization: Bearer " + token + "'") + " " + base + path)
        .output;
  };
  const std::string vera_token = vera.at("token"), ada_token = ada.at("token");
  EXPECT_EQ(curl(vera_token, "/api/v1/studies/" + study), "200");
  EXPECT_EQ(curl(vera_token, "/api/v1/studies"), "200");
  EXPECT_EQ(curl(vera_token, "/metrics"), "403");
  EXPECT_EQ(curl(vera_token, "/api/v1/studies/" + study + "/reprocess", "POST"), "403");
  EXPECT_EQ(curl(ada_token, "/metrics"), "200");
  EXPECT_EQ(curl(ada_token, "/api/v1/studies/" + study + "/reprocess", "POST"), "202");
  EXPECT_EQ(curl("", "/api/v1/studies"), "401");
  EXPECT_EQ(curl(vera_token + "x", "/api/v1/studies"), "401");
  EXPECT_EQ(curl(ada_token, "/no/such/route"), "404");
  EXPECT_EQ(curl("", "/healthz"), "200");
  // STOW-RS over HTTPS (the body streamed through the TLS session): curl -F
  // with a multipart/related Content-Type, as the README shows.
  const auto stow = run("curl -s -o /dev/null -w '%{http_code}' --resolve localhost:" +
                        std::to_string(firstread::testing::test_port(2)) + ":127.0.0.1 --cacert " + pki.ca() +
                        " -H 'Authorization: Bearer " + ada_token +
                        "' -H 'Content-Type: multipart/related; type=\"application/dicom\"' -F 'file=@" + kMrSmall +
                        ";type=application/dicom' " + base + "/dicomweb/studies");
  EXPECT_EQ(stow.output, "200");
  EXPECT_EQ(query_value(s, "SELECT count(*) FROM api.instances"), "2");
  // Plain HTTP on the HTTPS port is not served, and says so in the log.
  EXPECT_NE(run("curl -s -m 5 -o /dev/null -w '%{http_code}' http://127.0.0.1:" +
                std::to_string(firstread::testing::test_port(2)) + "/healthz")
                .output,
            "200");
  EXPECT_TRUE(log_has(s, "http: TLS handshake with 127.0.0.1 failed")) << s.log();

  // The audit log names who saw which study; neither log holds a token.
  std::ifstream in(audit);
  std::vector<json> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(json::parse(line));
  ASSERT_EQ(lines.size(), 2u) << "GET study and GET studies by vera";
  EXPECT_EQ(lines[0].at("user"), "vera");
  EXPECT_EQ(lines[0].at("role"), "viewer");
  EXPECT_EQ(lines[0].at("target"), "/api/v1/studies/" + study);
  EXPECT_EQ(lines[0].at("studies"), json::array({study}));
  const std::string service_log = s.log();
  std::ifstream audit_in(audit);
  const std::string audit_text((std::istreambuf_iterator<char>(audit_in)), {});
  EXPECT_NE(service_log.find("http: GET /api/v1/studies/" + study), std::string::npos)
      << "requests are logged at debug level, so the check below means something:\n" << service_log;
  for (const std::string& token : {vera_token, ada_token, vera_token + "x"}) {
    EXPECT_EQ(service_log.find(token), std::string::npos) << "a token in the service log";
    EXPECT_EQ(audit_text.find(token), std::string::npos) << "a token in the audit log";
  }
  // grep, as an administrator would check: exit 1 = no line matches in either file.
  auto grep = run("grep -F -e '" + vera_token + "' -e '" + ada_token + "' " + audit + " " + s.dir() + "/service.log");
  EXPECT_EQ(grep.exit_code, 1) << "grep found a token:\n" << grep.output;
}
