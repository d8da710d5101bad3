#include "metrics/registry.h"

#include <algorithm>
#include <stdexcept>

namespace firstread::metrics {
namespace {

void atomic_add(std::atomic<double>& a, double by) {
  double current = a.load();
  while (!a.compare_exchange_weak(current, current + by)) {
  }
}

}  // namespace

const std::vector<double> kDurationBuckets = {0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800};

const char* type_name(Type t) {
  switch (t) {
    case Type::counter: return "counter";
    case Type::gauge: return "gauge";
    case Type::histogram: return "histogram";
  }
  return "untyped";
}

void Counter::inc(double by) { atomic_add(value_, by); }
void Gauge::add(double by) { atomic_add(value_, by); }

Histogram::Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {
  if (!std::is_sorted(bounds_.begin(), bounds_.end())) throw std::invalid_argument("histogram bounds must increase");
}

void Histogram::observe(double v) {
  const size_t bucket = static_cast<size_t>(std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin());
  std::lock_guard<std::mutex> lock(mu_);
  ++counts_[bucket];
  sum_ += v;
}

Histogram::Snapshot Histogram::snapshot() const {
  Snapshot s;
  s.bounds = bounds_;
  std::lock_guard<std::mutex> lock(mu_);
  double running = 0;
  for (uint64_t c : counts_) {
    running += static_cast<double>(c);
    s.cumulative.push_back(running);
  }
  s.count = running;
  s.sum = sum_;
  return s;
}

void Collection::add(const std::string& name, Type type, const std::string& help, const Labels& labels,
                     double value) {
  Family& f = families_[name];
  if (f.name.empty()) {
    f.name = name;
    f.help = help;
    f.type = type;
  }
  for (auto& s : f.samples) {
    if (s.labels == labels) {
      s.value += value;
      return;
    }
  }
  f.samples.push_back({labels, value, {}});
}

Registry::Series& Registry::series(const std::string& name, Type type, const std::string& help, const Labels& labels) {
  std::lock_guard<std::mutex> lock(mu_);
  auto [it, inserted] = entries_.try_emplace(name, Entry{help, type, {}});
  if (!inserted && it->second.type != type)
    throw std::logic_error("metric " + name + " registered as " + type_name(it->second.type) + " and as " +
                           type_name(type));
  Labels sorted = labels;
  std::sort(sorted.begin(), sorted.end());
  Series& s = it->second.series[sorted];
  s.labels = sorted;
  return s;
}

Counter& Registry::counter(const std::string& name, const std::string& help, const Labels& labels) {
  Series& s = series(name, Type::counter, help, labels);
  std::lock_guard<std::mutex> lock(mu_);
  if (!s.counter) s.counter = std::make_unique<Counter>();
  return *s.counter;
}

Gauge& Registry::gauge(const std::string& name, const std::string& help, const Labels& labels) {
  Series& s = series(name, Type::gauge, help, labels);
  std::lock_guard<std::mutex> lock(mu_);
  if (!s.gauge) s.gauge = std::make_unique<Gauge>();
  return *s.gauge;
}

Histogram& Registry::histogram(const std::string& name, const std::string& help, const Labels& labels,
                               const std::vector<double>& bounds) {
  Series& s = series(name, Type::histogram, help, labels);
  std::lock_guard<std::mutex> lock(mu_);
  if (!s.histogram) s.histogram = std::make_unique<Histogram>(bounds);
  return *s.histogram;
}

int Registry::add_collector(Collector c) {
  std::lock_guard<std::mutex> lock(mu_);
  const int id = next_collector_++;
  collectors_[id] = std::move(c);
  return id;
}

void Registry::remove_collector(int id) {
  std::lock_guard<std::mutex> lock(mu_);
  collectors_.erase(id);
}

std::vector<Family> Registry::snapshot() const {
  Collection collected;
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [id, collect] : collectors_) collect(collected);
  std::map<std::string, Family> out = std::move(collected.families());
  for (const auto& [name, entry] : entries_) {
    Family& f = out[name];
    f.name = name;
    f.help = entry.help;
    f.type = entry.type;
    for (const auto& [labels, s] : entry.series) {
      Sample sample{labels, 0, {}};
      if (s.counter) sample.value = s.counter->value();
      if (s.gauge) sample.value = s.gauge->value();
      if (s.histogram) sample.histogram = s.histogram->snapshot();
      f.samples.push_back(std::move(sample));
    }
  }
  std::vector<Family> families;
  for (auto& [name, f] : out) {
    std::sort(f.samples.begin(), f.samples.end(), [](const Sample& a, const Sample& b) { return a.labels < b.labels; });
    families.push_back(std::move(f));
  }
  return families;
}

Registry& registry() {
  static Registry r;
  return r;
}

void observe_job(const JobObservation& o, Registry& r) {
  const Labels model{{"model", o.model}};
  r.histogram("firstread_job_duration_seconds", "time from a job's start to its finish, for done jobs", model)
      .observe(o.job_seconds);
  r.histogram("firstread_report_latency_seconds", "time from a study's last instance received to its SR stored",
              model)
      .observe(o.latency_seconds);
  const std::pair<const char*, double> stages[] = {{"decode", o.decode_seconds},
                                                   {"inference", o.inference_seconds},
                                                   {"sr", o.sr_seconds},
                                                   {"db", o.db_seconds}};
  for (const auto& [stage, seconds] : stages)
    r.histogram(std::string("firstread_report_") + stage + "_seconds",
                std::string("per-report time spent in the ") + stage + " stage", model)
        .observe(seconds);
}

}  // namespace firstread::metrics
