// CPU time of the calling thread, for the engine benchmarks' one-thread
// figures: it counts only the time the thread was on a core, so a loaded or
// stolen host inflates it much less than wall time.
#pragma once

#include <ctime>

inline double thread_cpu_s() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}
