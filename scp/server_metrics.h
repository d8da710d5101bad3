// Publishes a DicomServer's counters into the metrics registry for as long as
// this object lives (families firstread_dicom_*).
#pragma once

#include "metrics/registry.h"
#include "scp/dicom_server.h"

namespace firstread::scp {

class ServerMetrics {
 public:
  explicit ServerMetrics(const DicomServer& server, metrics::Registry& registry = metrics::registry());

 private:
  metrics::CollectorHandle handle_;
};

}  // namespace firstread::scp
