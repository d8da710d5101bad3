#include "storage/file_storage.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

using firstread::storage::FileStorage;
using firstread::storage::StorageError;
namespace fs = std::filesystem;

namespace {
std::string temp_root() {
  std::string t = "/tmp/firstread-storage-XXXXXX";
  return mkdtemp(t.data());
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

TEST(FileStorage, StaleTemporariesAreRemoved) {
  FileStorage s(temp_root());
  std::ofstream(s.root() + "/tmp/123-1-1.part") << "x";
  EXPECT_EQ(s.remove_stale_temporaries(), 1);
  EXPECT_GT(s.free_bytes(), 0u);
}
