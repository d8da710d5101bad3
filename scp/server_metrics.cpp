#include "scp/server_metrics.h"

namespace firstread::scp {

ServerMetrics::ServerMetrics(const DicomServer& server, metrics::Registry& registry)
    : handle_(registry, [&server](metrics::Collection& m) {
        using metrics::Type;
        const ServerCounters& c = server.counters();
        const char* associations = "DICOM associations handled by this process, by outcome";
        m.add("firstread_dicom_associations_total", Type::counter, associations, {{"outcome", "accepted"}},
              static_cast<double>(c.associations_accepted.load()));
        m.add("firstread_dicom_associations_total", Type::counter, associations, {{"outcome", "refused"}},
              static_cast<double>(c.associations_refused.load()));
        m.add("firstread_dicom_associations_total", Type::counter, associations, {{"outcome", "failed"}},
              static_cast<double>(c.associations_failed.load()));
        m.add("firstread_dicom_tls_handshakes_failed_total", Type::counter,
              "DICOM TLS connections refused before association: failed or timed-out handshakes, plain DICOM on "
              "the TLS port",
              {}, static_cast<double>(c.tls_handshakes_failed.load()));
        m.add("firstread_dicom_associations_active", Type::gauge, "DICOM associations open now", {},
              c.associations_active.load());
        m.add("firstread_dicom_associations_negotiating", Type::gauge,
              "TCP connections whose A-ASSOCIATE-RQ is not answered yet (dicom.max_pending_associations)", {},
              c.associations_negotiating.load());
        m.add("firstread_dicom_connections_closed_over_limit_total", Type::counter,
              "TCP connections closed before negotiation: over dicom.max_pending_associations or "
              "dicom.max_associations_per_host",
              {}, static_cast<double>(c.connections_closed_over_limit.load()));
        m.add("firstread_dicom_echoes_total", Type::counter, "C-ECHO requests answered", {},
              static_cast<double>(c.echoes.load()));
        const char* instances = "C-STORE instances received, by outcome";
        m.add("firstread_dicom_instances_received_total", Type::counter, instances, {{"outcome", "stored"}},
              static_cast<double>(c.instances_stored.load()));
        m.add("firstread_dicom_instances_received_total", Type::counter, instances, {{"outcome", "failed"}},
              static_cast<double>(c.instances_failed.load()));
        m.add("firstread_dicom_received_bytes_total", Type::counter, "bytes of DICOM data received", {},
              static_cast<double>(c.bytes_received.load()));
      }) {}

}  // namespace firstread::scp
