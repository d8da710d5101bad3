// The process's metrics: counters, gauges and histograms that the components
// (scp, ingest, pipeline, export, http) publish into, read by /metrics
// (app/http/metrics.cpp writes them as Prometheus text). Values that live
// elsewhere (a component's own atomics) are read at scrape time by a
// collector. Updating a metric is lock-free (counters, gauges) or takes one
// short per-histogram lock; nothing here touches the database.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace firstread::metrics {

using Labels = std::vector<std::pair<std::string, std::string>>;

class Counter {
 public:
  void inc(double by = 1);
  double value() const { return value_.load(); }

 private:
  std::atomic<double> value_{0};
};

class Gauge {
 public:
  void set(double v) { value_.store(v); }
  void add(double by);
  double value() const { return value_.load(); }

 private:
  std::atomic<double> value_{0};
};

class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void observe(double v);
  struct Snapshot {
    std::vector<double> bounds;
    std::vector<double> cumulative;  // per bound, then +Inf
    double sum = 0;
    double count = 0;
  };
  Snapshot snapshot() const;

 private:
  std::vector<double> bounds_;
  mutable std::mutex mu_;
  std::vector<uint64_t> counts_;  // per bound (not cumulative), then above the last
  double sum_ = 0;
};

// Durations from 50 ms to 30 min (seconds).
extern const std::vector<double> kDurationBuckets;

enum class Type { counter, gauge, histogram };
const char* type_name(Type t);

// One series at scrape time.
struct Sample {
  Labels labels;
  double value = 0;               // counter, gauge
  Histogram::Snapshot histogram;  // histogram
};
struct Family {
  std::string name, help;
  Type type = Type::counter;
  std::vector<Sample> samples;  // sorted by labels
};

// What a collector adds at scrape time; values of the same series add up.
class Collection {
 public:
  void add(const std::string& name, Type type, const std::string& help, const Labels& labels, double value);
  std::map<std::string, Family>& families() { return families_; }

 private:
  std::map<std::string, Family> families_;
};

class Registry {
 public:
  // The series of `name` with these labels, created on first use; the
  // reference stays valid for the registry's life. Keep it rather than
  // looking it up per event.
  Counter& counter(const std::string& name, const std::string& help, const Labels& labels = {});
  Gauge& gauge(const std::string& name, const std::string& help, const Labels& labels = {});
  Histogram& histogram(const std::string& name, const std::string& help, const Labels& labels = {},
                       const std::vector<double>& bounds = kDurationBuckets);

  using Collector = std::function<void(Collection&)>;
  int add_collector(Collector c);
  void remove_collector(int id);

  // Every family, sorted by name, with the collectors' samples merged in.
  std::vector<Family> snapshot() const;

 private:
  struct Series {
    Labels labels;
    std::unique_ptr<Counter> counter;
    std::unique_ptr<Gauge> gauge;
    std::unique_ptr<Histogram> histogram;
  };
  struct Entry {
    std::string help;
    Type type;
    std::map<Labels, Series> series;
  };
  Series& series(const std::string& name, Type type, const std::string& help, const Labels& labels);

  mutable std::mutex mu_;
  std::map<std::string, Entry> entries_;
  std::map<int, Collector> collectors_;
  int next_collector_ = 1;
};

// The process-wide registry.
Registry& registry();

// Removes a collector when it goes out of scope (a component that stops).
class CollectorHandle {
 public:
  CollectorHandle() = default;
  CollectorHandle(Registry& r, Registry::Collector c) : registry_(&r), id_(r.add_collector(std::move(c))) {}
  ~CollectorHandle() {
    if (registry_) registry_->remove_collector(id_);
  }
  CollectorHandle(const CollectorHandle&) = delete;
  CollectorHandle& operator=(const CollectorHandle&) = delete;

 private:
  Registry* registry_ = nullptr;
  int id_ = 0;
};

// A job's completion as the pipeline observes it (families
// firstread_job_duration_seconds, firstread_report_latency_seconds and
// firstread_report_{decode,inference,sr,db}_seconds, by model).
struct JobObservation {
  std::string model;
  double job_seconds = 0;      // the job's start -> finish
  double latency_seconds = 0;  // the study's last instance received -> report committed
  double decode_seconds = 0, inference_seconds = 0, sr_seconds = 0, db_seconds = 0;
};
void observe_job(const JobObservation& o, Registry& r = registry());

}  // namespace firstread::metrics
