// Integration-test support: Debian's Orthanc as the PACS, with a temporary
// configuration on loopback ports and a temporary storage directory.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace firstread::testing {

class OrthancServer {
 public:
  // firstread_port: where Orthanc's modality "firstread" (AE FIRSTREAD) listens.
  // extra_json: more top-level configuration members ("\"DicomTlsEnabled\": true, ...").
  // dicomweb: load Debian's orthanc-dicomweb plugin (DICOMweb under /dicom-web).
  explicit OrthancServer(int firstread_port, const std::string& extra_json = "", bool dicomweb = false);
  ~OrthancServer();
  // Before start(): Orthanc is reached over HTTPS only, at https://host:PORT
  // (REST calls and dicomweb_url() verified against ca_file), through a TLS
  // terminator in front of its loopback HTTP port: Debian's stunnel4 with this
  // certificate and key. Not Orthanc's own "SslEnabled": Debian 12's
  // libcivetweb1 (1.15) looks up SSL_get_peer_certificate, which OpenSSL 3 no
  // longer exports, and calls the NULL pointer after the first handshake
  // (Orthanc dies with SIGSEGV on every HTTPS request). A reverse proxy in
  // front is also how the Orthanc Book deploys HTTPS.
  void serve_https(const std::string& certificate, const std::string& private_key, const std::string& ca_file,
                   const std::string& host = "localhost");
  void start();  // waits until the REST API answers (over HTTPS after serve_https)
  void stop();
  bool running() const { return pid_ > 0; }
  int dicom_port() const { return dicom_port_; }
  int http_port() const { return http_port_; }
  // http://127.0.0.1:PORT, or https://host:PORT (the TLS terminator's) after serve_https
  std::string http_url() const;
  // The DICOMweb root (with dicomweb): http://127.0.0.1:PORT/dicom-web
  std::string dicomweb_url() const { return http_url() + "/dicom-web"; }
  // REST call with curl; returns the body (and the HTTP code in *code).
  std::string rest(const std::string& method, const std::string& path, const std::string& body = "",
                   int* code = nullptr) const;
  std::string upload(const std::string& dicom_file) const;  // POST /instances, returns the JSON

 private:
  pid_t spawn(const std::vector<std::string>& argv, const std::string& log) const;
  std::string dir_;
  std::string https_host_, curl_options_ = "-s";  // https_host_ set: HTTPS through stunnel
  int dicom_port_, http_port_, https_port_ = 0;
  pid_t pid_ = -1, tls_front_pid_ = -1;
};

}  // namespace firstread::testing
