#include "retrieval/case_index.h"

#include <faiss/IndexFlat.h>
#include <faiss/IndexHNSW.h>
#include <spdlog/spdlog.h>

#include <stdexcept>

#include "db/cases.h"

namespace firstread::retrieval {

CaseIndex::CaseIndex(IndexOptions options) : options_(options) {}
CaseIndex::~CaseIndex() = default;

void CaseIndex::add(int64_t case_id, std::vector<std::string> labels, const float* feature, int dim) {
  add_many({case_id}, {std::move(labels)}, feature, dim);
}

void CaseIndex::add_many(const std::vector<int64_t>& case_ids, std::vector<std::vector<std::string>> labels,
                         const float* features, int dim) {
  if (case_ids.empty()) return;
  if (labels.size() != case_ids.size()) throw std::invalid_argument("add_many: one label list per case");
  std::unique_lock lock(mu_);
  if (!index_) {
    if (dim <= 0) throw std::invalid_argument("case " + std::to_string(case_ids[0]) + ": empty feature");
    dim_ = dim;
    index_ = std::make_unique<faiss::IndexFlatIP>(dim);
  }
  if (dim != dim_)
    throw std::invalid_argument("case " + std::to_string(case_ids[0]) + " has a feature of " + std::to_string(dim) +
                                " values but the library's cases have " + std::to_string(dim_));
  const int64_t n = int64_t(case_ids.size());
  // Up to flat_max the scan stays exact; the batch that crosses it moves everything into HNSW.
  if (!hnsw_ && int64_t(case_ids_.size()) + n > int64_t(options_.flat_max)) switch_to_hnsw();
  index_->add(n, features);
  for (int64_t id : case_ids) {
    row_of_[id] = case_ids_.size();
    case_ids_.push_back(id);
  }
  removed_.resize(case_ids_.size(), 0);
  for (auto& l : labels) labels_.push_back(std::move(l));
}

void CaseIndex::remove(int64_t case_id) {
  std::unique_lock lock(mu_);
  const auto it = row_of_.find(case_id);
  if (it == row_of_.end() || removed_[it->second]) return;
  removed_[it->second] = 1;
  ++removed_count_;
}

// Past flat_max an exact scan costs more than a query may take: the vectors
// move into an HNSW graph (same row order, so case ids and labels stay put).
void CaseIndex::switch_to_hnsw() {
  auto* flat = static_cast<faiss::IndexFlat*>(index_.get());
  auto hnsw = std::make_unique<faiss::IndexHNSWFlat>(dim_, options_.hnsw_m, faiss::METRIC_INNER_PRODUCT);
  hnsw->hnsw.efConstruction = options_.hnsw_ef_construction;
  hnsw->hnsw.efSearch = options_.hnsw_ef_search;
  hnsw->add(flat->ntotal, flat->get_xb());
  index_ = std::move(hnsw);
  hnsw_ = true;
}

std::vector<Neighbour> CaseIndex::search(const float* feature, int dim, int k) const {
  std::shared_lock lock(mu_);
  std::vector<Neighbour> out;
  if (!index_ || k <= 0) return out;
  if (dim != dim_)
    throw std::invalid_argument("query feature has " + std::to_string(dim) + " values but the library's cases have " +
                                std::to_string(dim_));
  // Ask for as many more as there are removed rows, so that k remain after skipping them.
  const int n = int(std::min<int64_t>(int64_t(k) + int64_t(removed_count_), index_->ntotal));
  std::vector<float> scores(static_cast<size_t>(n));
  std::vector<faiss::Index::idx_t> rows(static_cast<size_t>(n));
  index_->search(1, feature, n, scores.data(), rows.data());
  for (int i = 0; i < n && int(out.size()) < k; ++i) {
    if (rows[size_t(i)] < 0) continue;  // HNSW may return fewer than asked
    const size_t row = size_t(rows[size_t(i)]);
    if (removed_[row]) continue;
    out.push_back({case_ids_[row], scores[size_t(i)], labels_[row]});
  }
  return out;
}

size_t CaseIndex::size() const {
  std::shared_lock lock(mu_);
  return case_ids_.size() - removed_count_;
}
int CaseIndex::dim() const {
  std::shared_lock lock(mu_);
  return dim_;
}
bool CaseIndex::is_hnsw() const {
  std::shared_lock lock(mu_);
  return hnsw_;
}
int64_t CaseIndex::newest_case_id() const {
  std::shared_lock lock(mu_);
  return case_ids_.empty() ? 0 : case_ids_.back();
}

CaseIndex& CaseLibrary::index_for(const std::string& specialist) {
  auto& slot = indexes_[specialist];
  if (!slot) slot = std::make_unique<CaseIndex>(options_);
  return *slot;
}

size_t CaseLibrary::sync(const std::string& specialist) {
  std::lock_guard lock(mu_);
  CaseIndex& index = index_for(specialist);
  db::Cases cases(pool_);
  size_t added = 0;
  constexpr int kPage = 5000;
  for (;;) {
    int64_t& watermark = watermarks_[specialist];
    const std::vector<db::CaseRow> rows = cases.after(specialist, watermark, kPage);
    std::vector<int64_t> ids;
    std::vector<std::vector<std::string>> labels;
    std::vector<float> features;
    std::vector<int64_t> replaced;
    int dim = index.dim() > 0 ? index.dim() : rows.empty() ? 0 : int(rows.front().feature.size());
    for (const db::CaseRow& r : rows) {
      watermark = r.case_id;
      // A later case of an image (confirmed: its SOP Instance UID; imported: its file's digest) replaces the one
      // held for it. Imports from before image digests carry none and are never replaced.
      const std::string image = r.source == "confirmed" ? "confirmed " + r.source_ref
                                : r.image_sha256.empty() ? std::string() : "import " + r.image_sha256;
      if (!image.empty()) {
        int64_t& held = held_[specialist][image];
        if (held != 0) replaced.push_back(held);
        held = r.case_id;
      }
      if (int(r.feature.size()) != dim) {
        // Another version of the specialist with another width: its features cannot be compared.
        spdlog::warn("case library: case {} of specialist {} has {} feature values, the others {}; not searched",
                     r.case_id, specialist, r.feature.size(), dim);
        continue;
      }
      ids.push_back(r.case_id);
      labels.push_back(r.labels);
      features.insert(features.end(), r.feature.begin(), r.feature.end());
    }
    index.add_many(ids, std::move(labels), features.data(), dim);
    for (int64_t id : replaced) index.remove(id);
    added += ids.size();
    if (rows.size() < size_t(kPage)) break;
  }
  return added;
}

std::vector<Neighbour> CaseLibrary::search(const std::string& specialist, const std::vector<float>& feature, int k) {
  sync(specialist);
  CaseIndex* index;
  {
    std::lock_guard lock(mu_);
    index = &index_for(specialist);
  }
  return index->search(feature.data(), int(feature.size()), k);
}

size_t CaseLibrary::size(const std::string& specialist) {
  std::lock_guard lock(mu_);
  return index_for(specialist).size();
}

}  // namespace firstread::retrieval
