#include "tests/orthanc_server.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <thread>

#include "tests/service_harness.h"

namespace firstread::testing {

OrthancServer::OrthancServer(int firstread_port, const std::string& extra_json, bool dicomweb) {
  std::string templ = "/tmp/firstread-orthanc-XXXXXX";
  if (!mkdtemp(templ.data())) throw std::runtime_error("mkdtemp failed");
  dir_ = templ;
  dicom_port_ = test_port(3);
  http_port_ = test_port(3) - 10000;  // 10003-19599: below the ephemeral range too
  std::ofstream c(dir_ + "/orthanc.json");
  c << "{\n"
    << "  \"Name\": \"firstread-test-pacs\",\n"
    << "  \"StorageDirectory\": \"" << dir_ << "/db\",\n"
    << "  \"IndexDirectory\": \"" << dir_ << "/db\",\n"
    << "  \"HttpPort\": " << http_port_ << ",\n"
    << "  \"DicomPort\": " << dicom_port_ << ",\n"
    << "  \"DicomAet\": \"ORTHANC\",\n"
    << "  \"RemoteAccessAllowed\": false,\n"
    << "  \"AuthenticationEnabled\": false,\n"
    << (dicomweb ? "  \"Plugins\": [\"/usr/share/orthanc/plugins/libOrthancDicomWeb.so\"],\n"
                   "  \"DicomWeb\": {\"Enable\": true, \"Root\": \"/dicom-web/\", \"EnableWado\": false},\n"
                 : "  \"Plugins\": [],\n")
    << "  \"DicomAlwaysAllowStore\": true,\n"
    << "  \"DicomCheckCalledAet\": false,\n"
    << "  \"DicomModalities\": { \"firstread\": [\"FIRSTREAD\", \"127.0.0.1\", " << firstread_port << "] }"
    << (extra_json.empty() ? "" : ",\n  " + extra_json) << "\n}\n";
}

OrthancServer::~OrthancServer() {
  stop();
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

void OrthancServer::start() {
  pid_ = fork();
  if (pid_ == 0) {
    int fd = open((dir_ + "/orthanc.log").c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    dup2(fd, STDOUT_FILENO);
    dup2(fd, STDERR_FILENO);
    execlp("Orthanc", "Orthanc", (dir_ + "/orthanc.json").c_str(), nullptr);
    _exit(127);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < deadline) {
    int code = 0;
    rest("GET", "/system", "", &code);
    if (code == 200) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  throw std::runtime_error("Orthanc did not start; log in " + dir_ + "/orthanc.log");
}

void OrthancServer::stop() {
  if (pid_ <= 0) return;
  kill(pid_, SIGTERM);
  int status;
  waitpid(pid_, &status, 0);
  pid_ = -1;
}

std::string OrthancServer::rest(const std::string& method, const std::string& path, const std::string& body,
                                int* code) const {
  std::string cmd = "curl -s -o - -w '\\n%{http_code}' -X " + method + " http://127.0.0.1:" +
                    std::to_string(http_port_) + path;
  if (!body.empty()) cmd += " --data-binary '" + body + "'";
  auto r = run(cmd);
  std::string out = r.output;
  const auto nl = out.rfind('\n');
  int http = 0;
  if (nl != std::string::npos) {
    http = std::atoi(out.c_str() + nl + 1);
    out = out.substr(0, nl);
  }
  if (code) *code = http;
  return out;
}

std::string OrthancServer::upload(const std::string& dicom_file) const {
  return run("curl -s -X POST http://127.0.0.1:" + std::to_string(http_port_) + "/instances --data-binary @'" +
             dicom_file + "'")
      .output;
}

}  // namespace firstread::testing
