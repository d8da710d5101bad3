#include "db/embedded_postgres.h"

#include <fcntl.h>
#include <glob.h>
#include <grp.h>
#include <pwd.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <filesystem>
#include <fstream>
#include <functional>
#include <pqxx/pqxx>
#include <sstream>

#include "db/database.h"

namespace fs = std::filesystem;

namespace firstread::db {
namespace {

std::string find_postgres_bin_dir() {
  if (const char* env = std::getenv("FIRSTREAD_PG_BINDIR"); env && *env) return env;
  glob_t g{};
  std::string best;
  int best_version = -1;
  if (glob("/usr/lib/postgresql/*/bin/pg_ctl", 0, nullptr, &g) == 0) {
    for (size_t i = 0; i < g.gl_pathc; ++i) {
      std::string p = g.gl_pathv[i];
      std::string ver = p.substr(strlen("/usr/lib/postgresql/"));
      ver = ver.substr(0, ver.find('/'));
      int v = std::atoi(ver.c_str());
      if (v > best_version) {
        best_version = v;
        best = fs::path(p).parent_path().string();
      }
    }
  }
  globfree(&g);
  if (best.empty())
    throw DatabaseError(
        "embedded PostgreSQL: no pg_ctl under /usr/lib/postgresql/*/bin (install Debian's postgresql "
        "package, or set database.url)");
  return best;
}

std::string tail_of_file(const std::string& path, size_t max_bytes) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "";
  in.seekg(0, std::ios::end);
  auto size = static_cast<size_t>(in.tellg());
  size_t start = size > max_bytes ? size - max_bytes : 0;
  in.seekg(static_cast<std::streamoff>(start));
  std::string s(size - start, '\0');
  in.read(s.data(), static_cast<std::streamsize>(s.size()));
  return s;
}

// chown -R for directories we create for the cluster's account.
void chown_tree(const fs::path& p, int uid, int gid) {
  if (uid < 0) return;
  if (lchown(p.c_str(), uid, gid) != 0) throw DatabaseError("embedded PostgreSQL: cannot chown " + p.string());
  if (fs::is_directory(p) && !fs::is_symlink(p))
    for (const auto& e : fs::directory_iterator(p)) chown_tree(e.path(), uid, gid);
}

}  // namespace

EmbeddedPostgres::EmbeddedPostgres(std::string storage_path, int port) : port_(port) {
  bin_dir_ = find_postgres_bin_dir();
  root_ = fs::absolute(fs::path(storage_path) / "pg").lexically_normal().string();
  data_dir_ = root_ + "/data";
  log_file_ = root_ + "/postgresql.log";
  socket_dir_ = root_ + "/run";
  // Unix socket paths are limited to 107 bytes; a deep storage path would not fit.
  if (socket_dir_.size() + 20 > 100) {
    std::hash<std::string> h;
    std::ostringstream s;
    s << "/tmp/firstread-pg-" << std::hex << h(root_);
    socket_dir_ = s.str();
  }
  if (geteuid() == 0) {
    // PostgreSQL refuses to run as root: use Debian's postgres account.
    struct passwd* pw = getpwnam("postgres");
    if (!pw)
      throw DatabaseError(
          "embedded PostgreSQL: running as root but there is no 'postgres' user to run the cluster as "
          "(install Debian's postgresql package)");
    run_uid_ = static_cast<int>(pw->pw_uid);
    run_gid_ = static_cast<int>(pw->pw_gid);
  }
}

EmbeddedPostgres::~EmbeddedPostgres() {
  try {
    stop();
  } catch (const std::exception& e) {
    spdlog::error("embedded PostgreSQL: stop failed: {}", e.what());
  }
}

int EmbeddedPostgres::run_tool(const std::string& tool, const std::vector<std::string>& args,
                               std::string* output) const {
  std::string path = bin_dir_ + "/" + tool;
  int pipefd[2];
  if (pipe(pipefd) != 0) throw DatabaseError("embedded PostgreSQL: pipe() failed");
  pid_t pid = fork();
  if (pid < 0) throw DatabaseError("embedded PostgreSQL: fork() failed");
  if (pid == 0) {
    dup2(pipefd[1], STDOUT_FILENO);
    dup2(pipefd[1], STDERR_FILENO);
    close(pipefd[0]);
    close(pipefd[1]);
    int devnull = open("/dev/null", O_RDONLY);
    if (devnull >= 0) dup2(devnull, STDIN_FILENO);
    // Close every other inherited descriptor: the server must not keep our
    // DICOM or HTTP listening sockets open after we exit.
    for (int fd = 3; fd < 1024; ++fd) close(fd);
    if (run_uid_ >= 0) {
      if (setgroups(0, nullptr) != 0 || setgid(run_gid_) != 0 || setuid(run_uid_) != 0) _exit(126);
    }
    std::vector<char*> argv;
    argv.push_back(const_cast<char*>(path.c_str()));
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    setenv("LC_ALL", "C", 1);
    execv(path.c_str(), argv.data());
    _exit(127);
  }
  close(pipefd[1]);
  std::string out;
  std::array<char, 4096> buf{};
  ssize_t n;
  while ((n = read(pipefd[0], buf.data(), buf.size())) > 0) out.append(buf.data(), static_cast<size_t>(n));
  close(pipefd[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (output) *output = out;
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return 128;
}

bool EmbeddedPostgres::running() const {
  if (!fs::exists(data_dir_ + "/PG_VERSION")) return false;
  return run_tool("pg_ctl", {"status", "-D", data_dir_}, nullptr) == 0;
}

void EmbeddedPostgres::start() {
  std::error_code ec;
  fs::create_directories(root_, ec);
  if (ec) throw DatabaseError("embedded PostgreSQL: cannot create " + root_ + ": " + ec.message());
  fs::create_directories(socket_dir_, ec);
  if (ec) throw DatabaseError("embedded PostgreSQL: cannot create " + socket_dir_ + ": " + ec.message());
  chmod(socket_dir_.c_str(), 0700);
  chmod(root_.c_str(), 0700);
  if (run_uid_ >= 0) {
    if (chown(root_.c_str(), run_uid_, run_gid_) != 0 || chown(socket_dir_.c_str(), run_uid_, run_gid_) != 0)
      throw DatabaseError("embedded PostgreSQL: cannot give " + root_ + " to user postgres");
    // The postgres account must be able to reach the data directory.
    std::string probe_out;
    int rc = run_tool("pg_ctl", {"--version"}, &probe_out);
    if (rc != 0)
      throw DatabaseError("embedded PostgreSQL: cannot run " + bin_dir_ + "/pg_ctl as user postgres: " +
                          probe_out);
    pid_t pid = fork();
    if (pid == 0) {
      if (setgid(run_gid_) != 0 || setuid(run_uid_) != 0) _exit(2);
      _exit(access(root_.c_str(), R_OK | W_OK | X_OK) == 0 ? 0 : 1);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
      throw DatabaseError("embedded PostgreSQL: user postgres cannot reach " + root_ +
                          " (a parent directory is not searchable by others: chmod o+x it, or set "
                          "database.url)");
  }

  if (!fs::exists(data_dir_ + "/PG_VERSION")) {
    spdlog::info("embedded PostgreSQL: creating cluster in {}", data_dir_);
    fs::remove_all(data_dir_, ec);  // a half-made cluster from an interrupted initdb
    std::string out;
    int rc = run_tool("initdb", {"-D", data_dir_, "-U", "firstread", "--auth=trust", "--encoding=UTF8",
                                 "--locale=C", "--no-instructions"},
                      &out);
    if (rc != 0) throw DatabaseError("embedded PostgreSQL: initdb failed: " + out);
    std::ofstream conf(data_dir_ + "/postgresql.auto.conf", std::ios::app);
    conf << "# written by firstread: Unix socket only, never a TCP address\n"
         << "listen_addresses = ''\n"
         << "unix_socket_permissions = 0700\n"
         << "fsync = on\nsynchronous_commit = on\nfull_page_writes = on\n"
         << "max_connections = 200\n";
  }

  if (running()) {
    spdlog::info("embedded PostgreSQL: reusing the running cluster in {}", data_dir_);
  } else {
    std::string out;
    std::string opts = "-c listen_addresses='' -c unix_socket_directories='" + socket_dir_ +
                       "' -p " + std::to_string(port_);
    int rc = run_tool("pg_ctl", {"start", "-w", "-t", "120", "-D", data_dir_, "-l", log_file_, "-o", opts}, &out);
    if (rc != 0)
      throw DatabaseError("embedded PostgreSQL: pg_ctl start failed: " + out + "\nlog tail:\n" +
                          tail_of_file(log_file_, 2000));
    started_by_us_ = true;
    spdlog::info("embedded PostgreSQL: started (socket {}/.s.PGSQL.{})", socket_dir_, port_);
  }

  // Create the firstread database on first start.
  try {
    pqxx::connection admin("host=" + socket_dir_ + " port=" + std::to_string(port_) +
                           " user=firstread dbname=postgres");
    pqxx::nontransaction n(admin);
    auto r = n.exec("SELECT 1 FROM pg_database WHERE datname = 'firstread'");
    if (r.empty()) n.exec0("CREATE DATABASE firstread");
  } catch (const std::exception& e) {
    throw DatabaseError(std::string("embedded PostgreSQL: cannot prepare database firstread: ") + e.what());
  }
}

void EmbeddedPostgres::stop() {
  if (!started_by_us_) return;
  stop_any();
  started_by_us_ = false;
}

void EmbeddedPostgres::stop_any() {
  if (!running()) return;
  std::string out;
  int rc = run_tool("pg_ctl", {"stop", "-w", "-m", "fast", "-D", data_dir_}, &out);
  if (rc != 0) throw DatabaseError("embedded PostgreSQL: pg_ctl stop failed: " + out);
  spdlog::info("embedded PostgreSQL: stopped");
}

std::string EmbeddedPostgres::conninfo() const {
  return "host=" + socket_dir_ + " port=" + std::to_string(port_) + " user=firstread dbname=firstread";
}

}  // namespace firstread::db
