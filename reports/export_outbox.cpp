#include "reports/export_outbox.h"

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcmetinf.h>
#include <dcmtk/dcmdata/dcuid.h>
#include <dcmtk/dcmnet/scu.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <memory>
#include <optional>

#include "db/reports.h"
#include "metrics/registry.h"
#include "scp/tls.h"
#include "reports/stowrs_sender.h"

namespace firstread::reports {

namespace {

// DcmSCU takes a transport layer through a protected call (DcmTLSSCU would
// make its own, without our handshake's refusal reasons).
class Scu : public DcmSCU {
 public:
  using DcmSCU::useSecureConnection;
};

}  // namespace

scp::TlsOptions destination_tls_options(const config::ExportDestination& d) {
  scp::TlsOptions o;
  o.certificate = d.tls.certificate;
  o.private_key = d.tls.private_key;
  o.ca_certificates = d.tls.ca_certificates;
  o.profile = d.tls.profile == "bcp195-extended" ? scp::TlsProfile::bcp195_extended : scp::TlsProfile::bcp195;
  if (d.tls.verify_host) o.verify_host = d.host;
  return o;
}

SendResult send_file(const std::string& path, const std::string& calling_ae, const std::string& called_ae,
                     const std::string& host, int port, int timeout_seconds, const scp::TlsOptions* tls) {
  DcmFileFormat file;
  OFCondition cond = file.loadFile(path.c_str());
  if (cond.bad()) return {false, "cannot read " + path + ": " + cond.text()};
  OFString sop_class, ts;
  file.getDataset()->findAndGetOFString(DCM_SOPClassUID, sop_class);
  file.getMetaInfo()->findAndGetOFString(DCM_TransferSyntaxUID, ts);

  std::unique_ptr<scp::TlsLayer> layer;  // outlives the SCU, which only borrows it
  Scu scu;
  scu.setAETitle(calling_ae.c_str());
  scu.setPeerAETitle(called_ae.c_str());
  scu.setPeerHostName(host.c_str());
  scu.setPeerPort(static_cast<Uint16>(port));
  scu.setACSETimeout(static_cast<Uint32>(timeout_seconds));
  scu.setDIMSETimeout(static_cast<Uint32>(timeout_seconds));
  scu.setDIMSEBlockingMode(DIMSE_NONBLOCKING);
  scu.setConnectionTimeout(timeout_seconds);
  OFList<OFString> syntaxes;
  syntaxes.push_back(ts);
  if (ts != UID_LittleEndianExplicitTransferSyntax) syntaxes.push_back(UID_LittleEndianExplicitTransferSyntax);
  syntaxes.push_back(UID_LittleEndianImplicitTransferSyntax);
  scu.addPresentationContext(sop_class, syntaxes);
  const std::string peer = called_ae + "@" + host + ":" + std::to_string(port) + (tls ? " (TLS)" : "");
  if ((cond = scu.initNetwork()).bad()) return {false, "network: " + std::string(cond.text())};
  if (tls) {
    try {
      layer = std::make_unique<scp::TlsLayer>(NET_REQUESTOR, *tls);
    } catch (const std::exception& e) {
      return {false, e.what()};
    }
    if ((cond = scu.useSecureConnection(layer.get())).bad()) return {false, "TLS: " + std::string(cond.text())};
  }
  if ((cond = scu.negotiateAssociation()).bad()) {
    // A refused handshake says why (untrusted, expired, wrong host) rather than DCMTK's generic condition.
    const std::string why = layer && !layer->last_failure().empty() ? "TLS handshake refused: " + layer->last_failure()
                                                                    : std::string(cond.text());
    return {false, "association with " + peer + ": " + why};
  }
  const T_ASC_PresentationContextID pres_id = scu.findPresentationContextID(sop_class, "");
  if (pres_id == 0) {
    scu.releaseAssociation();
    return {false, peer + " accepts no presentation context for SOP class " + std::string(sop_class.c_str())};
  }
  Uint16 status = 0;
  cond = scu.sendSTORERequest(pres_id, path.c_str(), nullptr, status);
  scu.releaseAssociation();
  if (cond.bad()) return {false, "C-STORE to " + peer + ": " + cond.text()};
  // Success (0000) and warnings (Bxxx) mean the PACS kept it.
  if (status != 0x0000 && (status & 0xF000) != 0xB000) {
    char buf[64];
    snprintf(buf, sizeof buf, "C-STORE to %s answered status 0x%04X", peer.c_str(), status);
    return {false, buf};
  }
  return {true, ""};
}

int ExportOutbox::send_due() {
  int attempted = 0;
  db::Exports exports(pool_);
  while (!stopping_) {
    const auto due = exports.claim_due();
    if (!due) break;
    ++attempted;
    // A destination's transport is its configuration's (the row names it):
    // STOW-RS to the configured url, or C-STORE to the row's peer (TLS as the
    // destination is configured now; a destination no longer configured is
    // sent to as its row says, in plain TCP).
    const config::ExportDestination* destination = nullptr;
    for (const auto& d : config_.destinations)
      if (d.name == due->destination) destination = &d;
    std::optional<scp::TlsOptions> tls;
    if (destination && destination->tls.enabled) tls = destination_tls_options(*destination);
    SendResult result;
    if (destination && destination->type == "stowrs")
      result = send_stowrs(storage_.absolute(due->sr_file_path), *destination);
    else if (due->ae_title.empty())
      result = {false, "destination '" + due->destination + "' is no longer configured"};
    else
      result = send_file(storage_.absolute(due->sr_file_path), config_.calling_ae_title, due->ae_title, due->host,
                         due->port, 30, tls ? &*tls : nullptr);
    exports.settle(due->export_id, result.ok, result.error, config_.retry_backoff_seconds);
    metrics::registry()
        .counter("firstread_export_attempts_total", "Send attempts (C-STORE or STOW-RS) of the export outbox by this process, by outcome",
                 {{"outcome", result.ok ? "sent" : "failed"}})
        .inc();
    if (result.ok)
      spdlog::info("export: {} {} sent to {}", due->object, due->sr_sop_instance_uid, due->destination);
    else
      spdlog::warn("export: {} {} to {} failed (attempt {}/{}{}): {}", due->object, due->sr_sop_instance_uid,
                   due->destination,
                   due->attempts, due->max_attempts, due->attempts >= due->max_attempts ? ", giving up" : ", will retry",
                   result.error);
  }
  return attempted;
}

void ExportOutbox::start() {
  stopping_ = false;
  thread_ = std::thread([this] {
    std::unique_ptr<pqxx::connection> listen_conn;
    std::unique_ptr<pqxx::notification_receiver> receiver;
    struct Receiver : pqxx::notification_receiver {
      using pqxx::notification_receiver::notification_receiver;
      void operator()(const std::string&, int) override {}
    };
    while (!stopping_) {
      try {
        send_due();
      } catch (const std::exception& e) {
        spdlog::error("export: {}", e.what());
      }
      // Wake on NOTIFY from the pipeline, or poll every second for retries.
      try {
        if (!listen_conn) {
          listen_conn = std::make_unique<pqxx::connection>(conninfo_);
          receiver = std::make_unique<Receiver>(*listen_conn, db::kExportsChannel);
        }
        listen_conn->await_notification(1, 0);
      } catch (const std::exception&) {
        receiver.reset();
        listen_conn.reset();
        std::this_thread::sleep_for(std::chrono::seconds(1));
      }
    }
  });
}

void ExportOutbox::stop() {
  stopping_ = true;
  if (thread_.joinable()) thread_.join();
}

}  // namespace firstread::reports
