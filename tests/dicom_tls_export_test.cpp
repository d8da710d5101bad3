// The export's C-STORE SCU over DICOM TLS (issue 17): Debian's Orthanc with
// DicomTlsEnabled (and a client certificate required) receives the SR that
// firstread made; a destination whose CA does not sign Orthanc's certificate,
// and one reached by a name the certificate does not carry, are refused with
// that reason in api.exports while the SR waits in the outbox.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <stdlib.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <string>
#include <thread>

#include "engine/test_fixtures.h"
#include "tests/orthanc_server.h"
#include "tests/service_harness.h"
#include "tests/test_pki.h"

using firstread::testing::FirstreadService;
using firstread::testing::OrthancServer;
using firstread::testing::query_value;
using firstread::testing::run;
using firstread::testing::wait_until;
using firstread::testing::TestCert;
using firstread::testing::TempDir;
using firstread::testing::TestPki;
using json = nlohmann::json;

namespace {

const std::string kCtSmall = "/usr/lib/python3/dist-packages/pydicom/data/test_files/CT_small.dcm";

std::string destination(const std::string& name, const std::string& host, int port, const TestCert& client,
                        const std::string& ca) {
  return "    - name: " + name + "\n      ae_title: ORTHANC\n      host: " + host + "\n      port: " +
         std::to_string(port) + "\n      objects: [sr]\n      tls:\n        enabled: true\n        certificate: " +
         client.cert + "\n        private_key: " + client.key + "\n        ca_certificates: " + ca + "\n";
}

}  // namespace

TEST(DicomTlsExport, OrthancOverTlsReceivesTheSrAndUntrustedOrMisnamedPacsAreRefusedWithTheReason) {
  const TempDir tmp("tls-export");
  const std::string& dir = tmp.path();
  TestPki pki(dir);
  // Orthanc's certificate names 127.0.0.1 only, so "localhost" is the wrong host for it.
  const TestCert orthanc_cert = pki.issue("orthanc", "firstread-test-pacs", "IP:127.0.0.1");
  const TestCert client = pki.issue("firstread", "firstread-exporter");
  OrthancServer pacs(firstread::testing::test_port(0),
                     "\"DicomTlsEnabled\": true, \"DicomTlsCertificate\": \"" + orthanc_cert.cert +
                         "\", \"DicomTlsPrivateKey\": \"" + orthanc_cert.key +
                         "\", \"DicomTlsTrustedCertificates\": \"" + pki.ca() +
                         "\", \"DicomTlsRemoteCertificateRequired\": true");
  const std::string model = firstread::engine::testing_support::fixture_root() + "/v12";
  const std::string yaml =
      "models:\n  tiny: {path: " + model + ", threads: 2}\n"
      "routes:\n  - {name: default, model: tiny, prompt: \"Describe the image.\", max_new_tokens: 8}\n"
      "worklist: {stable_seconds: 1, poll_seconds: 0.2, retry_backoff_seconds: 1, max_attempts: 2}\n"
      "export:\n  retry_backoff_seconds: 1\n  max_attempts: 100\n  destinations:\n" +
      destination("pacs", "127.0.0.1", pacs.dicom_port(), client, pki.ca()) +
      destination("pacs-untrusted", "127.0.0.1", pacs.dicom_port(), client, pki.other_ca()) +
      destination("pacs-by-name", "localhost", pacs.dicom_port(), client, pki.ca());
  FirstreadService s(yaml);
  pacs.start();
  s.start();

  auto store = run("storescu -to 10 -aec FIRSTREAD 127.0.0.1 " + std::to_string(s.port()) + " " + kCtSmall);
  ASSERT_EQ(store.exit_code, 0) << store.output;
  ASSERT_TRUE(wait_until([&] { return !query_value(s, "SELECT sr_sop_instance_uid FROM api.reports").empty(); }, 180))
      << s.log();
  const std::string sr_uid = query_value(s, "SELECT sr_sop_instance_uid FROM api.reports");

  ASSERT_TRUE(wait_until([&] { return query_value(s, "SELECT state FROM api.exports WHERE destination = 'pacs'") == "sent"; },
                         60))
      << query_value(s, "SELECT string_agg(destination || ': ' || coalesce(last_error, ''), '; ') FROM api.exports")
      << "\n" << s.log();
  // Orthanc's DICOM port speaks TLS only: the SR being there means it came over TLS.
  int code = 0;
  const std::string found = pacs.rest("POST", "/tools/lookup", sr_uid, &code);
  ASSERT_EQ(code, 200);
  const json hits = json::parse(found);
  ASSERT_EQ(hits.size(), 1u) << found;
  EXPECT_EQ(hits[0].value("Type", ""), "Instance");
  const json tags = json::parse(pacs.rest("GET", "/instances/" + hits[0].value("ID", "") + "/simplified-tags"));
  EXPECT_EQ(tags.value("Modality", ""), "SR");
  EXPECT_EQ(tags.value("StudyInstanceUID", ""), query_value(s, "SELECT study_uid FROM api.studies"));

  auto error_of = [&](const std::string& name) {
    return query_value(s, "SELECT coalesce(last_error, '') FROM api.exports WHERE destination = '" + name + "'");
  };
  ASSERT_TRUE(wait_until([&] { return !error_of("pacs-untrusted").empty() && !error_of("pacs-by-name").empty(); }, 60))
      << s.log();
  // Orthanc sends its CA along: the refusal names Orthanc's certificate and the chain's CA that is not ours.
  const std::string untrusted = error_of("pacs-untrusted");
  EXPECT_NE(untrusted.find("TLS handshake refused: the server's certificate '" + orthanc_cert.subject + "'"),
            std::string::npos)
      << untrusted;
  EXPECT_NE(untrusted.find("is not trusted"), std::string::npos) << untrusted;
  EXPECT_NE(untrusted.find("tls.ca_certificates = " + pki.other_ca()), std::string::npos) << untrusted;
  EXPECT_NE(error_of("pacs-by-name").find("does not name the host 'localhost'"), std::string::npos)
      << error_of("pacs-by-name");
  for (const char* name : {"pacs-untrusted", "pacs-by-name"})
    EXPECT_EQ(query_value(s, std::string("SELECT state FROM api.exports WHERE destination = '") + name + "'"), "pending")
        << name << ": the SR waits in the outbox to be retried";
  s.terminate();
  pacs.stop();
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}
