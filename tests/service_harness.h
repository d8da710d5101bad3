// Integration-test support: runs the real `firstread serve` binary with a
// temporary configuration (loopback ports, private storage and embedded
// PostgreSQL), and DCMTK's command-line clients against it.
#pragma once

#include <sys/types.h>

#include <functional>
#include <pqxx/pqxx>
#include <string>
#include <vector>

namespace firstread::testing {

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};

// Runs a shell command line and captures its output.
CommandResult run(const std::string& command);

// A port number for this test process, different across concurrently running
// test processes (offset picks one of several ports per process).
int test_port(int offset);

class FirstreadService {
 public:
  // extra_yaml is appended to the generated configuration (dicom port,
  // storage path and embedded database port are set by the harness).
  // dicom_extra / storage_extra are lines added to the generated dicom: and
  // storage: sections (indented by two spaces).
  // http_extra: lines added to the http: section (indented by two spaces).
  explicit FirstreadService(const std::string& extra_yaml = "", const std::string& dicom_extra = "",
                            const std::string& storage_extra = "", const std::string& http_extra = "");
  // Another node on the same database as `first` and, unless storage_path is
  // given, the same storage volume (its own DICOM and HTTP ports); call after
  // first.start().
  FirstreadService(const FirstreadService& first, int port_offset, const std::string& storage_extra = "",
                   const std::string& storage_path = "");
  ~FirstreadService();

  void start();         // starts serve and waits until it answers C-ECHO
  void launch();        // starts serve and waits only until its DICOM port is open
  int terminate();      // SIGTERM, wait; returns the exit status
  void kill9();         // SIGKILL, as a crash would
  bool running() const { return pid_ > 0; }

  bool echo() const;  // echoscu against the service
  std::string log() const;
  // Waits until the service's log contains `needle` (lines are written by the
  // service's threads after they answer, so a client may return first).
  bool wait_for_log(const std::string& needle, double seconds = 15) const;
  pqxx::connection connect() const;
  // Runs `firstread ARGS --config <ours>`.
  CommandResult cli(const std::string& args) const;

  int port() const { return port_; }
  int db_port() const { return db_port_; }
  const std::string& dir() const { return dir_; }
  const std::string& storage() const { return storage_path_; }
  const std::string& config_path() const { return config_path_; }

 private:
  std::string dir_;
  std::string config_path_;
  std::string storage_path_;
  int port_;
  int db_port_;
  pid_t pid_ = -1;
  bool shares_storage_ = false;  // a second node: the first one owns the directory
};

// Path of the firstread binary under test.
std::string firstread_binary();

// Polls `condition` every 100 ms until it holds or `seconds` pass; returns its last answer.
bool wait_until(const std::function<bool()>& condition, int seconds);

// The first column of the first row `sql` gives on the service's database;
// "" for no row, NULL, or a database that does not answer (yet).
std::string query_value(const FirstreadService& service, const std::string& sql);

// A tmpfs of `size` (e.g. "12m") mounted on a fresh directory under /tmp, as
// a small disk that fills (needs root); unmounted and removed when destroyed.
// error() is empty once it is mounted, else says why not.
class SmallDisk {
 public:
  explicit SmallDisk(const std::string& size);
  ~SmallDisk();
  SmallDisk(const SmallDisk&) = delete;
  SmallDisk& operator=(const SmallDisk&) = delete;
  const std::string& dir() const { return dir_; }
  const std::string& error() const { return error_; }

 private:
  std::string dir_, error_;
  bool mounted_ = false;
};

// Writes `count` copies of a source DICOM file with fresh Study/Series/SOP
// Instance UIDs (one study per call) into dir; returns {file path, SOP UID}.
// If size is given, the pixel data is resized to size x size (16-bit).
std::vector<std::pair<std::string, std::string>> make_instances(const std::string& source, const std::string& dir,
                                                                 int count, int size = 0);

// A directory under /tmp for one test's files (/tmp/firstread-<what>-XXXXXX),
// removed with everything in it when the test ends.
class TempDir {
 public:
  explicit TempDir(const std::string& what);
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// A plain TCP connection to 127.0.0.1:port (for slow clients and malformed
// requests), from a chosen loopback source address when `from` is given
// (127.0.0.0/8 is all local on Linux, so a test can play several hosts);
// -1 when it cannot connect.
int connect_loopback(int port, const std::string& from = "");

}  // namespace firstread::testing
