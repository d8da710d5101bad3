#include "worklist/job_queue.h"

#include <gtest/gtest.h>

#include <atomic>
#include <set>
#include <thread>

#include "db/instance_index.h"
#include "db/test_cluster.h"
#include "worklist/study_assembler.h"

using firstread::db::testing::TestCluster;
using firstread::worklist::Job;
using firstread::worklist::JobQueue;
using firstread::worklist::QueuePolicy;

namespace {

class QueueTest : public ::testing::Test {
 protected:
  void SetUp() override {
    TestCluster::get().truncate_all();
    pool().transact([](pqxx::work& txn) {
      txn.exec0("INSERT INTO firstread.studies (study_uid, assembly_pending) VALUES ('1.2.3', false)");
    });
  }
  firstread::db::ConnectionPool& pool() { return TestCluster::get().pool(); }
  void enqueue(JobQueue& q, int n, int max_attempts = 3) {
    pool().transact([&](pqxx::work& txn) {
      for (int i = 0; i < n; ++i) q.enqueue(txn, "1.2.3", 1, "default", "demo", max_attempts);
    });
  }
  std::string job_state(int64_t id) {
    return pool().transact([&](pqxx::work& txn) {
      return std::string(txn.exec_params1("SELECT state FROM api.jobs WHERE job_id = $1", id)[0].c_str());
    });
  }
};

firstread::db::InstanceRecord instance(const std::string& study, const std::string& sop, const std::string& modality) {
  firstread::db::InstanceRecord r;
  r.sop_instance_uid = sop;
  r.series_instance_uid = study + ".1";
  r.study_uid = study;
  r.sop_class_uid = "1.2.840.10008.5.1.4.1.1.1";
  r.transfer_syntax_uid = "1.2.840.10008.1.2.1";
  r.modality = modality;
  r.file_path = "instances/" + sop;
  r.file_size = 1;
  r.calling_ae = "SCU";
  return r;
}

}  // namespace

TEST_F(QueueTest, TwoClaimersNeverGetTheSameJob) {
  JobQueue q(pool(), QueuePolicy{60, 0});
  enqueue(q, 60);
  std::mutex mu;
  std::multiset<int64_t> claimed;
  std::vector<std::thread> workers;
  for (int w = 0; w < 4; ++w) {
    workers.emplace_back([&, w] {
      const std::string owner = "worker-" + std::to_string(w);
      while (auto job = q.claim(owner)) {
        std::lock_guard<std::mutex> lock(mu);
        claimed.insert(job->job_id);
      }
    });
  }
  for (auto& t : workers) t.join();
  EXPECT_EQ(claimed.size(), 60u);
  EXPECT_EQ(std::set<int64_t>(claimed.begin(), claimed.end()).size(), 60u) << "a job was claimed twice";
}

TEST_F(QueueTest, ExpiredLeaseIsClaimedAgainAndOldOwnerLosesIt) {
  JobQueue q(pool(), QueuePolicy{1, 0});
  enqueue(q, 1);
  auto first = q.claim("dead-worker");
  ASSERT_TRUE(first);
  EXPECT_FALSE(q.claim("other")) << "a leased job must not be claimed";
  std::this_thread::sleep_for(std::chrono::milliseconds(1300));
  EXPECT_EQ(q.expire_leases(), 1);
  auto second = q.claim("live-worker");
  ASSERT_TRUE(second);
  EXPECT_EQ(second->job_id, first->job_id);
  EXPECT_EQ(second->attempts, 2);
  EXPECT_FALSE(q.heartbeat(first->job_id, "dead-worker"));
  EXPECT_FALSE(q.complete(first->job_id, "dead-worker"));
  EXPECT_TRUE(q.heartbeat(second->job_id, "live-worker"));
  EXPECT_TRUE(q.complete(second->job_id, "live-worker"));
  EXPECT_EQ(job_state(second->job_id), "done");
}

TEST_F(QueueTest, FailuresBackOffExponentiallyThenDie) {
  JobQueue q(pool(), QueuePolicy{60, 1.0});
  enqueue(q, 1, /*max_attempts=*/3);
  auto job = q.claim("w");
  ASSERT_TRUE(job);
  EXPECT_EQ(q.fail(job->job_id, "w", "model crashed"), "failed");
  EXPECT_FALSE(q.claim("w")) << "retry must wait for the backoff";
  // Backoff after attempt 1 is 1 s, after attempt 2 is 2 s.
  auto delay = [&] {
    return pool().transact([&](pqxx::work& txn) {
      return txn.exec_params1("SELECT extract(epoch FROM next_attempt_at - finished_at) FROM firstread.jobs WHERE job_id=$1",
                              job->job_id)[0].as<double>();
    });
  };
  EXPECT_NEAR(delay(), 1.0, 0.05);
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  job = q.claim("w");
  ASSERT_TRUE(job);
  EXPECT_EQ(job->attempts, 2);
  EXPECT_EQ(q.fail(job->job_id, "w", "model crashed again"), "failed");
  EXPECT_NEAR(delay(), 2.0, 0.05);
  std::this_thread::sleep_for(std::chrono::milliseconds(2100));
  job = q.claim("w");
  ASSERT_TRUE(job);
  EXPECT_EQ(job->attempts, 3);
  EXPECT_EQ(q.fail(job->job_id, "w", "bad pixel data"), "dead");
  auto row = pool().transact([&](pqxx::work& txn) {
    return txn.exec_params1("SELECT state, attempts, error FROM api.jobs WHERE job_id=$1", job->job_id);
  });
  EXPECT_EQ(std::string(row[0].c_str()), "dead");
  EXPECT_EQ(row[1].as<int>(), 3);
  EXPECT_EQ(std::string(row[2].c_str()), "bad pixel data");
  EXPECT_FALSE(q.claim("w"));
}

TEST_F(QueueTest, ExpiredLeaseOnLastAttemptIsDead) {
  JobQueue q(pool(), QueuePolicy{1, 0});
  enqueue(q, 1, /*max_attempts=*/1);
  auto job = q.claim("w");
  ASSERT_TRUE(job);
  std::this_thread::sleep_for(std::chrono::milliseconds(1300));
  EXPECT_EQ(q.expire_leases(), 1);
  EXPECT_EQ(job_state(job->job_id), "dead");
}

TEST_F(QueueTest, WaitingWorkerWakesOnNotify) {
  JobQueue q(pool(), QueuePolicy{60, 0});
  firstread::worklist::JobNotifications notes(TestCluster::get().conninfo());
  EXPECT_FALSE(notes.wait(std::chrono::milliseconds(100)));
  std::thread producer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    enqueue(q, 1);
  });
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_TRUE(notes.wait(std::chrono::seconds(10)));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
  producer.join();
}

TEST_F(QueueTest, QuietStudyBecomesOneJobPerMatchingRouteAndLateInstanceReruns) {
  TestCluster::get().truncate_all();
  firstread::config::Config config = firstread::config::default_config();
  config.worklist.stable_seconds = 1;
  config.routes.clear();
  firstread::config::Route any;
  any.name = "default";
  any.model = "demo";
  config.routes.push_back(any);
  firstread::config::Route cr;
  cr.name = "chest";
  cr.model = "demo";
  cr.match.modalities = {"CR"};
  config.routes.push_back(cr);
  JobQueue q(pool(), QueuePolicy{60, 0});
  firstread::worklist::StudyAssembler assembler(pool(), q, config);
  firstread::db::InstanceIndex index(pool());
  index.record(instance("1.9", "1.9.1.1", "CR"));
  index.record(instance("1.8", "1.8.1.1", "MR"));

  auto state = [&](const std::string& study) {
    return pool().transact([&](pqxx::work& txn) {
      return std::string(txn.exec_params1("SELECT state FROM api.studies WHERE study_uid=$1", study)[0].c_str());
    });
  };
  auto jobs = [&](const std::string& study) {
    return pool().transact([&](pqxx::work& txn) {
      std::multiset<std::string> routes;
      for (auto r : txn.exec_params("SELECT route FROM api.jobs WHERE study_uid=$1", study)) routes.insert(r[0].c_str());
      return routes;
    });
  };
  EXPECT_EQ(assembler.assemble_ready(), 0) << "study is not quiet yet";
  EXPECT_EQ(state("1.9"), "receiving");
  std::this_thread::sleep_for(std::chrono::milliseconds(1200));
  EXPECT_EQ(assembler.assemble_ready(), 2);
  EXPECT_EQ(state("1.9"), "queued");
  EXPECT_EQ(jobs("1.9"), (std::multiset<std::string>{"chest", "default"}));
  EXPECT_EQ(jobs("1.8"), (std::multiset<std::string>{"default"}));

  // Jobs finish: reported. Then a late instance: receiving, and after the
  // stable time a second set of jobs (a re-run), not a dropped instance.
  while (auto j = q.claim("w")) q.complete(j->job_id, "w");
  EXPECT_EQ(state("1.9"), "reported");
  index.record(instance("1.9", "1.9.1.2", "CR"));
  EXPECT_EQ(state("1.9"), "receiving");
  std::this_thread::sleep_for(std::chrono::milliseconds(1200));
  EXPECT_EQ(assembler.assemble_ready(), 1);
  EXPECT_EQ(state("1.9"), "queued");
  EXPECT_EQ(jobs("1.9").size(), 4u);
  // A resend of an instance already there is not a late instance.
  while (auto j = q.claim("w")) q.complete(j->job_id, "w");
  index.record(instance("1.9", "1.9.1.2", "CR"));
  EXPECT_EQ(state("1.9"), "reported");
}
