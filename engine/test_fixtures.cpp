#include "engine/test_fixtures.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <stdexcept>

#include "engine/common.h"

#ifndef FIRSTREAD_REF_PYTHON
#define FIRSTREAD_REF_PYTHON "/usr/bin/python3"
#endif

namespace firstread::engine::testing_support {

bool run_command(const std::string& cmd, std::string* output) {
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return false;
  char buf[4096];
  std::string out;
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int rc = ::pclose(p);
  if (output) *output = out;
  return rc == 0;
}

static std::string stamp_of(const std::string& script) {
  struct stat st;
  if (::stat(script.c_str(), &st) != 0) throw std::runtime_error("reference script missing: " + script);
  return std::to_string(st.st_size) + ":" + std::to_string(st.st_mtime) + "\n";
}

// Runs `cmd` under the lock of `root` unless `stamp_path` already says `want`.
static void generate_once(const std::string& root, const std::string& stamp_path, const std::string& want,
                          const std::string& cmd, const std::string& what) {
  int lock = ::open((root + "/.lock").c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0644);
  if (lock < 0) throw std::runtime_error("cannot create fixture lock in " + root);
  ::flock(lock, LOCK_EX);
  std::string have;
  try {
    have = read_text_file(stamp_path);
  } catch (...) {
  }
  if (have != want) {
    std::string out;
    if (!run_command(cmd, &out)) {
      ::flock(lock, LOCK_UN);
      ::close(lock);
      throw std::runtime_error(what + " generation failed: " + cmd + "\n" + out);
    }
    std::ofstream(stamp_path) << want;
  }
  ::flock(lock, LOCK_UN);
  ::close(lock);
}

std::string fixture_root() {
  const std::string root = FIRSTREAD_FIXTURE_DIR;
  const std::string script = std::string(FIRSTREAD_REF_SCRIPT_DIR) + "/internvl_ref.py";
  ::mkdir(root.c_str(), 0755);
  generate_once(root, root + "/stamp", stamp_of(script),
                std::string(FIRSTREAD_REF_PYTHON) + " " + script + " " + root + " && " + FIRSTREAD_REF_PYTHON + " " +
                    script + " " + root + "/bf16 --configs v12 --dtype bf16",
                "reference");
  return root;
}

std::string seed_replica_dir() {
  const std::string root = std::string(FIRSTREAD_FIXTURE_DIR) + "-seed";
  const std::string dir = std::string(FIRSTREAD_REF_SCRIPT_DIR);
  ::mkdir(root.c_str(), 0755);
  const std::string py = FIRSTREAD_REF_PYTHON;
  generate_once(root, root + "/stamp", stamp_of(dir + "/internvl_ref.py") + stamp_of(dir + "/shard.py"),
                "rm -rf '" + root + "/seed' && " + py + " " + dir + "/internvl_ref.py " + root +
                    " --configs seed --dtype bf16 --new-tokens 8 && " + py + " " + dir + "/shard.py " + root + "/seed 5",
                "seed replica");
  return root + "/seed";
}

std::string vit_classifier_fixture(const std::string& name, const std::string& args) {
  const std::string root = std::string(FIRSTREAD_FIXTURE_DIR) + "-vit", dir = root + "/" + name;
  const std::string script = std::string(FIRSTREAD_REF_SCRIPT_DIR) + "/vit_classifier_ref.py";
  ::mkdir(root.c_str(), 0755);
  generate_once(root, dir + ".stamp", stamp_of(script) + args + "\n",
                "rm -rf '" + dir + "' && " + std::string(FIRSTREAD_REF_PYTHON) + " " + script + " make '" + dir + "' " + args,
                "ViT classifier reference");
  return dir;
}

std::vector<float> read_f32(const std::string& path) {
  std::string s = read_text_file(path);
  std::vector<float> v(s.size() / 4);
  std::memcpy(v.data(), s.data(), v.size() * 4);
  return v;
}

}  // namespace firstread::engine::testing_support
