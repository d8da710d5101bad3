#include "ingest/instance_ingest.h"

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcspchrs.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcistrmb.h>
#include <dcmtk/dcmdata/dcmetinf.h>
#include <dcmtk/dcmdata/dcostrma.h>
#include <dcmtk/dcmdata/dcuid.h>
#include <dcmtk/dcmdata/dcxfer.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <future>
#include <optional>
#include <filesystem>
#include <functional>
#include <set>
#include <thread>
#include <vector>
#include <stdexcept>

#include "db/stored_files.h"
#include "dicom/text.h"
#include "dicom/uid.h"
#include "ingest/public_elements.h"

namespace firstread::ingest {
namespace {

std::string get_string(DcmDataset& ds, const DcmTagKey& tag) {
  OFString value;
  if (ds.findAndGetOFStringArray(tag, value).good()) {
    std::string s = value.c_str();
    while (!s.empty() && (s.back() == ' ' || s.back() == '\0')) s.pop_back();
    return s;
  }
  return "";
}

std::optional<int> get_int(DcmDataset& ds, const DcmTagKey& tag) {
  Uint16 u16;
  if (ds.findAndGetUint16(tag, u16).good()) return static_cast<int>(u16);
  Sint32 s32;
  if (ds.findAndGetSint32(tag, s32).good()) return static_cast<int>(s32);
  std::string s = get_string(ds, tag);
  if (s.empty()) return std::nullopt;
  try {
    return std::stoi(s);
  } catch (...) {
    return std::nullopt;
  }
}

// The Error Comment holds 64 characters: the cause (the end of the message,
// after the paths) rather than the start.
std::string storage_comment(const std::string& error) {
  const auto colon = error.rfind(": ");
  return "storage: " + (colon == std::string::npos ? error : error.substr(colon + 2));
}

// The index's text columns are UTF-8 (PostgreSQL text): values are converted
// from the data set's Specific Character Set (ISO_IR 100 "M\xfcller" becomes
// "Müller"), and what cannot be converted (no or a wrong character set
// declared) is repaired to U+FFFD, so that such an instance is stored and
// indexed rather than refused on every resend.
class IndexText {
 public:
  explicit IndexText(DcmDataset& ds) {
    OFString charset;
    ds.findAndGetOFStringArray(DCM_SpecificCharacterSet, charset);
    convertible_ = !charset.empty() && charset != "ISO_IR 192" && converter_.selectCharacterSet(ds).good();
  }
  // delimiters: the value's own separators, kept as they are (PN: "\\^=").
  std::string operator()(const std::string& value, const char* delimiters = "\\") {
    if (convertible_ && !value.empty()) {
      OFString converted;
      if (converter_.convertString(OFString(value.c_str(), value.size()), converted, delimiters).good())
        return dicom::sanitize_utf8_text(std::string(converted.c_str(), converted.length()));
    }
    return dicom::sanitize_utf8_text(value);
  }

 private:
  DcmSpecificCharacterSet converter_;
  bool convertible_ = false;
};

void require_uid(const std::string& value, const char* name) {
  if (value.empty()) throw std::invalid_argument(std::string("missing ") + name);
  if (!dicom::is_valid_uid(value)) throw std::invalid_argument(std::string("invalid ") + name + " '" + value + "'");
}

}  // namespace

db::InstanceRecord describe_instance(DcmDataset& ds, const std::string& transfer_syntax_uid) {
  db::InstanceRecord r;
  r.sop_instance_uid = get_string(ds, DCM_SOPInstanceUID);
  r.sop_class_uid = get_string(ds, DCM_SOPClassUID);
  r.study_uid = get_string(ds, DCM_StudyInstanceUID);
  r.series_instance_uid = get_string(ds, DCM_SeriesInstanceUID);
  require_uid(r.sop_instance_uid, "SOP Instance UID");
  require_uid(r.sop_class_uid, "SOP Class UID");
  require_uid(r.study_uid, "Study Instance UID");
  require_uid(r.series_instance_uid, "Series Instance UID");
  r.transfer_syntax_uid = transfer_syntax_uid;
  IndexText text(ds);
  r.modality = text(get_string(ds, DCM_Modality));
  r.body_part = text(get_string(ds, DCM_BodyPartExamined));
  r.series_number = get_int(ds, DCM_SeriesNumber);
  r.instance_number = get_int(ds, DCM_InstanceNumber);
  r.rows = get_int(ds, DCM_Rows);
  r.columns = get_int(ds, DCM_Columns);
  r.frames = get_int(ds, DCM_NumberOfFrames);
  if (!r.frames && r.rows) r.frames = 1;
  r.patient_id = text(get_string(ds, DCM_PatientID));
  r.patient_name = text(get_string(ds, DCM_PatientName), "\\^=");
  r.accession_number = text(get_string(ds, DCM_AccessionNumber));
  r.study_date = text(get_string(ds, DCM_StudyDate));
  return r;
}

namespace {

// The header is parsed up to this tag: the first one after every attribute
// describe_instance() reads (the highest is Columns, (0028,0011)). What
// follows (the rest of group 0028, private groups such as a CT's 0029 and
// 0043, the Pixel Data) stays unparsed: DCMTK looks every element up in its
// data dictionary, and a private tag misses the hash and scans the list of
// repeating tags (8 % of the service's CPU with 4 senders, session 4).
// The bytes are stored as sent either way.
const DcmTagKey kAfterIndexedAttributes(0x0028, 0x0012);

// The header of a data set as the index needs it, or why it is refused.
struct ParsedHeader {
  db::InstanceRecord record;
  std::optional<scp::StoreResult> refused;
};

// Parses the first `size` bytes of a file (File Meta Information, then the
// data set) up to kAfterIndexedAttributes, in memory. nullopt when they do not
// reach a tag at or after it and are not the whole file: the header is longer
// than the bytes kept, and the file must be read instead.
std::optional<ParsedHeader> parse_header(const char* data, size_t size, bool whole,
                                         const std::string& transfer_syntax_uid) {
  // Private elements are left out before DCMTK parses (see public_elements.h);
  // where that walk does not apply, DCMTK parses the bytes as they are.
  const DcmXfer xfer(transfer_syntax_uid.c_str());
  std::optional<PublicElements> kept;
  if (xfer.isLittleEndian())  // a deflated data set is never parsed from memory
    kept = public_elements_before(data, size, xfer.isExplicitVR(), kAfterIndexedAttributes.getGroup(),
                                  kAfterIndexedAttributes.getElement());
  if (kept) {
    if (!kept->reached_stop && !whole) return std::nullopt;
    data = kept->bytes.data();
    size = kept->bytes.size();
    whole = true;  // every byte left is wanted
  }
  DcmInputBufferStream in;
  in.setBuffer(data, static_cast<offile_off_t>(size));
  in.setEos();
  DcmFileFormat ff;
  ff.transferInit();
  const OFCondition cond =
      ff.readUntilTag(in, EXS_Unknown, EGL_noChange, DCM_MaxReadLength, kAfterIndexedAttributes);
  ff.transferEnd();
  // Stopped before the end of the bytes: at kAfterIndexedAttributes (or a later tag).
  const bool reached_stop = cond.good() && in.tell() < static_cast<offile_off_t>(size);
  if (!whole && !reached_stop) return std::nullopt;
  ParsedHeader h;
  if (cond.bad()) {
    h.refused = scp::StoreResult{scp::kStoreCannotUnderstand, std::string("cannot parse data set: ") + cond.text()};
    return h;
  }
  try {
    h.record = describe_instance(*ff.getDataset(), transfer_syntax_uid);
  } catch (const std::invalid_argument& e) {
    h.refused = scp::StoreResult{scp::kStoreCannotUnderstand, e.what()};
  }
  return h;
}

// Bytes of a streamed file kept in memory for its header: enough for the
// attributes before the Pixel Data of nearly every image.
constexpr size_t kHeaderPrefix = 64 * 1024;

// DCMTK's output stream into a NewFile (a null file: a stream that failed to
// open). The first kHeaderPrefix bytes are kept and, once they are all there,
// parsed while the rest of the data set is still arriving.
class FileConsumer : public DcmConsumer {
 public:
  FileConsumer(storage::FileStorage::NewFile* file, std::string error, std::string transfer_syntax_uid = "")
      : file_(file), error_(std::move(error)), transfer_syntax_uid_(std::move(transfer_syntax_uid)) {
    if (!transfer_syntax_uid_.empty()) prefix_.reserve(kHeaderPrefix);
  }
  OFBool good() const override { return error_.empty(); }
  OFCondition status() const override {
    return good() ? EC_Normal : makeOFCondition(OFM_dcmdata, 901, OF_error, error_.c_str());
  }
  OFBool isFlushed() const override { return OFTrue; }
  offile_off_t avail() const override { return good() ? offile_off_t{1} << 30 : 0; }
  offile_off_t write(const void* buf, offile_off_t buflen) override {
    if (!good()) return 0;
    try {
      file_->write(buf, static_cast<size_t>(buflen));
    } catch (const std::exception& e) {
      error_ = e.what();
      return 0;
    }
    if (!transfer_syntax_uid_.empty() && !header_ && prefix_.size() < kHeaderPrefix) {
      const size_t n = std::min(kHeaderPrefix - prefix_.size(), static_cast<size_t>(buflen));
      prefix_.append(static_cast<const char*>(buf), n);
      if (prefix_.size() == kHeaderPrefix) header_ = parse_header(prefix_.data(), prefix_.size(), false, transfer_syntax_uid_);
    }
    return buflen;
  }
  void flush() override {}
  const std::string& error() const { return error_; }
  // The header once every byte has arrived: parsed from memory if the bytes
  // kept reach the Pixel Data or are the whole file, else nullopt.
  std::optional<ParsedHeader> header(uint64_t file_size) {
    if (!header_ && !transfer_syntax_uid_.empty() && prefix_.size() == file_size)
      header_ = parse_header(prefix_.data(), prefix_.size(), true, transfer_syntax_uid_);
    return header_;
  }

 private:
  storage::FileStorage::NewFile* file_;
  std::string error_;
  std::string transfer_syntax_uid_;  // empty: nothing kept
  std::string prefix_;
  std::optional<ParsedHeader> header_;
};

class ConsumerStream : public DcmOutputStream {
 public:
  explicit ConsumerStream(DcmConsumer* consumer) : DcmOutputStream(consumer) {}
};

struct FileOutput {
  FileOutput(storage::FileStorage::NewFile* file, std::string error, std::string transfer_syntax_uid = "")
      : consumer(file, std::move(error), std::move(transfer_syntax_uid)), stream(&consumer) {}
  FileConsumer consumer;
  ConsumerStream stream;
};

// The File Meta Information header DCMTK's storescp writes before a streamed
// data set, plus the calling AE as Source Application Entity Title.
OFCondition write_meta_header(DcmOutputStream& out, const scp::StoreRequest& r) {
  DcmMetaInfo meta;
  const Uint8 version[2] = {0, 1};
  meta.putAndInsertUint8Array(DCM_FileMetaInformationVersion, version, 2);
  meta.putAndInsertString(DCM_MediaStorageSOPClassUID, r.sop_class_uid.c_str());
  meta.putAndInsertString(DCM_MediaStorageSOPInstanceUID, r.sop_instance_uid.c_str());
  meta.putAndInsertString(DCM_TransferSyntaxUID, r.transfer_syntax_uid.c_str());
  meta.putAndInsertString(DCM_ImplementationClassUID, OFFIS_IMPLEMENTATION_CLASS_UID);
  meta.putAndInsertString(DCM_ImplementationVersionName, OFFIS_DTK_IMPLEMENTATION_VERSION_NAME);
  if (!r.peer.calling_ae.empty())
    meta.putAndInsertString(DCM_SourceApplicationEntityTitle, r.peer.calling_ae.c_str());
  OFCondition cond =
      meta.computeGroupLengthAndPadding(EGL_withGL, EPD_noChange, META_HEADER_DEFAULT_TRANSFERSYNTAX, EET_ExplicitLength);
  if (cond.bad()) return cond;
  meta.transferInit();
  cond = meta.write(out, META_HEADER_DEFAULT_TRANSFERSYNTAX, EET_ExplicitLength, nullptr);
  meta.transferEnd();
  return cond;
}

std::optional<scp::StoreResult> mismatch(const db::InstanceRecord& record, const std::string& sop_class_uid,
                                         const std::string& sop_instance_uid) {
  if (record.sop_instance_uid != sop_instance_uid)
    return scp::StoreResult{scp::kStoreDataSetDoesNotMatchSopClass,
                            "SOP Instance UID in data set differs from the C-STORE request"};
  if (record.sop_class_uid != sop_class_uid)
    return scp::StoreResult{scp::kStoreDataSetDoesNotMatchSopClass,
                            "SOP Class UID in data set differs from the C-STORE request"};
  return std::nullopt;
}

scp::StoreResult storage_failure(const std::string& sop, const scp::Peer& peer, const std::string& error) {
  spdlog::error("ingest: sop={} calling_ae={}: storing failed: {}", sop, peer.calling_ae, error);
  return {scp::kStoreOutOfResources, storage_comment(error)};
}

class StreamedInstance : public scp::InstanceStream {
 public:
  StreamedInstance(InstanceIngest& ingest, storage::FileStorage& storage, const scp::StoreRequest& request)
      : ingest_(ingest), request_(request) {
    std::string error;
    try {
      file_ = storage.create_file();
    } catch (const std::exception& e) {
      error = e.what();
    }
    // A deflated data set is parsed from the file (its bytes in memory are compressed).
    const bool deflated = request_.transfer_syntax_uid == UID_DeflatedExplicitVRLittleEndianTransferSyntax;
    output_ = std::make_unique<FileOutput>(file_.get(), error, deflated ? "" : request_.transfer_syntax_uid);
    if (file_) {
      const OFCondition cond = write_meta_header(output_->stream, request_);
      if (cond.bad() && output_->consumer.good())
        output_ = std::make_unique<FileOutput>(nullptr, std::string("cannot write the meta header: ") + cond.text());
    }
  }
  DcmOutputStream& data() override { return output_->stream; }
  scp::StoreResult write_failure() const override {
    return storage_failure(request_.sop_instance_uid, request_.peer, output_->consumer.error());
  }
  scp::StoreResult finish() override {
    if (!file_ || !output_->consumer.good()) return write_failure();
    const std::optional<ParsedHeader> header = output_->consumer.header(file_->size());
    if (!header) {
      spdlog::debug("ingest: sop={}: header longer than {} bytes, read back from the file", request_.sop_instance_uid,
                    kHeaderPrefix);
      return ingest_.finish_file(*file_, request_);
    }
    if (header->refused) return *header->refused;
    db::InstanceRecord record = header->record;
    return ingest_.finish_described(*file_, record, request_);
  }

 private:
  InstanceIngest& ingest_;
  scp::StoreRequest request_;
  std::unique_ptr<storage::FileStorage::NewFile> file_;
  std::unique_ptr<FileOutput> output_;
};

}  // namespace

InstanceIngest::InstanceIngest(storage::FileStorage& storage, db::InstanceIndex& index)
    : storage_(storage), index_(index), committer_(index) {
  if (storage_.names_durable_with_file())
    spdlog::info("ingest: storage {} is {}: one fsync makes a received file and its new name durable",
                 storage_.root(), storage_.file_system());
  else
    spdlog::info("ingest: storage {} is {}: a received file's fsync is followed by its directory's",
                 storage_.root(), storage_.file_system().empty() ? "of an unknown type" : storage_.file_system());
}

std::unique_ptr<scp::InstanceStream> InstanceIngest::open_stream(const scp::StoreRequest& request) {
  return std::make_unique<StreamedInstance>(*this, storage_, request);
}

scp::StoreResult InstanceIngest::finish_file(storage::FileStorage::NewFile& file, const scp::StoreRequest& request) {
  db::InstanceRecord record;
  try {
    file.flush();
    // The header only: values longer than this stay on disk (pixel data).
    DcmFileFormat ff;
    const OFCondition cond = ff.loadFileUntilTag(file.read_path().c_str(), EXS_Unknown, EGL_noChange, 4096,
                                                 ERM_fileOnly, kAfterIndexedAttributes);
    if (cond.bad()) return {scp::kStoreCannotUnderstand, std::string("cannot parse data set: ") + cond.text()};
    record = describe_instance(*ff.getDataset(), request.transfer_syntax_uid);
  } catch (const std::invalid_argument& e) {
    return {scp::kStoreCannotUnderstand, e.what()};
  } catch (const std::exception& e) {
    return storage_failure(request.sop_instance_uid, request.peer, e.what());
  }
  return finish_described(file, record, request);
}

scp::StoreResult InstanceIngest::finish_described(storage::FileStorage::NewFile& file, db::InstanceRecord& record,
                                                  const scp::StoreRequest& request) {
  if (auto refused = mismatch(record, request.sop_class_uid, request.sop_instance_uid)) return *refused;
  record.calling_ae = request.peer.calling_ae;
  record.file_path =
      storage::FileStorage::instance_path(record.study_uid, record.series_instance_uid, record.sop_instance_uid);
  return commit(file, record, request.peer);
}

namespace {

// What store_file reads of a received file before it is named.
struct FileHeader {
  db::InstanceRecord record;
  std::string meta_sop_class_uid, meta_sop_instance_uid;
};

// File Meta Information and data set, values over 4 KiB left on disk. Throws
// std::invalid_argument naming what is wrong.
FileHeader read_file_header(const std::string& path) {
  DcmFileFormat file;
  // The header only, as finish_file reads it: the pixel data stays on disk.
  const OFCondition cond = file.loadFileUntilTag(path.c_str(), EXS_Unknown, EGL_noChange, 4096, ERM_fileOnly,
                                                 DCM_PixelData);
  if (cond.bad()) throw std::invalid_argument(std::string("not a readable DICOM PS3.10 file: ") + cond.text());
  DcmMetaInfo& meta = *file.getMetaInfo();
  OFString ts, sop_class, sop_instance;
  meta.findAndGetOFString(DCM_TransferSyntaxUID, ts);
  meta.findAndGetOFString(DCM_MediaStorageSOPClassUID, sop_class);
  meta.findAndGetOFString(DCM_MediaStorageSOPInstanceUID, sop_instance);
  if (ts.empty()) throw std::invalid_argument("File Meta Information has no Transfer Syntax UID");
  if (DcmXfer(ts.c_str()).getXfer() == EXS_Unknown)
    throw std::invalid_argument(std::string("unknown transfer syntax ") + ts.c_str());
  FileHeader h;
  h.record = describe_instance(*file.getDataset(), ts.c_str());
  h.meta_sop_class_uid = sop_class.c_str();
  h.meta_sop_instance_uid = sop_instance.c_str();
  return h;
}

}  // namespace

FileStoreResult InstanceIngest::store_file(storage::FileStorage::NewFile& file, const FileInstance& in) {
  FileStoreResult out;
  FileHeader header;
  try {
    file.flush();
    header = read_file_header(file.read_path());
  } catch (const std::invalid_argument& e) {
    out.result = {scp::kStoreCannotUnderstand, e.what()};
    return out;
  } catch (const std::exception& e) {
    out.result = storage_failure("?", in.peer, e.what());
    return out;
  }
  db::InstanceRecord& record = header.record;
  out.sop_class_uid = record.sop_class_uid;
  out.sop_instance_uid = record.sop_instance_uid;
  out.study_uid = record.study_uid;
  out.series_instance_uid = record.series_instance_uid;
  if (header.meta_sop_instance_uid != record.sop_instance_uid) {
    out.result = {scp::kStoreDataSetDoesNotMatchSopClass,
                  "Media Storage SOP Instance UID differs from the data set's SOP Instance UID"};
    return out;
  }
  if (header.meta_sop_class_uid != record.sop_class_uid) {
    out.result = {scp::kStoreDataSetDoesNotMatchSopClass,
                  "Media Storage SOP Class UID differs from the data set's SOP Class UID"};
    return out;
  }
  if (!in.required_study_uid.empty() && record.study_uid != in.required_study_uid) {
    out.result = {kStoreStudyUidMismatch, "Study Instance UID " + record.study_uid + " is not the study of the URL"};
    return out;
  }
  out.result = finish_described(file, record, {in.peer, record.sop_class_uid, record.sop_instance_uid,
                                               record.transfer_syntax_uid});
  return out;
}

scp::StoreResult InstanceIngest::store(const scp::ReceivedInstance& in) {
  db::InstanceRecord record;
  try {
    record = describe_instance(in.dataset, in.transfer_syntax_uid);
  } catch (const std::invalid_argument& e) {
    return {scp::kStoreCannotUnderstand, e.what()};
  }
  if (auto refused = mismatch(record, in.sop_class_uid, in.sop_instance_uid)) return *refused;
  record.calling_ae = in.peer.calling_ae;
  record.file_path =
      storage::FileStorage::instance_path(record.study_uid, record.series_instance_uid, record.sop_instance_uid);
  const E_TransferSyntax xfer = DcmXfer(in.transfer_syntax_uid.c_str()).getXfer();
  if (xfer == EXS_Unknown)
    return {scp::kStoreCannotUnderstand, "unknown transfer syntax " + in.transfer_syntax_uid};

  std::unique_ptr<storage::FileStorage::NewFile> file;
  try {
    file = storage_.create_file();
  } catch (const std::exception& e) {
    return storage_failure(record.sop_instance_uid, in.peer, e.what());
  }
  FileOutput out(file.get(), "");
  // The data set is written in the transfer syntax it arrived in: encapsulated
  // pixel data stays as the sender compressed it. The file format borrows the
  // received data set (no copy) and hands it back.
  DcmFileFormat ff(&in.dataset, OFFalse);
  ff.getMetaInfo()->putAndInsertString(DCM_SourceApplicationEntityTitle, in.peer.calling_ae.c_str());
  ff.transferInit();
  const OFCondition cond = ff.write(out.stream, xfer, EET_ExplicitLength, nullptr, EGL_recalcGL, EPD_noChange, 0, 0, 0,
                                    EWM_fileformat);
  ff.transferEnd();
  ff.getAndRemoveDataset();
  if (cond.bad() || !out.consumer.good())
    return storage_failure(record.sop_instance_uid, in.peer,
                           out.consumer.good() ? std::string("cannot write data set: ") + cond.text()
                                               : out.consumer.error());
  return commit(*file, record, in.peer);
}

scp::StoreResult InstanceIngest::commit(storage::FileStorage::NewFile& file, db::InstanceRecord& record,
                                        const scp::Peer& peer) {
  const auto t0 = std::chrono::steady_clock::now();
  try {
    file.flush();
  } catch (const std::exception& e) {
    return storage_failure(record.sop_instance_uid, peer, e.what());
  }
  record.file_size = static_cast<int64_t>(file.size());
  // Naming the file and its fsyncs wait on the disk; the database commit (on
  // the committer's thread, not waiting for its WAL flush) runs meanwhile.
  // Success is answered only when the file and its name are durable and the
  // row is committed. A failure of either answers a failure status; what the
  // other left behind is repaired here or by start-up reconciliation.
  std::future<db::GroupCommit::Committed> commit_row = committer_.submit(record);
  std::string file_error;
  try {
    storage_.link(file, record.file_path);
    storage_.sync(file);
  } catch (const std::exception& e) {
    file_error = e.what();
    // A new name whose data may not be on disk goes; a replaced file was
    // synced before the rename and stays.
    if (!file.replaced()) storage_.unlink_file(file);
  }
  const auto t1 = std::chrono::steady_clock::now();
  bool is_new = false;
  size_t group_rows = 0;
  std::string db_error;
  try {
    const auto committed = commit_row.get();
    is_new = committed.is_new;
    group_rows = committed.group_rows;
  } catch (const std::exception& e) {
    db_error = e.what();
  }
  const auto t2 = std::chrono::steady_clock::now();
  if (!file_error.empty()) {
    if (db_error.empty() && is_new && !file.replaced()) {
      try {
        index_.forget(record.sop_instance_uid);
      } catch (const std::exception& e) {
        spdlog::error("ingest: sop={}: cannot remove the row of the unstored file: {}", record.sop_instance_uid,
                      e.what());
      }
    }
    return storage_failure(record.sop_instance_uid, peer, file_error);
  }
  if (!db_error.empty()) {
    // The file is complete under its final name; reconciliation indexes it at the
    // next start, and the sender will retry since we answer a failure.
    spdlog::error("ingest: sop={} calling_ae={}: database commit failed: {}", record.sop_instance_uid,
                  peer.calling_ae, db_error);
    return {scp::kStoreOutOfResources, "database unavailable: file kept, send it again later"};
  }
  using ms = std::chrono::duration<double, std::milli>;
  spdlog::info(
      "ingest: stored sop={} calling_ae={} study={} modality={} size={} sync_ms={:.2f} total_ms={:.2f} group={}{}",
      record.sop_instance_uid, peer.calling_ae, record.study_uid, record.modality, record.file_size,
      ms(t1 - t0).count(), ms(t2 - t0).count(), group_rows, is_new ? "" : " (again: row refreshed)");
  return {};
}

namespace {

struct Stopped {};

// Seconds between the file's last write and `reference` (the start of the walk,
// when the rows were read): a file younger than the grace period at that time
// may belong to a row the cursor could not see yet.
double age_seconds(const std::string& abspath, std::filesystem::file_time_type reference) {
  std::error_code ec;
  const auto t = std::filesystem::last_write_time(abspath, ec);
  if (ec) return 0;
  return std::chrono::duration<double>(reference - t).count();
}

// Walks the files under `subdir` and the rows of the cursor together, both in
// byte order of the path: a file without a row goes to on_orphan, a settled row
// without a file to on_missing. Memory: one directory listing and one batch of rows.
void merge_walk(storage::FileStorage& storage, const std::string& subdir, db::StoredPathCursor& rows,
                const ReconcileOptions& options, const std::function<void(const std::string&)>& on_orphan,
                const std::function<void(const std::string&)>& on_missing) {
  std::string row;
  bool settled = false;
  bool have = rows.next(row, settled);
  storage.for_each_file(subdir, [&](const std::string& rel) {
    if (options.stop && options.stop->load()) throw Stopped{};
    while (have && row < rel) {
      if (settled) on_missing(row);
      have = rows.next(row, settled);
    }
    if (have && row == rel) {
      have = rows.next(row, settled);
      return;
    }
    on_orphan(rel);
  });
  for (; have; have = rows.next(row, settled))
    if (settled && row.rfind(subdir + "/", 0) == 0) on_missing(row);
}

bool index_orphan(storage::FileStorage& storage, db::InstanceIndex& index, const std::string& rel,
                  ReconcileReport& report) {
  DcmFileFormat file;
  OFCondition cond = file.loadFile(storage.absolute(rel).c_str());
  if (cond.bad()) {
    spdlog::error("reconcile: {} is not readable DICOM ({}); left in place", rel, cond.text());
    ++report.unreadable_files;
    return false;
  }
  // A file named but not yet synced when the power went may hold only the
  // start of its data (it was never acknowledged): an image without its pixel
  // data is such a file, not an instance to index.
  DcmDataset& ds = *file.getDataset();
  if (ds.tagExists(DCM_Rows) && !ds.tagExists(DCM_PixelData) && !ds.tagExists(DCM_FloatPixelData) &&
      !ds.tagExists(DCM_DoubleFloatPixelData)) {
    spdlog::error("reconcile: {} is incomplete (an image without pixel data); left in place, not indexed", rel);
    ++report.unreadable_files;
    return false;
  }
  try {
    OFString ts_uid;
    file.getMetaInfo()->findAndGetOFString(DCM_TransferSyntaxUID, ts_uid);
    db::InstanceRecord r = describe_instance(*file.getDataset(), ts_uid.c_str());
    OFString source_ae;
    file.getMetaInfo()->findAndGetOFString(DCM_SourceApplicationEntityTitle, source_ae);
    r.calling_ae = source_ae.c_str();
    r.file_path = rel;
    r.file_size = static_cast<int64_t>(std::filesystem::file_size(storage.absolute(rel)));
    index.record(r);
    ++report.indexed_files;
    spdlog::warn("reconcile: indexed sop={} calling_ae={} found on disk without its row ({})", r.sop_instance_uid,
                 r.calling_ae, rel);
    return true;
  } catch (const std::exception& e) {
    spdlog::error("reconcile: {}: {}", rel, e.what());
    ++report.unreadable_files;
    return false;
  }
}

// An SR whose report transaction never committed: the job runs again and
// writes a new one, so this file is nobody's. Only SR objects are removed:
// other objects under reports/ are not ours to judge here.
void remove_orphan_sr(storage::FileStorage& storage, const std::string& rel, ReconcileReport& report) {
  DcmFileFormat file;
  if (file.loadFile(storage.absolute(rel).c_str(), EXS_Unknown, EGL_noChange, 0, ERM_metaOnly).bad()) return;
  OFString sop_class;
  file.getMetaInfo()->findAndGetOFString(DCM_MediaStorageSOPClassUID, sop_class);
  if (std::string(sop_class.c_str()).rfind("1.2.840.10008.5.1.4.1.1.88.", 0) != 0) return;
  std::error_code ec;
  if (std::filesystem::remove(storage.absolute(rel), ec)) {
    ++report.removed_reports;
    spdlog::warn("reconcile: removed {}: an SR written by a job whose report was never committed", rel);
  }
}

void sleep_until(std::chrono::steady_clock::time_point t, const ReconcileOptions& options) {
  while (std::chrono::steady_clock::now() < t) {
    if (options.stop && options.stop->load()) throw Stopped{};
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

}  // namespace

ReconcileReport reconcile(storage::FileStorage& storage, db::InstanceIndex& index, db::ConnectionPool& pool,
                          const ReconcileOptions& options) {
  ReconcileReport report;
  const auto started = std::chrono::steady_clock::now();
  const auto walk_started = std::filesystem::file_time_type::clock::now();
  const size_t max_deferred = 100000;
  // A volume that is not mounted would otherwise log every row of the archive.
  const int kListedMissing = 100;
  try {
    report.removed_temporaries = storage.remove_stale_temporaries();
    // Files younger than the grace period may be another node's transfer whose
    // row is being committed right now: look at them again once it has passed.
    std::vector<std::string> young_instances, young_reports;
    {
      db::StoredPathCursor rows(pool, db::StoredFileKind::kInstance, options.grace_seconds);
      merge_walk(
          storage, "instances", rows, options,
          [&](const std::string& rel) {
            if (age_seconds(storage.absolute(rel), walk_started) >= options.grace_seconds)
              index_orphan(storage, index, rel, report);
            else if (young_instances.size() < max_deferred)
              young_instances.push_back(rel);
          },
          [&](const std::string& rel) {
            if (++report.missing_files <= kListedMissing)
              spdlog::error("reconcile: the index lists {} but the file is gone", rel);
            else if (report.missing_files == kListedMissing + 1)
              spdlog::error("reconcile: more rows without their file: counted, not listed (see the summary)");
          });
    }
    {
      db::StoredPathCursor rows(pool, db::StoredFileKind::kReport, options.grace_seconds);
      merge_walk(
          storage, "reports", rows, options,
          [&](const std::string& rel) {
            if (age_seconds(storage.absolute(rel), walk_started) >= options.grace_seconds)
              remove_orphan_sr(storage, rel, report);
            else if (young_reports.size() < max_deferred)
              young_reports.push_back(rel);
          },
          [&](const std::string& rel) {
            if (++report.missing_files <= kListedMissing)
              spdlog::error("reconcile: a report lists SR {} but the file is gone", rel);
            else if (report.missing_files == kListedMissing + 1)
              spdlog::error("reconcile: more rows without their file: counted, not listed (see the summary)");
          });
    }
    if (!young_instances.empty() || !young_reports.empty()) {
      sleep_until(started + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                std::chrono::duration<double>(options.grace_seconds)),
                  options);
      const auto known_instances = db::indexed_among(pool, db::StoredFileKind::kInstance, young_instances);
      const std::set<std::string> have_row(known_instances.begin(), known_instances.end());
      for (const auto& rel : young_instances)
        if (!have_row.count(rel) && std::filesystem::exists(storage.absolute(rel)))
          index_orphan(storage, index, rel, report);
      const auto known_reports = db::indexed_among(pool, db::StoredFileKind::kReport, young_reports);
      const std::set<std::string> have_report(known_reports.begin(), known_reports.end());
      for (const auto& rel : young_reports)
        if (!have_report.count(rel) && std::filesystem::exists(storage.absolute(rel)))
          remove_orphan_sr(storage, rel, report);
    }
  } catch (const Stopped&) {
    spdlog::info("reconcile: interrupted by shutdown");
    return report;
  }
  spdlog::info(
      "reconcile: {} files indexed, {} unreadable, {} rows without file, {} temporaries removed, {} uncommitted SRs "
      "removed ({:.1f} s)",
      report.indexed_files, report.unreadable_files, report.missing_files, report.removed_temporaries,
      report.removed_reports,
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
  return report;
}

}  // namespace firstread::ingest
