// Retrieval-Augmented Diagnosis (GSCo, issue 15): nearest confirmed cases by
// cosine similarity of a specialist's L2-normalised pooled feature, with FAISS.
// Exact inner product (IndexFlatIP) up to case_library.flat_max cases, HNSW
// (IndexHNSWFlat, inner product) beyond. The database (firstread.cases) is the
// truth: CaseLibrary reads the rows newer than the newest it holds before each
// search, so every node answers from the same cases. A confirmation that
// corrects an image's labels replaces its case (db::Cases::confirm): each node
// drops the case it held for that image when it reads the replacement.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <vector>

#include "db/database.h"

namespace faiss {
struct Index;
}

namespace firstread::retrieval {

struct IndexOptions {
  int flat_max = 20000;
  int hnsw_m = 32;
  int hnsw_ef_search = 128;
  int hnsw_ef_construction = 80;
};

struct Neighbour {
  int64_t case_id = 0;
  float similarity = 0;  // inner product of unit vectors = cosine
  std::vector<std::string> labels;
};

// One specialist's cases in memory. Thread-safe: searches run concurrently,
// additions exclusively.
class CaseIndex {
 public:
  explicit CaseIndex(IndexOptions options);
  ~CaseIndex();
  // Throws std::invalid_argument when dim differs from the cases already held.
  void add(int64_t case_id, std::vector<std::string> labels, const float* feature, int dim);
  // n cases at once (features n x dim, row-major): one FAISS call, which
  // builds HNSW links on every OpenMP thread.
  void add_many(const std::vector<int64_t>& case_ids, std::vector<std::vector<std::string>> labels,
                const float* features, int dim);
  // Drops a case from the results (FAISS's flat and HNSW indexes cannot delete
  // a row in place: the row stays and searches skip it). Unknown ids are ignored.
  void remove(int64_t case_id);
  std::vector<Neighbour> search(const float* feature, int dim, int k) const;
  size_t size() const;  // the cases searched (removed ones not counted)
  int dim() const;
  bool is_hnsw() const;
  int64_t newest_case_id() const;  // 0 when empty

 private:
  void switch_to_hnsw();
  IndexOptions options_;
  mutable std::shared_mutex mu_;
  std::unique_ptr<faiss::Index> index_;
  bool hnsw_ = false;
  int dim_ = 0;
  std::vector<int64_t> case_ids_;               // by FAISS row
  std::vector<std::vector<std::string>> labels_;  // by FAISS row
  std::vector<char> removed_;                   // by FAISS row
  std::map<int64_t, size_t> row_of_;            // case id -> FAISS row
  size_t removed_count_ = 0;
};

// Every specialist's index, following firstread.cases.
class CaseLibrary {
 public:
  CaseLibrary(db::ConnectionPool& pool, IndexOptions options) : pool_(pool), options_(options) {}
  // Reads the specialist's cases newer than the index holds (all of them the
  // first time: the index is rebuilt from the database at start-up).
  // Returns how many were added.
  size_t sync(const std::string& specialist);
  // sync, then the k nearest cases (fewer when the library holds fewer).
  std::vector<Neighbour> search(const std::string& specialist, const std::vector<float>& feature, int k);
  size_t size(const std::string& specialist);

 private:
  CaseIndex& index_for(const std::string& specialist);
  db::ConnectionPool& pool_;
  IndexOptions options_;
  std::mutex mu_;  // the map and each sync (one reader of the table per specialist at a time)
  std::map<std::string, std::unique_ptr<CaseIndex>> indexes_;
  std::map<std::string, int64_t> watermarks_;  // the newest case_id read per specialist (kept or skipped)
  // Per specialist: the case held for each image ("confirmed <SOP UID>", "import <sha256>").
  std::map<std::string, std::map<std::string, int64_t>> held_;
};

}  // namespace firstread::retrieval
