#include "scp/dicom_server.h"

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcuid.h>
#include <dcmtk/dcmdata/dcxfer.h>
#include <dcmtk/dcmnet/assoc.h>
#include <dcmtk/dcmnet/dimse.h>
#include <dcmtk/oflog/oflog.h>
#include <spdlog/spdlog.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>

namespace firstread::scp {
namespace {

// Transfer syntaxes accepted for storage. Anything else (an unknown or
// retired syntax) is refused at negotiation, per presentation context.
const char* kStorageTransferSyntaxes[] = {
    UID_LittleEndianExplicitTransferSyntax,
    UID_LittleEndianImplicitTransferSyntax,
    UID_BigEndianExplicitTransferSyntax,
    UID_DeflatedExplicitVRLittleEndianTransferSyntax,
    UID_JPEGProcess1TransferSyntax,
    UID_JPEGProcess2_4TransferSyntax,
    UID_JPEGProcess14TransferSyntax,
    UID_JPEGProcess14SV1TransferSyntax,
    UID_JPEGLSLosslessTransferSyntax,
    UID_JPEGLSLossyTransferSyntax,
    UID_JPEG2000LosslessOnlyTransferSyntax,
    UID_JPEG2000TransferSyntax,
    UID_JPEG2000Part2MulticomponentImageCompressionLosslessOnlyTransferSyntax,
    UID_JPEG2000Part2MulticomponentImageCompressionTransferSyntax,
    UID_RLELosslessTransferSyntax,
    UID_MPEG2MainProfileAtMainLevelTransferSyntax,
    UID_MPEG2MainProfileAtHighLevelTransferSyntax,
    UID_MPEG4HighProfileLevel4_1TransferSyntax,
    UID_MPEG4BDcompatibleHighProfileLevel4_1TransferSyntax,
    UID_MPEG4HighProfileLevel4_2_For2DVideoTransferSyntax,
    UID_MPEG4HighProfileLevel4_2_For3DVideoTransferSyntax,
    UID_MPEG4StereoHighProfileLevel4_2TransferSyntax,
    UID_HEVCMainProfileLevel5_1TransferSyntax,
    UID_HEVCMain10ProfileLevel5_1TransferSyntax,
};

const char* kEchoTransferSyntaxes[] = {UID_LittleEndianExplicitTransferSyntax, UID_BigEndianExplicitTransferSyntax,
                                       UID_LittleEndianImplicitTransferSyntax};

bool same_ae(const std::string& a, const std::string& b) {
  // AE titles compare without their padding spaces.
  auto trim = [](std::string s) {
    while (!s.empty() && s.back() == ' ') s.pop_back();
    while (!s.empty() && s.front() == ' ') s.erase(0, 1);
    return s;
  };
  return trim(a) == trim(b);
}

void reject(T_ASC_Association* assoc, T_ASC_RejectParametersResult result, T_ASC_RejectParametersReason reason) {
  T_ASC_RejectParameters rej;
  rej.result = result;
  rej.source = ASC_SOURCE_SERVICEUSER;
  if (reason == ASC_REASON_SP_PRES_LOCALLIMITEXCEEDED) rej.source = ASC_SOURCE_SERVICEPROVIDER_PRESENTATION_RELATED;
  rej.reason = reason;
  ASC_rejectAssociation(assoc, &rej);
}

bool in_list(const char* uid, const char* const* list, size_t n) {
  for (size_t i = 0; i < n; ++i)
    if (std::strcmp(uid, list[i]) == 0) return true;
  return false;
}

// Accepts, for each proposed context, the first transfer syntax in the
// *sender's* order that we support. Taking the sender's first choice means a
// compressed instance is sent as it is stored at the sender, so we store it as
// received; an order of our own would make senders decompress (or fail).
OFCondition negotiate_presentation_contexts(T_ASC_Parameters* params) {
  const size_t n_storage_ts = sizeof kStorageTransferSyntaxes / sizeof kStorageTransferSyntaxes[0];
  const size_t n_echo_ts = sizeof kEchoTransferSyntaxes / sizeof kEchoTransferSyntaxes[0];
  const int count = ASC_countPresentationContexts(params);
  for (int i = 0; i < count; ++i) {
    T_ASC_PresentationContext pc;
    OFCondition cond = ASC_getPresentationContext(params, i, &pc);
    if (cond.bad()) return cond;
    const char* const* supported = nullptr;
    size_t n_supported = 0;
    if (std::strcmp(pc.abstractSyntax, UID_VerificationSOPClass) == 0) {
      supported = kEchoTransferSyntaxes;
      n_supported = n_echo_ts;
    } else if (in_list(pc.abstractSyntax, dcmAllStorageSOPClassUIDs,
                       static_cast<size_t>(numberOfDcmAllStorageSOPClassUIDs))) {
      supported = kStorageTransferSyntaxes;
      n_supported = n_storage_ts;
    } else {
      cond = ASC_refusePresentationContext(params, pc.presentationContextID, ASC_P_ABSTRACTSYNTAXNOTSUPPORTED);
      if (cond.bad()) return cond;
      continue;
    }
    const char* chosen = nullptr;
    for (int t = 0; t < pc.transferSyntaxCount && !chosen; ++t)
      if (in_list(pc.proposedTransferSyntaxes[t], supported, n_supported)) chosen = pc.proposedTransferSyntaxes[t];
    cond = chosen ? ASC_acceptPresentationContext(params, pc.presentationContextID, chosen)
                  : ASC_refusePresentationContext(params, pc.presentationContextID, ASC_P_TRANSFERSYNTAXESNOTSUPPORTED);
    if (cond.bad()) return cond;
  }
  return EC_Normal;
}

}  // namespace

DicomServer::DicomServer(ServerOptions options, InstanceSink& sink, std::function<std::string()> admission)
    : options_(std::move(options)), sink_(sink), admission_(std::move(admission)) {}

DicomServer::~DicomServer() { stop(); }

void DicomServer::start() {
  // DCMTK leaves Nagle's algorithm on unless TCP_NODELAY is set in the
  // environment; with it on, every small response waits ~40 ms for an ACK.
  setenv("TCP_NODELAY", "1", 1);
  // DCMTK's own log goes to stderr in its own format; keep only its errors.
  OFLog::configure(OFLogger::ERROR_LOG_LEVEL);
  dcmDisableGethostbyaddr.set(OFTrue);  // no reverse DNS per association
  T_ASC_Network* net = nullptr;
  OFCondition cond = ASC_initializeNetwork(NET_ACCEPTOR, options_.port, options_.acse_timeout_seconds, &net);
  if (cond.bad())
    throw std::runtime_error("DICOM: cannot listen on port " + std::to_string(options_.port) + ": " + cond.text());
  network_ = net;
  stopping_ = false;
  acceptor_ = std::thread([this] { accept_loop(); });
  spdlog::info("DICOM: {} listening on port {} (max {} associations)", options_.ae_title, options_.port,
               options_.max_associations);
}

void DicomServer::stop() {
  if (!network_) return;
  stopping_ = true;
  if (acceptor_.joinable()) acceptor_.join();
  {
    std::unique_lock<std::mutex> lock(threads_mu_);
    threads_cv_.wait(lock, [&] { return running_threads_ == 0; });
  }
  T_ASC_Network* net = static_cast<T_ASC_Network*>(network_);
  ASC_dropNetwork(&net);
  network_ = nullptr;
  spdlog::info("DICOM: stopped accepting associations");
}

void DicomServer::accept_loop() {
  T_ASC_Network* net = static_cast<T_ASC_Network*>(network_);
  while (!stopping_) {
    T_ASC_Association* assoc = nullptr;
    // Poll with a 1 s timeout so that stop() is noticed promptly.
    OFCondition cond =
        ASC_receiveAssociation(net, &assoc, static_cast<long>(options_.max_pdu), nullptr, nullptr, OFFalse, DUL_NOBLOCK, 1);
    if (cond == DUL_NOASSOCIATIONREQUEST) {
      if (assoc) ASC_destroyAssociation(&assoc);
      continue;
    }
    if (cond.bad()) {
      char host[256] = "?";
      if (assoc && assoc->params) ASC_getPresentationAddresses(assoc->params, host, sizeof host, nullptr, 0);
      spdlog::warn("DICOM: bad association request from {}: {}", host, cond.text());
      ++counters_.associations_failed;
      if (assoc) {
        ASC_dropAssociation(assoc);
        ASC_destroyAssociation(&assoc);
      }
      continue;
    }
    {
      std::lock_guard<std::mutex> lock(threads_mu_);
      ++running_threads_;
    }
    std::thread([this, assoc] {
      serve_association(assoc);
      std::lock_guard<std::mutex> lock(threads_mu_);
      --running_threads_;
      threads_cv_.notify_all();
    }).detach();
  }
}

std::string DicomServer::refusal_reason(const Peer& peer) {
  if (!options_.allowed_peers.empty()) {
    bool allowed = false;
    for (const auto& p : options_.allowed_peers) {
      if ((p.ae_title.empty() || same_ae(p.ae_title, peer.calling_ae)) && (p.host.empty() || p.host == peer.host)) {
        allowed = true;
        break;
      }
    }
    if (!allowed) return "calling AE/host not in dicom.allowed_peers";
  }
  return "";
}

void DicomServer::serve_association(void* handle) {
  T_ASC_Association* assoc = static_cast<T_ASC_Association*>(handle);
  char calling[17] = {0}, called[17] = {0}, host[256] = {0};
  ASC_getAPTitles(assoc->params, calling, sizeof calling, called, sizeof called, nullptr, 0);
  ASC_getPresentationAddresses(assoc->params, host, sizeof host, nullptr, 0);
  Peer peer{calling, called, host};
  // The presentation address is "host:port"? DCMTK gives the bare host for
  // acceptors; strip a port if one is present.
  if (auto colon = peer.host.rfind(':'); colon != std::string::npos && peer.host.find(':') == colon)
    peer.host = peer.host.substr(0, colon);

  auto finish = [&] {
    ASC_dropSCPAssociation(assoc);
    ASC_destroyAssociation(&assoc);
  };

  // Association policy, in the order a PACS administrator would debug it.
  if (!same_ae(peer.called_ae, options_.ae_title)) {
    spdlog::warn("DICOM: refused association from {} calling_ae={}: called AE '{}' is not '{}'", peer.host,
                 peer.calling_ae, peer.called_ae, options_.ae_title);
    reject(assoc, ASC_RESULT_REJECTEDPERMANENT, ASC_REASON_SU_CALLEDAETITLENOTRECOGNIZED);
    ++counters_.associations_refused;
    return finish();
  }
  if (std::string why = refusal_reason(peer); !why.empty()) {
    spdlog::warn("DICOM: refused association from {} calling_ae={}: {}", peer.host, peer.calling_ae, why);
    reject(assoc, ASC_RESULT_REJECTEDPERMANENT, ASC_REASON_SU_CALLINGAETITLENOTRECOGNIZED);
    ++counters_.associations_refused;
    return finish();
  }
  if (counters_.associations_active.load() >= options_.max_associations) {
    spdlog::warn("DICOM: refused association from {} calling_ae={}: {} associations already active (dicom.max_associations)",
                 peer.host, peer.calling_ae, options_.max_associations);
    reject(assoc, ASC_RESULT_REJECTEDTRANSIENT, ASC_REASON_SP_PRES_LOCALLIMITEXCEEDED);
    ++counters_.associations_refused;
    return finish();
  }
  if (admission_) {
    if (std::string why = admission_(); !why.empty()) {
      spdlog::error("DICOM: refused association from {} calling_ae={}: {}", peer.host, peer.calling_ae, why);
      reject(assoc, ASC_RESULT_REJECTEDTRANSIENT, ASC_REASON_SP_PRES_LOCALLIMITEXCEEDED);
      ++counters_.associations_refused;
      return finish();
    }
  }

  OFCondition cond = negotiate_presentation_contexts(assoc->params);
  if (cond.good()) cond = ASC_acknowledgeAssociation(assoc);
  if (cond.bad()) {
    spdlog::warn("DICOM: association from {} calling_ae={} failed during negotiation: {}", peer.host,
                 peer.calling_ae, cond.text());
    ++counters_.associations_failed;
    return finish();
  }
  ++counters_.associations_accepted;
  ++counters_.associations_active;
  spdlog::debug("DICOM: association accepted from {} calling_ae={} ({} presentation contexts accepted)", peer.host,
                peer.calling_ae, ASC_countAcceptedPresentationContexts(assoc->params));

  int idle_seconds = 0;
  bool open = true;
  while (open) {
    T_DIMSE_Message msg;
    T_ASC_PresentationContextID pres_id = 0;
    // Short polls so that a stop request is noticed between commands.
    cond = DIMSE_receiveCommand(assoc, DIMSE_NONBLOCKING, 1, &pres_id, &msg, nullptr);
    if (cond == DIMSE_NODATAAVAILABLE) {
      if (stopping_) {
        spdlog::info("DICOM: shutting down: aborting idle association from {} calling_ae={}", peer.host,
                     peer.calling_ae);
        ASC_abortAssociation(assoc);
        break;
      }
      if (++idle_seconds >= options_.dimse_timeout_seconds) {
        spdlog::warn("DICOM: association from {} calling_ae={} idle for {} s, aborted", peer.host, peer.calling_ae,
                     idle_seconds);
        ASC_abortAssociation(assoc);
        ++counters_.associations_failed;
        break;
      }
      continue;
    }
    idle_seconds = 0;
    if (cond == DUL_PEERREQUESTEDRELEASE) {
      ASC_acknowledgeRelease(assoc);
      break;
    }
    if (cond == DUL_PEERABORTEDASSOCIATION) {
      spdlog::info("DICOM: association from {} calling_ae={} aborted by peer", peer.host, peer.calling_ae);
      break;
    }
    if (cond.bad()) {
      spdlog::warn("DICOM: association from {} calling_ae={} failed: {}", peer.host, peer.calling_ae, cond.text());
      ++counters_.associations_failed;
      ASC_abortAssociation(assoc);
      break;
    }
    switch (msg.CommandField) {
      case DIMSE_C_ECHO_RQ:
        ++counters_.echoes;
        cond = DIMSE_sendEchoResponse(assoc, pres_id, &msg.msg.CEchoRQ, STATUS_Success, nullptr);
        if (cond.bad()) open = false;
        break;
      case DIMSE_C_STORE_RQ:
        open = handle_store(assoc, &msg, pres_id, peer);
        break;
      default:
        spdlog::warn("DICOM: association from {} calling_ae={}: unsupported DIMSE command 0x{:04x}, aborting",
                     peer.host, peer.calling_ae, static_cast<unsigned>(msg.CommandField));
        ASC_abortAssociation(assoc);
        ++counters_.associations_failed;
        open = false;
    }
  }
  --counters_.associations_active;
  finish();
}

bool DicomServer::handle_store(void* handle, void* message, unsigned char pres_id, const Peer& peer) {
  T_ASC_Association* assoc = static_cast<T_ASC_Association*>(handle);
  T_DIMSE_C_StoreRQ& req = static_cast<T_DIMSE_Message*>(message)->msg.CStoreRQ;
  DcmDataset* raw = nullptr;
  T_ASC_PresentationContextID data_pres_id = pres_id;
  OFCondition cond =
      DIMSE_receiveDataSetInMemory(assoc, DIMSE_BLOCKING, options_.dimse_timeout_seconds, &data_pres_id, &raw, nullptr, nullptr);
  std::unique_ptr<DcmDataset> dataset(raw);

  T_DIMSE_C_StoreRSP rsp;
  std::memset(&rsp, 0, sizeof rsp);
  rsp.MessageIDBeingRespondedTo = req.MessageID;
  OFStandard::strlcpy(rsp.AffectedSOPClassUID, req.AffectedSOPClassUID, sizeof rsp.AffectedSOPClassUID);
  OFStandard::strlcpy(rsp.AffectedSOPInstanceUID, req.AffectedSOPInstanceUID, sizeof rsp.AffectedSOPInstanceUID);
  rsp.DataSetType = DIMSE_DATASET_NULL;
  rsp.opts = O_STORE_AFFECTEDSOPCLASSUID | O_STORE_AFFECTEDSOPINSTANCEUID;

  StoreResult result;
  if (cond.bad() || !dataset) {
    if (cond == DUL_PEERABORTEDASSOCIATION || cond == DUL_NETWORKCLOSED || cond == DIMSE_READPDVFAILED ||
        cond == DUL_READTIMEOUT || cond.code() == DULC_NETWORKCLOSED) {
      spdlog::warn("DICOM: C-STORE sop={} calling_ae={}: connection lost while receiving: {}",
                   req.AffectedSOPInstanceUID, peer.calling_ae, cond.text());
      ++counters_.instances_failed;
      ++counters_.associations_failed;
      return false;
    }
    result = {kStoreCannotUnderstand, std::string("cannot parse data set: ") + cond.text()};
  } else {
    T_ASC_PresentationContext pc;
    ASC_findAcceptedPresentationContext(assoc->params, data_pres_id, &pc);
    counters_.bytes_received += dataset->getLength(DcmXfer(pc.acceptedTransferSyntax).getXfer());
    ReceivedInstance instance{peer, req.AffectedSOPClassUID, req.AffectedSOPInstanceUID,
                              pc.acceptedTransferSyntax, *dataset};
    try {
      result = sink_.store(instance);
    } catch (const std::exception& e) {
      result = {kStoreOutOfResources, e.what()};
    }
  }
  rsp.DimseStatus = result.status;
  if (result.status == kStoreSuccess) {
    ++counters_.instances_stored;
  } else {
    ++counters_.instances_failed;
    spdlog::warn("DICOM: C-STORE sop={} calling_ae={} answered 0x{:04X}: {}", req.AffectedSOPInstanceUID,
                 peer.calling_ae, result.status, result.error_comment);
  }
  std::unique_ptr<DcmDataset> detail;
  if (!result.error_comment.empty()) {
    detail = std::make_unique<DcmDataset>();
    detail->putAndInsertString(DCM_ErrorComment, result.error_comment.substr(0, 64).c_str());
  }
  DcmDataset* detail_ptr = detail.get();
  cond = DIMSE_sendStoreResponse(assoc, pres_id, &req, &rsp, detail_ptr);
  if (cond.bad()) {
    spdlog::warn("DICOM: C-STORE sop={} calling_ae={}: cannot send response: {}", req.AffectedSOPInstanceUID,
                 peer.calling_ae, cond.text());
    return false;
  }
  return true;
}

}  // namespace firstread::scp
