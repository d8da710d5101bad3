#include "tests/service_harness.h"

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcuid.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cmath>
#include <chrono>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace fs = std::filesystem;

namespace firstread::testing {

CommandResult run(const std::string& command) {
  CommandResult r;
  FILE* p = popen((command + " 2>&1").c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.output.append(buf.data(), n);
  int status = pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128;
  return r;
}

// Below Linux's ephemeral range (32768-60999): a listening port chosen there
// can be taken at any moment by some test's outgoing connection.
int test_port(int offset) { return 20000 + (getpid() % 1200) * 8 + offset; }

std::string firstread_binary() { return FIRSTREAD_BINARY; }

bool wait_until(const std::function<bool()>& condition, int seconds) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  while (std::chrono::steady_clock::now() < deadline) {
    if (condition()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return condition();
}

std::string query_value(const FirstreadService& service, const std::string& sql) {
  try {
    auto c = service.connect();
    pqxx::work t(c);
    auto r = t.exec(sql);
    return r.empty() || r[0][0].is_null() ? "" : r[0][0].c_str();
  } catch (const std::exception&) {
    return "";
  }
}

SmallDisk::SmallDisk(const std::string& size) : dir_("/tmp/firstread-disk-XXXXXX") {
  if (mkdtemp(dir_.data()) == nullptr) {
    error_ = "mkdtemp: " + std::string(std::strerror(errno));
    return;
  }
  const CommandResult mounted = run("mount -t tmpfs -o size=" + size + " tmpfs '" + dir_ + "'");
  mounted_ = mounted.exit_code == 0;
  if (!mounted_) error_ = "mount -t tmpfs: " + mounted.output;
}

SmallDisk::~SmallDisk() {
  if (mounted_) run("umount '" + dir_ + "'");
  rmdir(dir_.c_str());
}

FirstreadService::FirstreadService(const std::string& extra_yaml, const std::string& dicom_extra,
                                   const std::string& storage_extra, const std::string& http_extra) {
  std::string templ = "/tmp/firstread-it-XXXXXX";
  if (!mkdtemp(templ.data())) throw std::runtime_error("mkdtemp failed");
  dir_ = templ;
  storage_path_ = dir_ + "/var";
  chmod(dir_.c_str(), 0755);  // the postgres account must reach the cluster below it
  port_ = test_port(0);
  db_port_ = test_port(1);
  config_path_ = dir_ + "/firstread.yaml";
  std::ofstream c(config_path_);
  c << "dicom:\n  port: " << port_ << "\n  dimse_timeout_seconds: 20\n" << dicom_extra
    << "storage:\n  path: " << dir_ << "/var\n  min_free_bytes: 1MiB\n" << storage_extra
    << "database:\n  embedded_port: " << db_port_ << "\n"
    << "http:\n  listen: 127.0.0.1:" << test_port(2) << "\n" << http_extra
    << extra_yaml;
}

FirstreadService::FirstreadService(const FirstreadService& first, int port_offset, const std::string& storage_extra,
                                   const std::string& storage_path)
    : shares_storage_(true) {
  std::string templ = "/tmp/firstread-it-node-XXXXXX";
  if (!mkdtemp(templ.data())) throw std::runtime_error("mkdtemp failed");
  dir_ = templ;
  storage_path_ = storage_path.empty() ? first.storage() : storage_path;
  port_ = test_port(port_offset);
  db_port_ = first.db_port_;
  config_path_ = dir_ + "/firstread.yaml";
  // The first node's embedded cluster, reached through its socket directory.
  std::ofstream c(config_path_);
  c << "dicom:\n  port: " << port_ << "\n  dimse_timeout_seconds: 20\n"
    << "storage:\n  path: " << storage_path_ << "\n" << (storage_extra.find("min_free_bytes") == std::string::npos ? "  min_free_bytes: 1MiB\n" : "") << storage_extra
    << "database:\n  url: \"host=" << first.storage() << "/pg/run port=" << first.db_port_
    << " user=firstread dbname=firstread\"\n"
    << "http:\n  listen: 127.0.0.1:" << test_port(port_offset + 1) << "\n";
}

FirstreadService::~FirstreadService() {
  if (pid_ > 0) terminate();
  if (shares_storage_) {
    std::error_code ec;
    fs::remove_all(dir_, ec);
    return;
  }
  run(firstread_binary() + " db stop --config " + config_path_);
  std::error_code ec;
  fs::remove_all(dir_, ec);
}

void FirstreadService::start() {
  launch();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (std::chrono::steady_clock::now() < deadline) {
    if (echo()) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  throw std::runtime_error("firstread did not answer C-ECHO within 30 s:\n" + log());
}

void FirstreadService::launch() {
  const std::string log_path = dir_ + "/service.log";
  pid_ = fork();
  if (pid_ == 0) {
    int fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    dup2(fd, STDOUT_FILENO);
    dup2(fd, STDERR_FILENO);
    execl(FIRSTREAD_BINARY, FIRSTREAD_BINARY, "serve", "--config", config_path_.c_str(), nullptr);
    _exit(127);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(90);
  while (std::chrono::steady_clock::now() < deadline) {
    int status;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      throw std::runtime_error("firstread exited during start-up:\n" + log());
    }
    if (log().find("listening on port") != std::string::npos) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  throw std::runtime_error("firstread did not open its DICOM port within 90 s:\n" + log());
}

int FirstreadService::terminate() {
  if (pid_ <= 0) return -1;
  kill(pid_, SIGTERM);
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

void FirstreadService::kill9() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
}

bool FirstreadService::echo() const {
  return run("echoscu -to 5 -aec FIRSTREAD 127.0.0.1 " + std::to_string(port_)).exit_code == 0;
}

std::string FirstreadService::log() const {
  std::ifstream in(dir_ + "/service.log");
  return std::string(std::istreambuf_iterator<char>(in), {});
}

bool FirstreadService::wait_for_log(const std::string& needle, double seconds) const {
  return wait_until([&] { return log().find(needle) != std::string::npos; }, int(std::ceil(seconds)));
}

pqxx::connection FirstreadService::connect() const {
  // The embedded cluster's socket lives under <storage>/pg/run (see db/embedded_postgres.cpp).
  return pqxx::connection("host=" + storage() + "/pg/run port=" + std::to_string(db_port_) +
                          " user=firstread dbname=firstread");
}

CommandResult FirstreadService::cli(const std::string& args) const {
  return run(firstread_binary() + " " + args + " --config " + config_path_);
}

std::vector<std::pair<std::string, std::string>> make_instances(const std::string& source, const std::string& dir,
                                                                 int count, int size) {
  fs::create_directories(dir);
  DcmFileFormat base;
  if (base.loadFile(source.c_str()).bad()) throw std::runtime_error("cannot read " + source);
  base.loadAllDataIntoMemory();
  char uid[100];
  const std::string study = dcmGenerateUniqueIdentifier(uid, SITE_STUDY_UID_ROOT);
  const std::string series = dcmGenerateUniqueIdentifier(uid, SITE_SERIES_UID_ROOT);
  DcmDataset* ds = base.getDataset();
  if (size > 0) {
    std::vector<Uint16> pixels(static_cast<size_t>(size) * size);
    for (size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<Uint16>((i * 7919) % 4096);
    ds->putAndInsertUint16(DCM_Rows, static_cast<Uint16>(size));
    ds->putAndInsertUint16(DCM_Columns, static_cast<Uint16>(size));
    ds->putAndInsertUint16(DCM_BitsAllocated, 16);
    ds->putAndInsertUint16(DCM_BitsStored, 12);
    ds->putAndInsertUint16(DCM_HighBit, 11);
    ds->putAndInsertUint16(DCM_SamplesPerPixel, 1);
    ds->putAndInsertUint16(DCM_PixelRepresentation, 0);
    ds->putAndInsertString(DCM_PhotometricInterpretation, "MONOCHROME2");
    ds->putAndInsertUint16Array(DCM_PixelData, pixels.data(), static_cast<unsigned long>(pixels.size()));
  }
  std::vector<std::pair<std::string, std::string>> out;
  for (int i = 0; i < count; ++i) {
    const std::string sop = dcmGenerateUniqueIdentifier(uid, SITE_INSTANCE_UID_ROOT);
    ds->putAndInsertString(DCM_StudyInstanceUID, study.c_str());
    ds->putAndInsertString(DCM_SeriesInstanceUID, series.c_str());
    ds->putAndInsertString(DCM_SOPInstanceUID, sop.c_str());
    ds->putAndInsertString(DCM_InstanceNumber, std::to_string(i + 1).c_str());
    const std::string path = dir + "/" + std::to_string(i) + ".dcm";
    if (base.saveFile(path.c_str(), EXS_LittleEndianExplicit, EET_ExplicitLength, EGL_recalcGL, EPD_noChange, 0, 0,
                      EWM_updateMeta).bad()) throw std::runtime_error("cannot write " + path);
    out.emplace_back(path, sop);
  }
  return out;
}

TempDir::TempDir(const std::string& what) {
  std::string templ = "/tmp/firstread-" + what + "-XXXXXX";
  if (!mkdtemp(templ.data())) throw std::runtime_error("mkdtemp " + templ + ": " + std::strerror(errno));
  path_ = templ;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

int connect_loopback(int port, const std::string& from) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  if (!from.empty()) {
    sockaddr_in local{};
    local.sin_family = AF_INET;
    if (inet_pton(AF_INET, from.c_str(), &local.sin_addr) != 1 ||
        bind(fd, reinterpret_cast<sockaddr*>(&local), sizeof local) != 0) {
      close(fd);
      return -1;
    }
  }
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

}  // namespace firstread::testing
