// STOW-RS (PS3.18 10.5): POST /dicomweb/studies[/{study}] with a
// multipart/related; type="application/dicom" body. Each part is written into
// a new (unnamed) file of the storage volume as it arrives (a 2 GB upload never
// sits in memory), then handed to the C-STORE path (ingest::InstanceIngest::
// store_file: the same validation, naming, fsync and commit as finish_file):
// a part followed by another is made durable on its own thread (a few at a
// time) while the next one streams in; the last part (the only one, for a
// client that sends one instance per request) is made durable on the request's
// own handler thread once the body has ended, with no hand-over.
// The answer comes at the end of the body: an instance is in
// ReferencedSOPSequence only once its file and row are durable; a failed one
// is in FailedSOPSequence with its reason. A connection cut mid-body leaves the
// instances completed before the cut stored (idempotent: send them again) and
// nothing of the part in flight.
#include <spdlog/spdlog.h>

#include <cerrno>
#include <cstring>
#include <algorithm>
#include <deque>
#include <set>
#include <future>
#include <memory>
#include <vector>

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcistrmb.h>

#include "app/http/api.h"
#include "app/http/dicomweb_multipart.h"
#include "ingest/instance_ingest.h"

namespace firstread::app::http {
namespace {

constexpr size_t kReadChunk = 1 << 20;
constexpr size_t kMaxInFlight = 4;                   // parts being made durable while the next streams in
constexpr uint64_t kFreeSpaceCheckBytes = 64 << 20;  // re-check the free space every 64 MiB of a part

json attr(const char* vr, const json& value) { return {{"vr", vr}, {"Value", json::array({value})}}; }

std::string hex4(uint16_t v) {
  char buf[8];
  snprintf(buf, sizeof buf, "%04X", v);
  return buf;
}

constexpr size_t kHeadBytes = 64 * 1024;  // of each part, kept to name a part refused before it was read

// The SOP Class and Instance UIDs at the start of a PS3.10 file (what of it
// parses), for the FailedSOPSequence item of a part that was not stored.
void uids_from_head(const std::string& head, ingest::FileStoreResult& r) {
  DcmInputBufferStream in;
  in.setBuffer(head.data(), static_cast<offile_off_t>(head.size()));
  in.setEos();
  DcmFileFormat file;
  file.transferInit();
  file.read(in, EXS_Unknown, EGL_noChange, 4096);
  file.transferEnd();
  OFString v;
  if (file.getDataset()->findAndGetOFString(DCM_SOPClassUID, v).good()) r.sop_class_uid = v.c_str();
  if (file.getDataset()->findAndGetOFString(DCM_SOPInstanceUID, v).good()) r.sop_instance_uid = v.c_str();
}

// One part being received, into a new file of the storage volume.
struct Spool {
  std::shared_ptr<storage::FileStorage::NewFile> file;  // shared with the task that makes it durable
  uint64_t written = 0, checked_at = 0;
  std::string head;  // the part's first bytes
  scp::StoreResult refusal;  // set when the part is refused before it is complete
  bool refused = false;
};

class StowReceiver {
 public:
  StowReceiver(Context& ctx, const ApiRequest& req, std::string study)
      : ctx_(ctx), req_(req), study_(std::move(study)) {}
  // A body cut after complete parts still stores them (unacknowledged: the client sends them again).
  ~StowReceiver() {
    store_deferred_here();
    drain();
  }

  void begin_part(const std::map<std::string, std::string>& headers) {
    spool_ = Spool{};
    auto type = headers.find("content-type");
    if (type != headers.end()) {
      MediaType m;
      try {
        m = parse_media_type(type->second);
      } catch (const std::invalid_argument& e) {
        return refuse(scp::kStoreCannotUnderstand, e.what());
      }
      if (m.type != "application/dicom")
        return refuse(scp::kStoreCannotUnderstand, "part of type " + m.type + ": only application/dicom is stored");
    }
    // The request's first part: stow_instances has just checked the room.
    if (parts_ > 0) {
      if (const std::string room = ctx_.admission ? ctx_.admission() : ""; !room.empty())
        return refuse(scp::kStoreOutOfResources, room);
    }
    start_deferred();  // a part follows it: the previous one is made durable beside this one's reading
    try {
      spool_.file = ctx_.ingest->storage().create_file();
    } catch (const std::exception& e) {
      refuse(scp::kStoreOutOfResources, e.what());
    }
  }

  void part_data(const char* data, size_t size) {
    if (spool_.head.size() < kHeadBytes) spool_.head.append(data, std::min(size, kHeadBytes - spool_.head.size()));
    if (spool_.refused) return;
    try {
      spool_.file->write(data, size);
    } catch (const std::exception& e) {
      return refuse(scp::kStoreOutOfResources, std::string("writing the part: ") + e.what());
    }
    spool_.written += size;
    if (spool_.written - spool_.checked_at >= kFreeSpaceCheckBytes) {
      spool_.checked_at = spool_.written;
      if (const std::string room = ctx_.admission ? ctx_.admission() : ""; !room.empty())
        refuse(scp::kStoreOutOfResources, room);
    }
  }

  void end_part() {
    ++parts_;
    if (spool_.refused) {
      ingest::FileStoreResult r;
      r.result = spool_.refusal;
      uids_from_head(spool_.head, r);
      results_.push_back(ready(r));
      return;
    }
    ingest::FileInstance instance{study_, {"STOW-RS", "", req_.remote}};
    ingest::InstanceIngest* sink = ctx_.ingest;
    deferred_ = std::packaged_task<ingest::FileStoreResult()>(
        [sink, file = std::move(spool_.file), instance] { return sink->store_file(*file, instance); });
    results_.push_back(deferred_.get_future());
  }

  int parts() const { return parts_; }

  // Waits for every part and builds the PS3.18 answer.
  ApiResponse answer() {
    store_deferred_here();  // the last part, on the request's own thread
    drain();
    json referenced = json::array(), failed = json::array();
    std::set<std::string> studies;
    for (auto& f : results_) {
      const ingest::FileStoreResult r = f.get();
      if (r.result.status == scp::kStoreSuccess) {
        studies.insert(r.study_uid);
        referenced.push_back({{"00081150", attr("UI", r.sop_class_uid)},
                              {"00081155", attr("UI", r.sop_instance_uid)},
                              {"00081190", attr("UR", retrieve_url(r))}});
        continue;
      }
      json item = {{"00081197", attr("US", r.result.status)}};
      if (!r.sop_class_uid.empty()) item["00081150"] = attr("UI", r.sop_class_uid);
      if (!r.sop_instance_uid.empty()) item["00081155"] = attr("UI", r.sop_instance_uid);
      failed.push_back(item);
      spdlog::warn("stow-rs: from {}: part refused with {}: {}", req_.remote, hex4(r.result.status),
                   r.result.error_comment);
    }
    json body = json::object();
    if (studies.size() == 1 || !study_.empty())
      body["00081190"] = attr("UR", req_.base_url + "/dicomweb/studies/" + (study_.empty() ? *studies.begin() : study_));
    if (!failed.empty()) body["00081198"] = {{"vr", "SQ"}, {"Value", failed}};
    if (!referenced.empty()) body["00081199"] = {{"vr", "SQ"}, {"Value", referenced}};
    // 200 all stored, 202 some, 409 none (PS3.18 Table 10.5.3-2).
    const unsigned status = failed.empty() ? 200 : referenced.empty() ? 409 : 202;
    spdlog::info("stow-rs: from {}: {} parts, {} stored, {} refused", req_.remote, results_.size(), referenced.size(),
                 failed.size());
    ApiResponse r = json_response(status, body);
    r.content_type = "application/dicom+json";
    return r;
  }

 private:
  using Result = std::future<ingest::FileStoreResult>;

  static Result ready(const ingest::FileStoreResult& r) {
    std::promise<ingest::FileStoreResult> p;
    p.set_value(r);
    return p.get_future();
  }

  void refuse(uint16_t status, const std::string& why) {
    spool_.refused = true;
    spool_.refusal = {status, why};
    spool_.file.reset();  // an unnamed file: its data is gone
  }

  // The part completed last goes to its own thread, at most kMaxInFlight at once.
  void start_deferred() {
    if (!deferred_.valid()) return;
    while (in_flight() >= kMaxInFlight) running_.front().wait();
    running_.push_back(std::async(std::launch::async, std::move(deferred_)));
  }
  void store_deferred_here() {
    if (!deferred_.valid()) return;
    auto task = std::move(deferred_);  // deferred_ no longer valid: it runs once
    task();
  }
  size_t in_flight() {
    running_.erase(std::remove_if(running_.begin(), running_.end(),
                                  [](const std::future<void>& f) {
                                    return f.wait_for(std::chrono::seconds(0)) == std::future_status::ready;
                                  }),
                   running_.end());
    return running_.size();
  }
  // Every part started is finished (a part never started is dropped with its unnamed file).
  void drain() {
    for (auto& f : running_)
      if (f.valid()) f.wait();
  }

  std::string retrieve_url(const ingest::FileStoreResult& r) const {
    return req_.base_url + "/dicomweb/studies/" + r.study_uid + "/series/" + r.series_instance_uid + "/instances/" +
           r.sop_instance_uid;
  }

  Context& ctx_;
  const ApiRequest& req_;
  std::string study_;
  Spool spool_;
  std::deque<Result> results_;                         // one per part, in order
  std::packaged_task<ingest::FileStoreResult()> deferred_;  // the part completed last, not yet started
  std::deque<std::future<void>> running_;              // parts started on their own threads
  int parts_ = 0;
};

}  // namespace

ApiResponse stow_instances(Context& ctx, const ApiRequest& req) {
  std::string study;
  if (auto it = req.path_params.find("study"); it != req.path_params.end()) {
    study = it->second;
    require_uid("Study Instance UID", study);
  }
  if (!ctx.ingest) throw HttpError(503, "this node does not receive instances (serve --role worker)");
  MediaType type;
  try {
    type = parse_media_type(req.content_type);
  } catch (const std::invalid_argument& e) {
    throw HttpError(415, std::string("Content-Type: ") + e.what());
  }
  if (type.type != "multipart/related")
    throw HttpError(415, "Content-Type must be multipart/related; type=\"application/dicom\", not " + type.type);
  const std::string part_type = parse_media_type(type.param("type").empty() ? "application/dicom" : type.param("type")).type;
  if (part_type != "application/dicom")
    throw HttpError(415, "multipart/related type " + part_type +
                             " is not stored here: send PS3.10 files as type=\"application/dicom\"");
  if (type.param("boundary").empty()) throw HttpError(400, "Content-Type multipart/related has no boundary");
  if (const std::string room = ctx.admission ? ctx.admission() : ""; !room.empty())
    throw HttpError(503, "not storing: " + room);

  StowReceiver receiver(ctx, req, study);
  MultipartReader reader(type.param("boundary"),
                         {[&](const auto& h) { receiver.begin_part(h); },
                          [&](const char* d, size_t n) { receiver.part_data(d, n); }, [&] { receiver.end_part(); }});
  // One read buffer per handler thread, kept: not a fresh (zeroed, page-faulted) MiB per request.
  thread_local const std::unique_ptr<char[]> chunk(new char[kReadChunk]);
  try {
    for (size_t n; (n = req.read_body(chunk.get(), kReadChunk)) > 0;) reader.feed(chunk.get(), n);
  } catch (const std::invalid_argument& e) {
    throw HttpError(400, std::string("malformed multipart body: ") + e.what());
  }
  if (!reader.finished())
    throw HttpError(400, "the multipart body ends before its close delimiter (--boundary--) after " +
                             std::to_string(receiver.parts()) + " complete part(s)");
  if (receiver.parts() == 0) throw HttpError(400, "the multipart body has no parts");
  return receiver.answer();
}

}  // namespace firstread::app::http
