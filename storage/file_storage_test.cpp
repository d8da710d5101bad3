#include "storage/file_storage.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <algorithm>
#include <chrono>
#include <atomic>
#include <fstream>
#include <cstring>
#include <cerrno>
#include <stdexcept>
#include <thread>
#include <vector>
#include <unistd.h>

using firstread::storage::FileStorage;
using firstread::storage::StorageError;
namespace fs = std::filesystem;

namespace {
// Every test's storage root, removed when the test process exits (CTest runs
// each test in its own process), so runs leave nothing under /tmp.
struct TempRoots {
  std::vector<std::string> dirs;
  ~TempRoots() {
    std::error_code ignored;
    for (const auto& d : dirs) fs::remove_all(d, ignored);
  }
};
TempRoots g_temp_roots;

std::string temp_root() {
  std::string t = "/tmp/firstread-storage-XXXXXX";
  if (!mkdtemp(t.data())) throw std::runtime_error("mkdtemp " + t + ": " + std::strerror(errno));
  g_temp_roots.dirs.push_back(t);
  return t;
}
std::string read_all(const std::string& p) {
  std::ifstream in(p);
  return std::string(std::istreambuf_iterator<char>(in), {});
}
}  // namespace

TEST(FileStorage, WritesIntoUidLayoutAndLeavesNoTemporary) {
  FileStorage s(temp_root());
  const std::string rel = FileStorage::instance_path("1.2.3", "1.2.3.4", "1.2.3.4.5");
  EXPECT_EQ(rel, "instances/1.2.3/1.2.3.4/1.2.3.4.5.dcm");
  uint64_t size = s.write_durably(rel, [](const std::string& tmp) { std::ofstream(tmp) << "hello"; });
  EXPECT_EQ(size, 5u);
  EXPECT_EQ(read_all(s.absolute(rel)), "hello");
  EXPECT_TRUE(fs::is_empty(s.root() + "/tmp"));
  EXPECT_EQ(s.list_instance_files(), std::vector<std::string>{rel});
}

TEST(FileStorage, ReplacesExistingFileAtomically) {
  FileStorage s(temp_root());
  const std::string rel = FileStorage::instance_path("1.2", "1.3", "1.4");
  s.write_durably(rel, [](const std::string& tmp) { std::ofstream(tmp) << "first"; });
  s.write_durably(rel, [](const std::string& tmp) { std::ofstream(tmp) << "second"; });
  EXPECT_EQ(read_all(s.absolute(rel)), "second");
}

TEST(FileStorage, InvalidUidsNeverBecomePaths) {
  EXPECT_THROW(FileStorage::instance_path("../../etc", "1.2", "1.3"), StorageError);
  EXPECT_THROW(FileStorage::instance_path("1.2", "1.2/3", "1.3"), StorageError);
  EXPECT_THROW(FileStorage::instance_path("1.2", "1.2", std::string(65, '1')), StorageError);
  try {
    FileStorage::instance_path("1.2", "1.3", "abc");
    FAIL();
  } catch (const StorageError& e) {
    EXPECT_NE(std::string(e.what()).find("invalid SOP Instance UID 'abc'"), std::string::npos);
  }
}

TEST(FileStorage, FailedWriterLeavesNothingBehind) {
  FileStorage s(temp_root());
  const std::string rel = FileStorage::instance_path("1.2", "1.3", "1.5");
  EXPECT_THROW(s.write_durably(rel,
                               [](const std::string& tmp) {
                                 std::ofstream(tmp) << "half";
                                 throw std::runtime_error("disk full");
                               }),
               std::runtime_error);
  EXPECT_FALSE(fs::exists(s.absolute(rel)));
  EXPECT_TRUE(fs::is_empty(s.root() + "/tmp"));
}

TEST(FileStorage, OnlyTemporariesOfNodesThatAreGoneAreRemoved) {
  const std::string root = temp_root();
  FileStorage s(root);
  // A node that is still running: it holds the flock on its lock file.
  FileStorage live(root);
  const std::string live_tmp = live.root() + "/tmp/" + live.node_id() + ".0.part";
  std::ofstream(live_tmp) << "in flight";
  // A node that crashed: its lock file is there, nobody holds it.
  std::ofstream(s.root() + "/nodes/deadhost-7-1.lock") << "";
  std::ofstream(s.root() + "/tmp/deadhost-7-1.0.part") << "x";
  std::ofstream(s.root() + "/tmp/deadhost-7-1.1.part") << "y";
  // Our own temporary (a transfer of ours in flight).
  const std::string own_tmp = s.root() + "/tmp/" + s.node_id() + ".5.part";
  std::ofstream(own_tmp) << "mine";
  // Older naming without an owner: removed only once it is old.
  std::ofstream(s.root() + "/tmp/123-1-1.part") << "old";
  std::ofstream(s.root() + "/tmp/124-1-1.part") << "fresh";
  fs::last_write_time(s.root() + "/tmp/123-1-1.part", fs::file_time_type::clock::now() - std::chrono::hours(2));

  EXPECT_EQ(s.remove_stale_temporaries(600), 3);
  EXPECT_TRUE(fs::exists(live_tmp)) << "a live node's temporary was removed";
  EXPECT_TRUE(fs::exists(own_tmp));
  EXPECT_TRUE(fs::exists(s.root() + "/tmp/124-1-1.part"));
  EXPECT_FALSE(fs::exists(s.root() + "/tmp/deadhost-7-1.0.part"));
  EXPECT_FALSE(fs::exists(s.root() + "/nodes/deadhost-7-1.lock")) << "the gone node's lock file stays";
  EXPECT_TRUE(fs::exists(s.root() + "/nodes/" + live.node_id() + ".lock"));
  EXPECT_GT(s.free_bytes(), 0u);
}

TEST(FileStorage, TemporariesCarryTheNodeIdentity) {
  FileStorage s(temp_root());
  EXPECT_NE(s.node_id().find("-" + std::to_string(getpid()) + "-"), std::string::npos) << s.node_id();
  s.write_durably("instances/1/2/3.dcm", [&](const std::string& tmp) {
    EXPECT_EQ(fs::path(tmp).filename().string().rfind(s.node_id() + ".", 0), 0u) << tmp;
    std::ofstream(tmp) << "x";
  });
}

namespace {
// Every name under the storage root except the node's lock (what a crash would leave).
std::vector<std::string> names_under(const std::string& root) {
  std::vector<std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(root))
    if (e.is_regular_file() && e.path().parent_path().filename() != "nodes") out.push_back(e.path().string());
  return out;
}
}  // namespace

TEST(FileStorage, NewFileHasNoNameUntilLinkedAndIsCompleteAfterSync) {
  FileStorage s(temp_root());
  const std::string rel = FileStorage::instance_path("1.2", "1.2.3", "1.2.3.4");
  auto file = s.create_file();
  std::string expected;
  for (int i = 0; i < 40; ++i) {  // pieces of several sizes, some past the buffer
    const std::string piece(static_cast<size_t>(i) * 7001 + 3, static_cast<char>('a' + i % 26));
    file->write(piece.data(), piece.size());
    expected += piece;
  }
  EXPECT_EQ(file->size(), expected.size());
  EXPECT_TRUE(names_under(s.root()).empty()) << "an unlinked file is visible: " << names_under(s.root()).front();
  s.link(*file, rel);
  s.sync(*file);
  EXPECT_TRUE(file->named());
  EXPECT_FALSE(file->replaced());
  file.reset();
  EXPECT_EQ(read_all(s.absolute(rel)), expected);
  EXPECT_EQ(names_under(s.root()), std::vector<std::string>{s.absolute(rel)});
}

TEST(FileStorage, NewFileDroppedBeforeLinkLeavesNothing) {
  FileStorage s(temp_root());
  {
    auto file = s.create_file();
    file->write("half", 4);
    file->flush();
  }
  EXPECT_TRUE(names_under(s.root()).empty());
  EXPECT_TRUE(s.list_instance_files().empty());
}

TEST(FileStorage, NewFileReplacesAnExistingOneWholeAndUnlinkRemovesANewName) {
  FileStorage s(temp_root());
  const std::string rel = FileStorage::instance_path("1.2", "1.2.3", "1.2.3.5");
  s.write_durably(rel, [](const std::string& tmp) { std::ofstream(tmp) << "acknowledged earlier"; });
  auto again = s.create_file();
  again->write("sent again", 10);
  s.link(*again, rel);
  EXPECT_TRUE(again->replaced());
  s.sync(*again);
  again.reset();
  EXPECT_EQ(read_all(s.absolute(rel)), "sent again");
  EXPECT_TRUE(fs::is_empty(s.root() + "/tmp"));

  const std::string other = FileStorage::instance_path("1.2", "1.2.3", "1.2.3.6");
  auto refused = s.create_file();
  refused->write("x", 1);
  s.link(*refused, other);
  s.unlink_file(*refused);
  refused.reset();
  EXPECT_FALSE(fs::exists(s.absolute(other)));
  EXPECT_THROW(s.link(*s.create_file(), "../outside.dcm"), StorageError);
}

TEST(FileStorage, WalkYieldsPathsInByteOrder) {
  FileStorage s(temp_root());
  // "1.2" must come after "1.2.3" as a path prefix: '.' < '/'.
  for (const auto& rel : {"instances/1.2/1.1/9.dcm", "instances/1.2.3/1.1/1.dcm", "instances/1.2/1.1/10.dcm",
                          "instances/1.10/2/2.dcm"})
    s.write_durably(rel, [](const std::string& tmp) { std::ofstream(tmp) << "x"; });
  std::vector<std::string> walked = s.list_instance_files();
  std::vector<std::string> sorted = walked;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(walked.size(), 4u);
  EXPECT_EQ(walked, sorted);
}

TEST(FileStorage, ConcurrentPublishersInOneDirectoryShareItsFsync) {
  FileStorage s(temp_root());
  std::vector<std::thread> writers;
  std::atomic<int> failures{0};
  for (int t = 0; t < 8; ++t)
    writers.emplace_back([&, t] {
      for (int i = 0; i < 25; ++i) {
        const std::string rel = "instances/1.2/1.3/" + std::to_string(t * 100 + i) + ".dcm";
        try {
          s.write_durably(rel, [&](const std::string& tmp) { std::ofstream(tmp) << rel; });
        } catch (...) {
          ++failures;
        }
      }
    });
  for (auto& w : writers) w.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(s.list_instance_files().size(), 200u);
  EXPECT_EQ(read_all(s.absolute("instances/1.2/1.3/724.dcm")), "instances/1.2/1.3/724.dcm");
  EXPECT_TRUE(fs::is_empty(s.root() + "/tmp"));
}

namespace {
// The file system type util-linux's findmnt reports for the mount holding `path`.
std::string findmnt_fstype(const std::string& path) {
  std::string out;
  if (FILE* p = popen(("findmnt -n -o FSTYPE --target " + path).c_str(), "r")) {
    char buf[64];
    while (fgets(buf, sizeof buf, p)) out += buf;
    pclose(p);
  }
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out.substr(out.rfind('\n') + 1);  // mounts stacked on one point: the last is the one in use
}
}  // namespace

// One fsync per instance is enough only where the file system makes a new
// name durable with the file's own fsync (ext4, XFS); elsewhere, tmpfs here,
// the directory is fsynced too and a file is still complete under its name.
TEST(FileStorage, KnowsWhetherTheFileFsyncAloneMakesANewNameDurable) {
  for (const std::string base : {"/tmp", "/dev/shm"}) {
    std::string t = base + "/firstread-storage-XXXXXX";
    if (!mkdtemp(t.data())) continue;
    {
      FileStorage s(t);
      const std::string fstype = findmnt_fstype(t);
      ASSERT_FALSE(fstype.empty()) << t;
      EXPECT_EQ(s.file_system(), fstype) << t;
      EXPECT_EQ(s.names_durable_with_file(), fstype == "ext4" || fstype == "xfs") << t;
      const std::string rel = FileStorage::instance_path("1.2", "1.2.3", "1.2.3.7");
      auto file = s.create_file();
      const std::string data(300000, 'd');
      file->write(data.data(), data.size());
      s.link(*file, rel);
      s.sync(*file);
      file.reset();
      EXPECT_EQ(read_all(s.absolute(rel)), data) << t;
    }
    fs::remove_all(t);
  }
}
