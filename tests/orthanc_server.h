// Integration-test support: Debian's Orthanc as the PACS, with a temporary
// configuration on loopback ports and a temporary storage directory.
#pragma once

#include <sys/types.h>

#include <string>

namespace firstread::testing {

class OrthancServer {
 public:
  // firstread_port: where Orthanc's modality "firstread" (AE FIRSTREAD) listens.
  // extra_json: more top-level configuration members ("\"DicomTlsEnabled\": true, ...").
  // dicomweb: load Debian's orthanc-dicomweb plugin (DICOMweb under /dicom-web).
  explicit OrthancServer(int firstread_port, const std::string& extra_json = "", bool dicomweb = false);
  ~OrthancServer();
  void start();  // waits until the REST API answers
  void stop();
  bool running() const { return pid_ > 0; }
  int dicom_port() const { return dicom_port_; }
  int http_port() const { return http_port_; }
  // The DICOMweb root (with dicomweb): http://127.0.0.1:PORT/dicom-web
  std::string dicomweb_url() const { return "http://127.0.0.1:" + std::to_string(http_port_) + "/dicom-web"; }
  // REST call with curl; returns the body (and the HTTP code in *code).
  std::string rest(const std::string& method, const std::string& path, const std::string& body = "",
                   int* code = nullptr) const;
  std::string upload(const std::string& dicom_file) const;  // POST /instances, returns the JSON

 private:
  std::string dir_;
  int dicom_port_, http_port_;
  pid_t pid_ = -1;
};

}  // namespace firstread::testing
