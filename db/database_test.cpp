#include <gtest/gtest.h>

#include <chrono>
#include <future>
#include <iostream>
#include <mutex>
#include <optional>
#include <map>
#include <set>
#include <thread>

#include "db/database.h"
#include "db/instance_index.h"
#include "db/jobs.h"
#include "db/studies.h"
#include "db/tallies.h"
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

TEST_F(DatabaseTest, MigrationVersionsAreUniqueAndIncreasing) {
  int last = 0;
  for (const auto& m : firstread::db::migrations()) {
    EXPECT_GT(m.version, last) << m.name << " follows a migration with the same or a higher version";
    last = m.version;
  }
}

// A database migrated by a build whose migration N was another file (two
// branches each adding one numbered N) is refused, naming both, instead of
// silently never running this build's migration N.
TEST_F(DatabaseTest, MigrateRefusesADatabaseWhoseMigrationOfTheSameVersionDiffers) {
  auto lease = pool().acquire();
  const auto& last = firstread::db::migrations().back();
  auto rename = [&](const std::string& name) {
    pqxx::work txn(*lease);
    txn.exec_params0("UPDATE firstread.schema_migrations SET name = $1 WHERE version = $2", name, last.version);
    txn.commit();
  };
  rename("0099_other_branch");
  std::string error;
  try {
    firstread::db::migrate(*lease);
  } catch (const std::exception& e) {
    error = e.what();
  }
  rename(last.name);
  EXPECT_NE(error.find("0099_other_branch"), std::string::npos) << error;
  EXPECT_NE(error.find(last.name), std::string::npos) << error;
  EXPECT_EQ(firstread::db::migrate(*lease), 0);
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

TEST_F(DatabaseTest, GroupCommitRecordsConcurrentRowsInFewerTransactionsAndARowFailsAlone) {
  InstanceIndex index(pool());
  ASSERT_TRUE(index.record(sample("1.2.9.1", "1.2.9")));  // already stored: a resend below
  std::map<std::string, std::future<firstread::db::GroupCommit::Committed>> results;
  {
    firstread::db::GroupCommit committer(index);
    // Four "associations" at once, two studies, 40 rows each; one row's patient
    // name is not valid UTF-8, which PostgreSQL refuses.
    std::vector<std::thread> senders;
    std::mutex mu;
    for (int a = 0; a < 4; ++a)
      senders.emplace_back([&, a] {
        for (int i = 0; i < 40; ++i) {
          const std::string study = a % 2 ? "1.2.9" : "1.2.8";
          InstanceRecord r = sample(study + "." + std::to_string(a) + "." + std::to_string(i), study);
          if (a == 3 && i == 17) r.patient_name = "M\xfcller";
          auto f = committer.submit(r);
          std::lock_guard<std::mutex> lock(mu);
          results.emplace(r.sop_instance_uid, std::move(f));
        }
      });
    InstanceRecord resend = sample("1.2.9.1", "1.2.9");
    resend.file_size = 2000;
    auto again = committer.submit(resend);
    for (auto& t : senders) t.join();
    EXPECT_FALSE(again.get().is_new) << "a resend is not a new instance";
    int failed = 0;
    size_t largest_group = 0;
    for (auto& [sop, f] : results) {
      try {
        const auto committed = f.get();
        EXPECT_TRUE(committed.is_new) << sop;
        largest_group = std::max(largest_group, committed.group_rows);
      } catch (const std::exception& e) {
        ++failed;
        EXPECT_EQ(sop, "1.2.9.3.17") << e.what();
      }
    }
    EXPECT_EQ(failed, 1);
    EXPECT_EQ(committer.rows(), 161u);
    EXPECT_LT(committer.transactions(), committer.rows()) << "no two rows ever shared a transaction";
    EXPECT_GE(largest_group, 2u);
    std::cout << committer.rows() << " rows in " << committer.transactions() << " group transactions\n";
  }
  auto counts = pool().transact([](pqxx::work& txn) {
    return txn.exec("SELECT study_uid, instance_count FROM api.studies ORDER BY study_uid");
  });
  ASSERT_EQ(counts.size(), 2u);
  EXPECT_EQ(counts[0][1].as<int>(), 80);       // 1.2.8
  EXPECT_EQ(counts[1][1].as<int>(), 1 + 79);   // 1.2.9: the first row, 79 new (one refused)
  auto size = pool().transact([](pqxx::work& txn) {
    return txn.exec1("SELECT file_size FROM api.instances WHERE sop_instance_uid = '1.2.9.1'")[0].as<long>();
  });
  EXPECT_EQ(size, 2000) << "the resend refreshed its row";
}

// The committer sends a group's rows as one array per column: every value
// must arrive as sent, whatever characters it holds, and an empty attribute
// (or an absent number) must be NULL as in InstanceIndex::record.
TEST_F(DatabaseTest, GroupCommitKeepsEveryValueAsSent) {
  InstanceIndex index(pool());
  struct Sent {
    std::string sop, study, patient_name, patient_id, body_part;
  };
  const std::vector<Sent> sent = {
      {"1.2.6.1", "1.2.6", "O\"Brien^Pat", "NULL", ""},
      {"1.2.6.2", "1.2.6", "", "", "HEAD\\NECK"},
      {"1.2.5.1", "1.2.5", "M\xc3\xbcller^J\xc3\xbcrgen=\xe7\x8e\x8b^\xe5\xb0\x8f\xe6\x98\x8e", "{1,2}", "CHEST, ABDOMEN"},
      {"1.2.5.2", "1.2.5", "Back\\slash^\"Q\"", " spaced ", "\"\""},
  };
  std::vector<std::future<firstread::db::GroupCommit::Committed>> results;
  size_t largest_group = 0;
  {
    firstread::db::GroupCommit committer(index);
    // Submitted before any is awaited: all but the first wait for one group.
    for (const auto& v : sent) {
      InstanceRecord r = sample(v.sop, v.study);
      r.patient_name = v.patient_name;
      r.patient_id = v.patient_id;
      r.body_part = v.body_part;
      r.series_number = v.sop == "1.2.6.2" ? std::optional<int>() : std::optional<int>(7);
      r.instance_number = std::nullopt;
      r.file_size = 123456789012LL;
      results.push_back(committer.submit(r));
    }
    for (auto& f : results) {
      const auto committed = f.get();
      EXPECT_TRUE(committed.is_new);
      largest_group = std::max(largest_group, committed.group_rows);
    }
  }
  std::cout << "largest group: " << largest_group << " rows\n";
  for (const auto& v : sent) {
    SCOPED_TRACE(v.sop);
    pool().transact([&](pqxx::work& t) {
      const auto row = t.exec_params1(
          "SELECT i.body_part, i.series_number, i.instance_number, i.file_size, i.rows, i.file_path,"
          " s.patient_name, s.patient_id FROM firstread.instances i JOIN firstread.studies s USING (study_uid)"
          " WHERE i.sop_instance_uid = $1",
          v.sop);
      if (v.body_part.empty())
        EXPECT_TRUE(row[0].is_null());
      else
        EXPECT_EQ(std::string(row[0].c_str()), v.body_part);
      if (v.sop == "1.2.6.2")
        EXPECT_TRUE(row[1].is_null());
      else
        EXPECT_EQ(row[1].as<int>(), 7);
      EXPECT_TRUE(row[2].is_null());
      EXPECT_EQ(row[3].as<long long>(), 123456789012LL);
      EXPECT_EQ(row[4].as<int>(), 512);
      EXPECT_EQ(std::string(row[5].c_str()), "instances/" + v.study + "/" + v.sop + ".dcm");
      // The study keeps its first instance's patient attributes (the later ones fill in only what is missing).
      const Sent& first = v.study == "1.2.6" ? sent[0] : sent[2];
      EXPECT_EQ(std::string(row[6].c_str()), first.patient_name);
      if (first.patient_id.empty())
        EXPECT_TRUE(row[7].is_null());
      else
        EXPECT_EQ(std::string(row[7].c_str()), first.patient_id);
    });
  }
}

// A group's rows move their studies once per group (migration 0012): what a
// user reads afterwards (counts, modalities, patient attributes, the study
// receiving again, the instance tallies) is what one recording per row gives.
TEST_F(DatabaseTest, GroupCommitOfSeveralStudiesKeepsEveryStudySummaryRight) {
  InstanceIndex index(pool());
  ASSERT_TRUE(index.record(sample("1.2.7.1", "1.2.7")));
  pool().transact([&](pqxx::work& txn) {
    firstread::db::Jobs::enqueue(txn, "1.2.7", 1, "default", "demo", 2);
    firstread::db::Studies::mark_assembled(txn, "1.2.7", 1, 1);
  });
  const auto before = pool().transact([](pqxx::work& txn) {
    return txn.exec1("SELECT assembly_pending, last_received_at::text FROM firstread.studies WHERE study_uid = '1.2.7'");
  });
  ASSERT_FALSE(before[0].as<bool>()) << "assembled: no longer receiving";
  std::this_thread::sleep_for(std::chrono::milliseconds(20));

  std::vector<InstanceRecord> sent;
  for (int i = 0; i < 6; ++i) {
    InstanceRecord r = sample("1.2.10." + std::to_string(i), "1.2.10");
    r.modality = i % 3 == 0 ? "MR" : (i % 3 == 1 ? "CT" : "");
    if (i == 0) r.patient_id = "";  // the study takes its patient ID from the next row that has one
    if (i == 1) r.patient_id = "P10";
    r.file_size = 100 + i;
    sent.push_back(r);
  }
  for (int i = 0; i < 3; ++i) {
    InstanceRecord r = sample("1.2.11." + std::to_string(i), "1.2.11");
    r.modality = "US";
    r.file_size = 1000;
    sent.push_back(r);
  }
  InstanceRecord late = sample("1.2.7.2", "1.2.7");  // a late instance of the assembled study
  late.modality = "SR";
  sent.push_back(late);
  // A resend of a row queued before it: submitted while the committer is still
  // busy with the first row, it usually shares a group with its first copy (the
  // row-by-row path); either way it must end as the row's second version.
  InstanceRecord again = sample("1.2.10.3", "1.2.10");
  again.file_size = 5000;
  again.modality = "MR";

  std::vector<std::future<firstread::db::GroupCommit::Committed>> results;
  size_t largest_group = 0;
  {
    firstread::db::GroupCommit committer(index);
    for (const auto& r : sent) results.push_back(committer.submit(r));
    auto resend = committer.submit(again);
    for (auto& f : results) {
      const auto c = f.get();
      EXPECT_TRUE(c.is_new);
      largest_group = std::max(largest_group, c.group_rows);
    }
    EXPECT_FALSE(resend.get().is_new) << "the second copy refreshes the first";
    // Ten rows more, all at once: a group without a duplicate (the set-wise path).
    results.clear();
    for (int i = 6; i < 16; ++i) {
      InstanceRecord r = sample("1.2.10." + std::to_string(i), "1.2.10");
      r.modality = "PT";
      r.file_size = 10;
      results.push_back(committer.submit(r));
    }
    for (auto& f : results) {
      const auto c = f.get();
      EXPECT_TRUE(c.is_new);
      largest_group = std::max(largest_group, c.group_rows);
    }
  }
  EXPECT_GE(largest_group, 2u) << "the rows never shared a transaction";
  pool().transact([&](pqxx::work& txn) {
    const auto rows = txn.exec_params(
        "SELECT study_uid, instance_count, modalities::text, patient_id, assembly_pending,"
        " last_received_at > $1::timestamptz FROM firstread.studies ORDER BY study_uid",
        std::string(before[1].c_str()));
    ASSERT_EQ(rows.size(), 3u);
    EXPECT_EQ(std::string(rows[0][0].c_str()), "1.2.10");
    EXPECT_EQ(rows[0][1].as<int>(), 16);
    EXPECT_EQ(std::string(rows[0][2].c_str()), "{CT,MR,PT}");
    EXPECT_EQ(std::string(rows[0][3].c_str()), "P10");
    EXPECT_EQ(std::string(rows[1][0].c_str()), "1.2.11");
    EXPECT_EQ(rows[1][1].as<int>(), 3);
    EXPECT_EQ(std::string(rows[1][2].c_str()), "{US}");
    EXPECT_EQ(std::string(rows[2][0].c_str()), "1.2.7");
    EXPECT_EQ(rows[2][1].as<int>(), 2);
    EXPECT_EQ(std::string(rows[2][2].c_str()), "{CT,SR}");
    EXPECT_TRUE(rows[2][4].as<bool>()) << "a late instance makes its assembled study receive again";
    EXPECT_TRUE(rows[2][5].as<bool>()) << "and moves its last reception";
    const auto size = txn.exec1("SELECT file_size FROM firstread.instances WHERE sop_instance_uid = '1.2.10.3'");
    EXPECT_EQ(size[0].as<long long>(), 5000) << "the resend's row";
  });
  firstread::db::Tallies tallies(pool());
  int64_t instances = 0, bytes = 0;
  for (const auto& t : tallies.read())
    if (t.name == "instances") instances = t.n, bytes = t.amount;
  EXPECT_EQ(instances, 1 + 6 + 3 + 1 + 10);
  EXPECT_EQ(bytes, 1000 + (100 + 101 + 102 + 5000 + 104 + 105) + 3000 + 1000 + 100);
}

// The committer's transactions do not wait for their WAL flush: it keeps the
// rows until the flush position read on its own session passes them, and
// records them again when that session breaks. Where the server kept them
// (here: only the session was ended) that is a refresh, counted once.
TEST_F(DatabaseTest, GroupCommitRecordsAgainWhatABrokenSessionLeftUnconfirmed) {
  InstanceIndex index(pool());
  firstread::db::GroupCommit::Options options;
  options.confirm_interval = std::chrono::hours(1);  // confirmed only by the next group's statement
  firstread::db::GroupCommit committer(index, options);
  for (int i = 0; i < 10; ++i)
    ASSERT_TRUE(committer.submit(sample("1.2.7." + std::to_string(i), "1.2.7")).get().is_new) << i;
  // The last row's flush is not known yet: no statement has read the flush position since its commit.
  EXPECT_GE(committer.unconfirmed(), 1u);
  // Visible to every other session although not known to be flushed.
  EXPECT_EQ(pool().transact([](pqxx::work& t) {
              return t.exec1("SELECT instance_count FROM api.studies WHERE study_uid = '1.2.7'")[0].as<int>();
            }),
            10);
  {
    pqxx::connection admin(TestCluster::get().conninfo());
    pqxx::nontransaction n(admin);
    auto ended = n.exec(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'firstread instance committer'");
    ASSERT_EQ(ended.size(), 1u) << "the committer has one session of its own";
  }
  const size_t left = committer.unconfirmed();
  // The next row finds the session ended: the rows it left go first, on a new session.
  EXPECT_TRUE(committer.submit(sample("1.2.7.10", "1.2.7")).get().is_new);
  EXPECT_EQ(committer.recorded_again(), left);
  auto study = pool().transact([](pqxx::work& t) {
    return t.exec1("SELECT instance_count, state FROM api.studies WHERE study_uid = '1.2.7'");
  });
  EXPECT_EQ(study[0].as<int>(), 11) << "a row recorded again was counted twice";
  EXPECT_EQ(std::string(study[1].c_str()), "receiving");
  EXPECT_EQ(pool().transact([](pqxx::work& t) {
              return t.exec1("SELECT count(*) FROM api.instances WHERE study_uid = '1.2.7'")[0].as<int>();
            }),
            11);
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

// The study row's summary and the tallies are kept on change (migration
// 0004): after every kind of change they equal what the rows themselves say.
TEST_F(DatabaseTest, StudySummaryAndTalliesFollowEveryChange) {
  InstanceIndex index(pool());
  auto expect_consistent = [&](const std::string& when) {
    SCOPED_TRACE(when);
    pool().transact([&](pqxx::work& txn) {
      auto drift = txn.exec(
          "SELECT s.study_uid FROM firstread.studies s WHERE (s.instance_count, s.modalities) IS DISTINCT FROM"
          " ((SELECT count(*)::int FROM firstread.instances i WHERE i.study_uid = s.study_uid),"
          "  firstread.study_modalities(s.study_uid))"
          " OR s.state <> firstread.study_state(s.study_uid, s.assembly_pending, s.generation)");
      EXPECT_EQ(drift.size(), 0u) << "first drifting study: " << (drift.empty() ? "" : drift[0][0].c_str());
    });
    firstread::db::Tallies tallies(pool());
    std::map<std::string, int64_t> kept;
    int64_t instances = 0, bytes = 0;
    for (const auto& t : tallies.read()) {
      if (t.name == "instances") instances = t.n, bytes = t.amount;
      if (t.name == "studies" && t.n != 0) kept[t.key] = t.n;
    }
    pool().transact([&](pqxx::work& txn) {
      auto totals = txn.exec1("SELECT count(*), coalesce(sum(file_size), 0) FROM api.instances");
      EXPECT_EQ(instances, totals[0].as<int64_t>());
      EXPECT_EQ(bytes, totals[1].as<int64_t>());
      std::map<std::string, int64_t> counted;
      for (const auto& row : txn.exec("SELECT state, count(*) FROM api.studies GROUP BY state"))
        counted[row[0].c_str()] = row[1].as<int64_t>();
      EXPECT_EQ(kept, counted);
    });
  };
  index.record(sample("1.2.3.1"));
  InstanceRecord mr = sample("1.2.3.2");
  mr.modality = "MR";
  index.record(mr);
  index.record(sample("1.2.4.1", "1.2.4"));
  expect_consistent("three instances in two studies");
  mr.modality = "US";
  mr.file_size = 5000;
  index.record(mr);  // a resend that says another modality and size
  expect_consistent("a resend");
  index.forget("1.2.3.1");
  expect_consistent("an instance forgotten");
  auto row = pool().transact(
      [](pqxx::work& txn) { return txn.exec1("SELECT modalities::text, instance_count FROM api.studies WHERE study_uid = '1.2.3'"); });
  EXPECT_EQ(std::string(row[0].c_str()), "{US}");
  EXPECT_EQ(row[1].as<int>(), 1);

  // Assembly, claim, complete, fail, lease expiry, reprocess.
  firstread::db::Jobs jobs(pool());
  pool().transact([&](pqxx::work& txn) {
    for (const std::string study : {"1.2.3", "1.2.4"}) {
      firstread::db::Jobs::enqueue(txn, study, 1, "default", "demo", 2);
      firstread::db::Studies::mark_assembled(txn, study, 1, 1);
    }
  });
  expect_consistent("assembled");
  auto a = jobs.claim("w1", 1);
  auto b = jobs.claim("w2", 60);
  ASSERT_TRUE(a && b);
  expect_consistent("claimed");
  EXPECT_TRUE(jobs.complete(b->job_id, "w2"));
  expect_consistent("completed");
  std::this_thread::sleep_for(std::chrono::milliseconds(1300));
  EXPECT_EQ(jobs.expire_leases(0).size(), 1u);
  expect_consistent("lease expired");
  auto again = jobs.claim("w3", 60);
  ASSERT_TRUE(again);
  EXPECT_EQ(jobs.fail(again->job_id, "w3", "bad pixels", 0), "dead");
  expect_consistent("dead");
  EXPECT_TRUE(firstread::db::Studies(pool()).request_rerun(again->study_uid));
  expect_consistent("reprocess");
  TestCluster::get().truncate_all();
  expect_consistent("truncated");
}
