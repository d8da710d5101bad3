#include "tests/test_pki.h"

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <stdexcept>

namespace firstread::testing {
namespace {

void openssl(const std::string& dir, const std::string& args) {
  const std::string command = "cd '" + dir + "' && openssl " + args + " 2>&1";
  FILE* p = popen(command.c_str(), "r");
  if (!p) throw std::runtime_error("cannot run openssl");
  std::string output;
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) output.append(buf.data(), n);
  const int status = pclose(p);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    throw std::runtime_error("openssl " + args + " failed:\n" + output);
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  if (!out) throw std::runtime_error("cannot write " + path);
}

}  // namespace

TestPki::TestPki(const std::string& dir) : dir_(dir) {
  std::filesystem::create_directories(dir_ + "/issued");
  openssl(dir_, "req -x509 -newkey rsa:2048 -sha256 -nodes -keyout ca.key -out ca.pem -days 30 "
                "-subj '/O=firstread test/CN=firstread test CA'");
  openssl(dir_, "req -x509 -newkey rsa:2048 -sha256 -nodes -keyout other-ca.key -out other-ca.pem -days 30 "
                "-subj '/O=elsewhere/CN=some other CA'");
  ca_ = dir_ + "/ca.pem";
  other_ca_ = dir_ + "/other-ca.pem";
  // `openssl ca` is the one that takes an arbitrary validity period (-startdate/-enddate).
  for (const std::string which : {"ca", "other-ca"}) {
    write_file(dir_ + "/" + which + ".index", "");
    write_file(dir_ + "/" + which + ".cnf",
               "[ca]\ndefault_ca = test_ca\n"
               "[test_ca]\ndatabase = " + dir_ + "/" + which + ".index\nnew_certs_dir = " + dir_ +
                   "/issued\nserial = " + dir_ + "/" + which + ".serial\ndefault_md = sha256\n"
                   "policy = any\ncopy_extensions = copy\nunique_subject = no\ndefault_days = 30\n"
                   "[any]\ncommonName = supplied\norganizationName = optional\n");
  }
}

TestCert TestPki::issue(const std::string& name, const std::string& common_name, const std::string& san, bool expired,
                        bool untrusted) {
  const std::string signer = untrusted ? "other-ca" : "ca";
  char serial[16];
  std::snprintf(serial, sizeof serial, "%04X\n", 0x1000 + serial_++);
  write_file(dir_ + "/" + signer + ".serial", serial);
  std::string req = "req -new -newkey rsa:2048 -sha256 -nodes -keyout " + name + ".key -out " + name +
                    ".csr -subj '/O=firstread test/CN=" + common_name + "'";
  if (!san.empty()) req += " -addext 'subjectAltName=" + san + "'";
  openssl(dir_, req);
  // -preserveDN: the subject's RDNs in the request's order, not the policy's
  std::string sign = "ca -batch -notext -preserveDN -config " + signer + ".cnf -cert " + signer + ".pem -keyfile " +
                     signer + ".key -in " + name + ".csr -out " + name + ".pem";
  if (expired) sign += " -startdate 20200101000000Z -enddate 20200201000000Z";
  openssl(dir_, sign);
  return {dir_ + "/" + name + ".pem", dir_ + "/" + name + ".key", "CN=" + common_name + ",O=firstread test"};
}

}  // namespace firstread::testing
