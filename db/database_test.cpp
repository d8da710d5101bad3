#include <gtest/gtest.h>

#include <set>

#include "db/database.h"
#include "db/instance_index.h"
#include "db/test_cluster.h"

using firstread::db::InstanceIndex;
using firstread::db::InstanceRecord;
using firstread::db::testing::TestCluster;

namespace {

InstanceRecord sample(const std::string& sop, const std::string& study = "1.2.3") {
  InstanceRecord r;
  r.sop_instance_uid = sop;
  r.series_instance_uid = study + ".1";
  r.study_uid = study;
  r.sop_class_uid = "1.2.840.10008.5.1.4.1.1.2";
  r.transfer_syntax_uid = "1.2.840.10008.1.2.1";
  r.modality = "CT";
  r.rows = 512;
  r.columns = 512;
  r.frames = 1;
  r.file_path = "instances/" + study + "/" + sop + ".dcm";
  r.file_size = 1000;
  r.calling_ae = "STORESCU";
  r.patient_id = "P1";
  r.patient_name = "Doe^Jane";
  return r;
}

class DatabaseTest : public ::testing::Test {
 protected:
  void SetUp() override { TestCluster::get().truncate_all(); }
  firstread::db::ConnectionPool& pool() { return TestCluster::get().pool(); }
};

}  // namespace

TEST_F(DatabaseTest, MigrationsAreAppliedOnceAndIdempotent) {
  auto lease = pool().acquire();
  EXPECT_EQ(firstread::db::schema_version(*lease), firstread::db::migrations().back().version);
  EXPECT_EQ(firstread::db::migrate(*lease), 0);  // already applied
}

TEST_F(DatabaseTest, ApiViewsHaveTheDocumentedColumns) {
  auto cols = [&](const std::string& view) {
    return pool().transact([&](pqxx::work& txn) {
      std::set<std::string> out;
      for (auto row : txn.exec_params(
               "SELECT column_name FROM information_schema.columns WHERE table_schema='api' AND table_name=$1",
               view))
        out.insert(row[0].c_str());
      return out;
    });
  };
  for (const char* c : {"study_uid", "patient_id", "patient_name", "accession_number", "study_date", "modalities",
                        "instance_count", "calling_ae", "first_received_at", "last_received_at", "state"})
    EXPECT_TRUE(cols("studies").count(c)) << "api.studies lacks " << c;
  for (const char* c : {"sop_instance_uid", "series_instance_uid", "study_uid", "sop_class_uid",
                        "transfer_syntax_uid", "modality", "rows", "columns", "frames", "file_path", "file_size",
                        "received_at"})
    EXPECT_TRUE(cols("instances").count(c)) << "api.instances lacks " << c;
  for (const char* c : {"job_id", "study_uid", "route", "model", "state", "attempts", "error", "created_at",
                        "started_at", "finished_at"})
    EXPECT_TRUE(cols("jobs").count(c)) << "api.jobs lacks " << c;
}

TEST_F(DatabaseTest, RecordingAnInstanceShowsTheStudyReceiving) {
  InstanceIndex index(pool());
  EXPECT_TRUE(index.record(sample("1.2.3.4")));
  EXPECT_TRUE(index.record(sample("1.2.3.5")));
  auto row = pool().transact([](pqxx::work& txn) {
    return txn.exec1("SELECT instance_count, modalities::text, state, patient_name FROM api.studies");
  });
  EXPECT_EQ(row[0].as<int>(), 2);
  EXPECT_EQ(std::string(row[1].c_str()), "{CT}");
  EXPECT_EQ(std::string(row[2].c_str()), "receiving");
  EXPECT_EQ(std::string(row[3].c_str()), "Doe^Jane");
}

TEST_F(DatabaseTest, SameSopInstanceTwiceIsOneRow) {
  InstanceIndex index(pool());
  EXPECT_TRUE(index.record(sample("1.2.3.4")));
  EXPECT_FALSE(index.record(sample("1.2.3.4")));
  auto n = pool().transact([](pqxx::work& txn) { return txn.exec1("SELECT count(*) FROM api.instances")[0].as<int>(); });
  EXPECT_EQ(n, 1);
}

TEST_F(DatabaseTest, PoolSurvivesAServerSideDisconnect) {
  // Kill every other backend, as a database restart would; the next
  // transaction must reconnect instead of failing the C-STORE.
  {
    auto lease = pool().acquire();
    pqxx::nontransaction n(*lease);
    n.exec("SELECT 1");
  }
  {
    pqxx::connection admin(TestCluster::get().conninfo());
    pqxx::nontransaction n(admin);
    n.exec("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND datname = 'firstread'");
  }
  InstanceIndex index(pool());
  EXPECT_TRUE(index.record(sample("1.2.3.9")));
}
