// The managed PostgreSQL cluster used when database.url is empty: Debian's
// initdb/pg_ctl, data under <storage.path>/pg/data, listening only on a Unix
// socket (no TCP address at all), run as an unprivileged user when we are root.
// The cluster is reused across restarts and stopped on shutdown.
#pragma once

#include <string>
#include <vector>

namespace firstread::db {

class EmbeddedPostgres {
 public:
  // storage_path: firstread's storage.path; port: the socket's port number.
  EmbeddedPostgres(std::string storage_path, int port);
  ~EmbeddedPostgres();

  // Creates the cluster if needed, starts it if it is not running, creates the
  // firstread database. Throws DatabaseError with the server log's tail on failure.
  void start();
  // Stops the cluster if this object started it (fast shutdown: running
  // transactions are rolled back, committed data is safe).
  void stop();
  // Stops the cluster whether or not we started it (used by `firstread db stop`
  // and tests).
  void stop_any();
  bool running() const;

  // libpq connection string to the firstread database.
  std::string conninfo() const;
  const std::string& socket_dir() const { return socket_dir_; }
  const std::string& data_dir() const { return data_dir_; }

 private:
  int run_tool(const std::string& tool, const std::vector<std::string>& args, std::string* output) const;
  std::string bin_dir_;
  std::string root_;
  std::string data_dir_;
  std::string socket_dir_;
  std::string log_file_;
  int port_;
  bool started_by_us_ = false;
  // When running as root: the unprivileged account that owns and runs the cluster.
  int run_uid_ = -1;
  int run_gid_ = -1;
};

}  // namespace firstread::db
