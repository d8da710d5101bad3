#include "tests/orthanc_server.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
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

void OrthancServer::serve_https(const std::string& certificate, const std::string& private_key,
                                const std::string& ca_file, const std::string& host) {
  https_host_ = host;
  https_port_ = test_port(4) - 10000;
  curl_options_ = "-s --cacert '" + ca_file + "'";
  std::ofstream c(dir_ + "/stunnel.conf");
  c << "foreground = yes\npid =\noutput = " << dir_ << "/stunnel.log\n"
    << "[orthanc-https]\naccept = 127.0.0.1:" << https_port_ << "\nconnect = 127.0.0.1:" << http_port_ << "\n"
    << "cert = " << certificate << "\nkey = " << private_key << "\nsslVersionMin = TLSv1.2\n";
}

std::string OrthancServer::http_url() const {
  if (!https_host_.empty()) return "https://" + https_host_ + ":" + std::to_string(https_port_);
  return "http://127.0.0.1:" + std::to_string(http_port_);
}

pid_t OrthancServer::spawn(const std::vector<std::string>& argv, const std::string& log) const {
  std::vector<char*> args;  // built before fork: the child only execs
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    dup2(fd, STDOUT_FILENO);
    dup2(fd, STDERR_FILENO);
    execvp(args[0], args.data());
    _exit(127);
  }
  return pid;
}

void OrthancServer::start() {
  pid_ = spawn({"Orthanc", dir_ + "/orthanc.json"}, dir_ + "/orthanc.log");
  if (!https_host_.empty()) tls_front_pid_ = spawn({"stunnel4", dir_ + "/stunnel.conf"}, dir_ + "/stunnel.out");
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < deadline) {
    int code = 0;
    rest("GET", "/system", "", &code);
    if (code == 200) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  // The logs go with the directory when the test ends: their ends go into the message.
  auto end_of = [this](const std::string& name) {
    std::ifstream log(dir_ + "/" + name);
    std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
    return "\n--- the end of " + name + ":\n" + (text.size() > 3000 ? text.substr(text.size() - 3000) : text);
  };
  std::string logs = end_of("orthanc.log");
  if (!https_host_.empty()) logs += end_of("stunnel.out") + end_of("stunnel.log");
  throw std::runtime_error("Orthanc did not answer GET " + http_url() + "/system within 60 s" + logs);
}

void OrthancServer::stop() {
  for (pid_t* pid : {&tls_front_pid_, &pid_}) {
    if (*pid <= 0) continue;
    kill(*pid, SIGTERM);
    int status;
    waitpid(*pid, &status, 0);
    *pid = -1;
  }
}

std::string OrthancServer::rest(const std::string& method, const std::string& path, const std::string& body,
                                int* code) const {
  std::string cmd = "curl " + curl_options_ + " -o - -w '\\n%{http_code}' -X " + method + " " + http_url() + path;
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
  return run("curl " + curl_options_ + " -X POST " + http_url() + "/instances --data-binary @'" + dicom_file + "'")
      .output;
}

}  // namespace firstread::testing
