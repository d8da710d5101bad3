// The case library's index: exact results against a brute-force scan, the
// switch to HNSW past flat_max (recall against the exact answer), and two
// "nodes" (two CaseLibrary objects on one database) that see the same
// neighbours, including cases one of them adds after start-up.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "db/cases.h"
#include "db/test_cluster.h"
#include "retrieval/case_index.h"

using namespace firstread;
using firstread::db::testing::TestCluster;

namespace {

std::vector<float> unit_vector(std::mt19937& rng, int dim) {
  std::normal_distribution<float> n;
  std::vector<float> v(static_cast<size_t>(dim));
  double norm = 0;
  for (float& x : v) {
    x = n(rng);
    norm += double(x) * x;
  }
  for (float& x : v) x = float(x / std::sqrt(norm));
  return v;
}

// Row numbers of the k largest inner products with q.
std::vector<size_t> brute_force(const std::vector<std::vector<float>>& data, const std::vector<float>& q, int k) {
  std::vector<std::pair<double, size_t>> s;
  for (size_t i = 0; i < data.size(); ++i) {
    double d = 0;
    for (size_t j = 0; j < q.size(); ++j) d += double(data[i][j]) * q[j];
    s.push_back({-d, i});
  }
  std::sort(s.begin(), s.end());
  std::vector<size_t> out;
  for (int i = 0; i < k; ++i) out.push_back(s[size_t(i)].second);
  return out;
}

}  // namespace

TEST(CaseIndex, FlatIsExact) {
  std::mt19937 rng(1);
  retrieval::IndexOptions o;
  o.flat_max = 1000;
  retrieval::CaseIndex index(o);
  std::vector<std::vector<float>> data;
  for (int i = 0; i < 500; ++i) {
    data.push_back(unit_vector(rng, 32));
    index.add(1000 + i, {"label" + std::to_string(i % 7)}, data.back().data(), 32);
  }
  EXPECT_FALSE(index.is_hnsw());
  for (int t = 0; t < 20; ++t) {
    const std::vector<float> q = unit_vector(rng, 32);
    const auto got = index.search(q.data(), 32, 10);
    const auto want = brute_force(data, q, 10);
    ASSERT_EQ(got.size(), 10u);
    for (int i = 0; i < 10; ++i) {
      EXPECT_EQ(got[size_t(i)].case_id, int64_t(1000 + want[size_t(i)]));
      EXPECT_EQ(got[size_t(i)].labels, std::vector<std::string>{"label" + std::to_string(want[size_t(i)] % 7)});
    }
  }
  // A stored case finds itself first, at similarity 1.
  const auto self = index.search(data[42].data(), 32, 3);
  EXPECT_EQ(self[0].case_id, 1042);
  EXPECT_NEAR(self[0].similarity, 1.0f, 1e-5);
  // Fewer cases than k: all of them.
  retrieval::CaseIndex small(o);
  small.add(7, {"a"}, data[0].data(), 32);
  EXPECT_EQ(small.search(data[1].data(), 32, 10).size(), 1u);
  EXPECT_THROW(small.add(8, {"b"}, data[0].data(), 16), std::invalid_argument);
  EXPECT_THROW(small.search(data[0].data(), 16, 10), std::invalid_argument);
}

TEST(CaseIndex, HnswBeyondFlatMaxKeepsRecall) {
  std::mt19937 rng(2);
  retrieval::IndexOptions o;
  o.flat_max = 300;
  retrieval::CaseIndex index(o);
  std::vector<std::vector<float>> data;
  for (int i = 0; i < 3000; ++i) {
    data.push_back(unit_vector(rng, 48));
    index.add(i + 1, {"x"}, data.back().data(), 48);
    if (i == 299) EXPECT_FALSE(index.is_hnsw());
  }
  EXPECT_TRUE(index.is_hnsw());
  int hits = 0, total = 0;
  for (int t = 0; t < 50; ++t) {
    const std::vector<float> q = unit_vector(rng, 48);
    const auto got = index.search(q.data(), 48, 10);
    const auto want = brute_force(data, q, 10);
    for (size_t w : want) {
      ++total;
      hits += std::any_of(got.begin(), got.end(), [&](const retrieval::Neighbour& n) { return n.case_id == int64_t(w + 1); });
    }
  }
  EXPECT_GE(double(hits) / total, 0.95) << hits << "/" << total;
}

TEST(CaseLibrary, TwoNodesSeeTheSameNeighboursAndFollowNewCases) {
  TestCluster& cluster = TestCluster::get();
  cluster.truncate_all();
  db::ConnectionPool& pool = cluster.pool();
  std::mt19937 rng(3);
  std::vector<db::NewCase> batch;
  for (int i = 0; i < 200; ++i) {
    db::NewCase c;
    c.specialist = "chest";
    c.specialist_version = "v1";
    c.source = "import";
    c.source_ref = "img" + std::to_string(i) + ".png";
    c.labels = {i % 3 == 0 ? "pneumonia" : "normal"};
    c.feature = unit_vector(rng, 24);
    batch.push_back(c);
  }
  const std::vector<int64_t> ids = db::Cases(pool).add(batch);
  ASSERT_EQ(ids.size(), 200u);

  retrieval::CaseLibrary node_a(pool, {}), node_b(pool, {});  // both rebuilt from the database
  const std::vector<float> q = unit_vector(rng, 24);
  const auto a = node_a.search("chest", q, 10), b = node_b.search("chest", q, 10);
  ASSERT_EQ(a.size(), 10u);
  ASSERT_EQ(b.size(), 10u);
  for (size_t i = 0; i < 10; ++i) EXPECT_EQ(a[i].case_id, b[i].case_id);
  EXPECT_EQ(node_a.size("chest"), 200u);
  EXPECT_TRUE(node_a.search("other", q, 10).empty());

  // A case added "by node A" (any writer of the table) is the nearest for both nodes at their next search.
  db::NewCase near = batch[0];
  near.source_ref = "new.png";
  near.labels = {"effusion"};
  near.feature = q;
  db::Cases(pool).add({near});
  const auto a2 = node_a.search("chest", q, 10), b2 = node_b.search("chest", q, 10);
  EXPECT_EQ(a2[0].labels, std::vector<std::string>{"effusion"});
  EXPECT_EQ(b2[0].case_id, a2[0].case_id);
  EXPECT_NEAR(b2[0].similarity, 1.0f, 1e-5);
  EXPECT_EQ(node_b.size("chest"), 201u);
}

TEST(Cases, NothingIsWrittenWhenOneCaseIsBad) {
  TestCluster& cluster = TestCluster::get();
  cluster.truncate_all();
  db::ConnectionPool& pool = cluster.pool();
  db::NewCase good;
  good.specialist = "chest";
  good.specialist_version = "v1";
  good.source = "import";
  good.source_ref = "a.png";
  good.labels = {"normal"};
  good.feature = {1.0f, 0.0f};
  db::NewCase bad = good;
  bad.source = "made-up";  // refused by the table's CHECK: the whole batch rolls back
  EXPECT_ANY_THROW(db::Cases(pool).add({good, bad}));
  db::NewCase unlabelled = good;
  unlabelled.labels.clear();
  EXPECT_THROW(db::Cases(pool).add({good, unlabelled}), std::invalid_argument);
  EXPECT_EQ(db::Cases(pool).count("chest"), 0);
  db::Cases(pool).add({good});
  EXPECT_EQ(db::Cases(pool).count("chest"), 1);
  const auto rows = db::Cases(pool).list("", 10);
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0]["source_ref"], "a.png");
  EXPECT_EQ(rows[0]["labels"], nlohmann::json::array({"normal"}));
  EXPECT_FALSE(rows[0].contains("feature"));
}
