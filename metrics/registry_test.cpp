#include "metrics/registry.h"

#include <gtest/gtest.h>

#include <thread>

using namespace firstread::metrics;

namespace {

const Family* find(const std::vector<Family>& families, const std::string& name) {
  for (const auto& f : families)
    if (f.name == name) return &f;
  return nullptr;
}

}  // namespace

TEST(MetricsRegistry, CountersFromManyThreadsAddUp) {
  Registry r;
  Counter& c = r.counter("t_total", "help", {{"outcome", "ok"}});
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < 10000; ++i) c.inc();
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(&r.counter("t_total", "help", {{"outcome", "ok"}}), &c) << "the same series each time";
  const auto families = r.snapshot();
  const Family* f = find(families, "t_total");
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(f->type, Type::counter);
  ASSERT_EQ(f->samples.size(), 1u);
  EXPECT_EQ(f->samples[0].value, 40000);
}

TEST(MetricsRegistry, HistogramBucketsAreCumulativeWithUpperBoundsInclusive) {
  Registry r;
  Histogram& h = r.histogram("h_seconds", "help", {}, {1, 5, 10});
  for (double v : {0.5, 1.0, 3.0, 7.3, 100.0}) h.observe(v);
  const auto s = h.snapshot();
  EXPECT_EQ(s.cumulative, (std::vector<double>{2, 3, 4, 5}));  // le=1 holds 0.5 and 1.0; +Inf holds all
  EXPECT_EQ(s.count, 5);
  EXPECT_DOUBLE_EQ(s.sum, 111.8);
}

TEST(MetricsRegistry, CollectorsAddAtScrapeAndStopWhenRemoved) {
  Registry r;
  double external = 7;
  {
    CollectorHandle one(r, [&](Collection& c) { c.add("ext_total", Type::counter, "help", {}, external); });
    CollectorHandle two(r, [&](Collection& c) { c.add("ext_total", Type::counter, "help", {}, 1); });
    auto f = r.snapshot();
    ASSERT_NE(find(f, "ext_total"), nullptr);
    EXPECT_EQ(find(f, "ext_total")->samples[0].value, 8) << "two sources of one series add up";
    external = 9;
    f = r.snapshot();
    EXPECT_EQ(find(f, "ext_total")->samples[0].value, 10);
  }
  EXPECT_EQ(find(r.snapshot(), "ext_total"), nullptr);
}

TEST(MetricsRegistry, OneNameCannotBeTwoTypes) {
  Registry r;
  r.counter("x", "help");
  EXPECT_THROW(r.gauge("x", "help"), std::logic_error);
}

TEST(MetricsRegistry, ObserveJobFillsEveryStageByModel) {
  Registry r;
  observe_job({"tiny", 3.0, 7.3, 0.02, 0.9, 0.015, 0.004}, r);
  const auto f = r.snapshot();
  for (const char* name : {"firstread_job_duration_seconds", "firstread_report_latency_seconds",
                           "firstread_report_decode_seconds", "firstread_report_inference_seconds",
                           "firstread_report_sr_seconds", "firstread_report_db_seconds"}) {
    const Family* family = find(f, name);
    ASSERT_NE(family, nullptr) << name;
    ASSERT_EQ(family->samples.size(), 1u);
    EXPECT_EQ(family->samples[0].labels, (Labels{{"model", "tiny"}}));
    EXPECT_EQ(family->samples[0].histogram.count, 1);
  }
  EXPECT_DOUBLE_EQ(find(f, "firstread_report_latency_seconds")->samples[0].histogram.sum, 7.3);
}
