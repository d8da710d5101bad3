// The case library's index: exact results against a brute-force scan, the
// switch to HNSW past flat_max (recall against the exact answer), and two
// "nodes" (two CaseLibrary objects on one database) that see the same
// neighbours, including cases one of them adds after start-up and a
// confirmation that corrects an image's labels; removed cases in both kinds
// of index.
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

  // A removed case is never returned, and k others still are.
  const std::vector<float> q = data[123];
  ASSERT_EQ(index.search(q.data(), 48, 10)[0].case_id, 124);
  index.remove(124);
  index.remove(999999);  // not held: ignored
  const auto after = index.search(q.data(), 48, 10);
  EXPECT_EQ(after.size(), 10u);
  EXPECT_TRUE(std::none_of(after.begin(), after.end(), [](const retrieval::Neighbour& n) { return n.case_id == 124; }));
  EXPECT_EQ(index.size(), 2999u);
}

TEST(CaseIndex, FlatSkipsRemovedCases) {
  std::mt19937 rng(4);
  retrieval::CaseIndex index({});
  std::vector<std::vector<float>> data;
  for (int i = 0; i < 20; ++i) {
    data.push_back(unit_vector(rng, 16));
    index.add(i + 1, {"l" + std::to_string(i)}, data.back().data(), 16);
  }
  const auto want = brute_force(data, data[5], 4);  // row 5 itself, then its three nearest
  index.remove(6);
  const auto got = index.search(data[5].data(), 16, 3);
  ASSERT_EQ(got.size(), 3u);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(got[size_t(i)].case_id, int64_t(want[size_t(i) + 1] + 1));
  for (int i = 1; i <= 20; ++i) index.remove(i);
  EXPECT_TRUE(index.search(data[5].data(), 16, 3).empty());
  EXPECT_EQ(index.size(), 0u);
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

namespace {

db::NewCase confirmed_case(const std::string& sop, std::vector<std::string> labels, std::vector<float> feature,
                           const std::string& version = "v1") {
  db::NewCase c;
  c.specialist = "chest";
  c.specialist_version = version;
  c.source = "confirmed";
  c.source_ref = sop;
  c.labels = std::move(labels);
  c.feature = std::move(feature);
  return c;
}

}  // namespace

// A radiologist who corrects the labels of a confirmed study: the library
// keeps one case per image (the corrected one), every node (those running
// and one started later) drops the old case, and confirming the same labels
// again changes nothing.
TEST(CaseLibrary, ACorrectedConfirmationReplacesTheCaseOnEveryNode) {
  TestCluster& cluster = TestCluster::get();
  cluster.truncate_all();
  db::ConnectionPool& pool = cluster.pool();
  std::mt19937 rng(5);
  std::vector<db::NewCase> imports;
  for (int i = 0; i < 50; ++i) {
    db::NewCase c = confirmed_case("img" + std::to_string(i) + ".png", {"normal"}, unit_vector(rng, 24));
    c.source = "import";
    imports.push_back(c);
  }
  db::Cases cases(pool);
  cases.add(imports);
  const std::vector<float> q = unit_vector(rng, 24);
  const db::CaseWrite first = cases.confirm({confirmed_case("1.2.3.4", {"pneumonia", "nodule"}, q)});
  ASSERT_EQ(first.case_ids.size(), 1u);
  EXPECT_TRUE(first.replaced.empty());
  retrieval::CaseLibrary node_a(pool, {}), node_b(pool, {});
  EXPECT_EQ(node_a.search("chest", q, 5)[0].case_id, first.case_ids[0]);
  EXPECT_EQ(node_b.search("chest", q, 5)[0].case_id, first.case_ids[0]);

  // The same labels (in another order) again: nothing changes.
  const db::CaseWrite again = cases.confirm({confirmed_case("1.2.3.4", {"nodule", "pneumonia"}, q)});
  EXPECT_EQ(again.case_ids, first.case_ids);
  EXPECT_EQ(again.unchanged, 1);
  EXPECT_EQ(cases.count("chest"), 51);

  // Corrected labels: the old case is replaced, in the table and on both nodes at their next search.
  const db::CaseWrite corrected = cases.confirm({confirmed_case("1.2.3.4", {"effusion", "nodule"}, q)});
  ASSERT_EQ(corrected.case_ids.size(), 1u);
  EXPECT_EQ(corrected.replaced, first.case_ids);
  EXPECT_EQ(corrected.unchanged, 0);
  EXPECT_EQ(cases.count("chest"), 51);
  for (retrieval::CaseLibrary* node : {&node_a, &node_b}) {
    const auto n = node->search("chest", q, 5);
    ASSERT_EQ(n.size(), 5u);
    EXPECT_EQ(n[0].case_id, corrected.case_ids[0]);
    EXPECT_EQ(n[0].labels, (std::vector<std::string>{"effusion", "nodule"}));
    EXPECT_TRUE(std::none_of(n.begin(), n.end(), [&](const retrieval::Neighbour& x) { return x.case_id == first.case_ids[0]; }));
    EXPECT_EQ(node->size("chest"), 51u);
  }
  // A node started now rebuilds the same index from the table.
  retrieval::CaseLibrary node_c(pool, {});
  const auto a = node_a.search("chest", q, 10), c = node_c.search("chest", q, 10);
  ASSERT_EQ(c.size(), 10u);
  for (size_t i = 0; i < 10; ++i) EXPECT_EQ(a[i].case_id, c[i].case_id);
  EXPECT_EQ(node_c.size("chest"), 51u);

  // Unchanged labels but a retrained specialist (another version): replaced, since its feature differs.
  const db::CaseWrite retrained = cases.confirm({confirmed_case("1.2.3.4", {"nodule", "effusion"}, q, "v2")});
  EXPECT_EQ(retrained.replaced, corrected.case_ids);
  // One image twice in one confirmation is refused and writes nothing.
  EXPECT_THROW(cases.confirm({confirmed_case("9.9", {"a"}, q), confirmed_case("9.9", {"b"}, q)}), std::invalid_argument);
  EXPECT_EQ(cases.count("chest"), 51);
  EXPECT_EQ(node_b.search("chest", q, 1)[0].case_id, retrained.case_ids[0]);
}

// `firstread cases import` of the same images again (the same directory twice,
// or a copy under other names): one case per image (by its file's digest).
// The same labels change nothing; a corrected labels.csv replaces the image's
// case, and a running node drops the old one at its next search.
TEST(CaseLibrary, ImportingAnImageAgainKeepsOneCaseAndACorrectionReplacesItOnARunningNode) {
  TestCluster& cluster = TestCluster::get();
  cluster.truncate_all();
  db::ConnectionPool& pool = cluster.pool();
  std::mt19937 rng(7);
  std::vector<db::NewCase> files;
  for (int i = 0; i < 30; ++i) {
    db::NewCase c = confirmed_case("img" + std::to_string(i) + ".png", {i % 2 ? "nodule" : "normal"}, unit_vector(rng, 24));
    c.source = "import";
    c.image_sha256 = std::string(62, 'a') + char('a' + i / 16) + "0123456789abcdef"[i % 16];
    files.push_back(c);
  }
  db::Cases cases(pool);
  const db::CaseWrite first = cases.add_imported(files);
  ASSERT_EQ(first.case_ids.size(), 30u);
  EXPECT_EQ(first.unchanged, 0);
  retrieval::CaseLibrary node(pool, {});
  const std::vector<float> q = files[3].feature;
  EXPECT_EQ(node.search("chest", q, 1)[0].case_id, first.case_ids[3]);

  // The same import again, then the same images under other names (another directory): nothing is added.
  const db::CaseWrite again = cases.add_imported(files);
  EXPECT_EQ(again.case_ids, first.case_ids);
  EXPECT_EQ(again.unchanged, 30);
  EXPECT_TRUE(again.replaced.empty());
  std::vector<db::NewCase> renamed = files;
  for (auto& c : renamed) c.source_ref = "copy/" + c.source_ref;
  EXPECT_EQ(cases.add_imported(renamed).unchanged, 30);
  EXPECT_EQ(cases.count("chest"), 30);
  EXPECT_EQ(node.size("chest"), 30u);

  // A corrected label for one image: its case is replaced, on the running node too.
  std::vector<db::NewCase> corrected = files;
  corrected[3].labels = {"mass"};
  const db::CaseWrite fixed = cases.add_imported(corrected);
  EXPECT_EQ(fixed.unchanged, 29);
  EXPECT_EQ(fixed.replaced, std::vector<int64_t>{first.case_ids[3]});
  EXPECT_EQ(cases.count("chest"), 30);
  const auto n = node.search("chest", q, 30);
  ASSERT_EQ(n.size(), 30u);
  EXPECT_EQ(n[0].case_id, fixed.case_ids[3]);
  EXPECT_EQ(n[0].labels, std::vector<std::string>{"mass"});
  EXPECT_TRUE(std::none_of(n.begin(), n.end(), [&](const retrieval::Neighbour& x) { return x.case_id == first.case_ids[3]; }));
  EXPECT_EQ(node.size("chest"), 30u);

  // Two files with the same bytes in one import are refused, naming both, and nothing is written.
  db::NewCase twin = files[0];
  twin.source_ref = "twin.png";
  twin.labels = {"mass"};
  try {
    cases.add_imported({files[5], twin, files[0]});
    ADD_FAILURE() << "an import holding one image twice was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("twin.png and img0.png are the same image"), std::string::npos) << e.what();
  }
  // An import without the image's digest is refused (it could not be recognised again).
  db::NewCase undigested = files[1];
  undigested.image_sha256.clear();
  EXPECT_THROW(cases.add_imported({undigested}), std::invalid_argument);
  EXPECT_EQ(cases.count("chest"), 30);
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
