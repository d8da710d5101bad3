#include "ingest/instance_ingest.h"

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcmetinf.h>
#include <dcmtk/dcmdata/dcxfer.h>
#include <spdlog/spdlog.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <future>
#include <filesystem>
#include <functional>
#include <set>
#include <thread>
#include <vector>
#include <stdexcept>

#include "db/stored_files.h"
#include "dicom/uid.h"

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
  r.modality = get_string(ds, DCM_Modality);
  r.body_part = get_string(ds, DCM_BodyPartExamined);
  r.series_number = get_int(ds, DCM_SeriesNumber);
  r.instance_number = get_int(ds, DCM_InstanceNumber);
  r.rows = get_int(ds, DCM_Rows);
  r.columns = get_int(ds, DCM_Columns);
  r.frames = get_int(ds, DCM_NumberOfFrames);
  if (!r.frames && r.rows) r.frames = 1;
  r.patient_id = get_string(ds, DCM_PatientID);
  r.patient_name = get_string(ds, DCM_PatientName);
  r.accession_number = get_string(ds, DCM_AccessionNumber);
  r.study_date = get_string(ds, DCM_StudyDate);
  return r;
}

scp::StoreResult InstanceIngest::store(const scp::ReceivedInstance& in) {
  db::InstanceRecord record;
  try {
    record = describe_instance(in.dataset, in.transfer_syntax_uid);
  } catch (const std::invalid_argument& e) {
    return {scp::kStoreCannotUnderstand, e.what()};
  }
  if (record.sop_instance_uid != in.sop_instance_uid)
    return {scp::kStoreDataSetDoesNotMatchSopClass,
            "SOP Instance UID in data set differs from the C-STORE request"};
  if (record.sop_class_uid != in.sop_class_uid)
    return {scp::kStoreDataSetDoesNotMatchSopClass, "SOP Class UID in data set differs from the C-STORE request"};
  record.calling_ae = in.peer.calling_ae;
  record.file_path =
      storage::FileStorage::instance_path(record.study_uid, record.series_instance_uid, record.sop_instance_uid);

  const E_TransferSyntax xfer = DcmXfer(in.transfer_syntax_uid.c_str()).getXfer();
  if (xfer == EXS_Unknown)
    return {scp::kStoreCannotUnderstand, "unknown transfer syntax " + in.transfer_syntax_uid};
  const auto t0 = std::chrono::steady_clock::now();
  storage::FileStorage::StagedFile staged;
  try {
    staged = storage_.stage(record.file_path, [&](const std::string& tmp) {
      // The data set is written in the transfer syntax it arrived in: encapsulated
      // pixel data stays as the sender compressed it.
      // The file format borrows the received data set (no copy) and hands it back.
      DcmFileFormat file(&in.dataset, OFFalse);
      file.getMetaInfo()->putAndInsertString(DCM_SourceApplicationEntityTitle, in.peer.calling_ae.c_str());
      errno = 0;
      OFCondition cond = file.saveFile(tmp.c_str(), xfer, EET_ExplicitLength, EGL_recalcGL, EPD_noChange, 0, 0,
                                       EWM_fileformat);
      const int write_errno = errno;
      file.getAndRemoveDataset();
      // DCMTK words a full disk as "I/O suspension or premature end of stream":
      // name the cause when the system gave one.
      if (cond.bad())
        throw storage::StorageError("cannot write " + tmp + ": " +
                                    (write_errno == ENOSPC || write_errno == EDQUOT ? std::strerror(write_errno)
                                                                                    : cond.text()));
    });
  } catch (const std::exception& e) {
    spdlog::error("ingest: sop={} calling_ae={}: storing failed: {}", record.sop_instance_uid, in.peer.calling_ae,
                  e.what());
    return {scp::kStoreOutOfResources, storage_comment(e.what())};
  }
  record.file_size = static_cast<int64_t>(staged.size);

  // The file's fsync/rename/directory fsync and the database commit each wait
  // on the disk; they run at the same time and Success is answered only when
  // both are durable. A failure of either answers a failure status; what the
  // other left behind is repaired here or by start-up reconciliation.
  auto commit_row = std::async(std::launch::async, [&] { return index_.record(record); });
  std::string file_error;
  try {
    storage_.publish(staged);
  } catch (const std::exception& e) {
    storage_.discard(staged);
    file_error = e.what();
  }
  const auto t1 = std::chrono::steady_clock::now();
  bool is_new = false;
  std::string db_error;
  try {
    is_new = commit_row.get();
  } catch (const std::exception& e) {
    db_error = e.what();
  }
  const auto t2 = std::chrono::steady_clock::now();
  if (!file_error.empty()) {
    spdlog::error("ingest: sop={} calling_ae={}: storing failed: {}", record.sop_instance_uid, in.peer.calling_ae,
                  file_error);
    if (db_error.empty() && is_new) {
      try {
        index_.forget(record.sop_instance_uid);
      } catch (const std::exception& e) {
        spdlog::error("ingest: sop={}: cannot remove the row of the unstored file: {}", record.sop_instance_uid,
                      e.what());
      }
    }
    return {scp::kStoreOutOfResources, storage_comment(file_error)};
  }
  if (!db_error.empty()) {
    // The file is complete under its final name; reconciliation indexes it at the
    // next start, and the sender will retry since we answer a failure.
    spdlog::error("ingest: sop={} calling_ae={}: database commit failed: {}", record.sop_instance_uid,
                  in.peer.calling_ae, db_error);
    return {scp::kStoreOutOfResources, "database unavailable: file kept, send it again later"};
  }
  using ms = std::chrono::duration<double, std::milli>;
  spdlog::info("ingest: stored sop={} calling_ae={} study={} modality={} size={} file_ms={:.1f} total_ms={:.1f}{}",
               record.sop_instance_uid, in.peer.calling_ae, record.study_uid, record.modality, record.file_size,
               ms(t1 - t0).count(), ms(t2 - t0).count(), is_new ? "" : " (again: row refreshed)");
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
            ++report.missing_files;
            spdlog::error("reconcile: the index lists {} but the file is gone", rel);
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
            ++report.missing_files;
            spdlog::error("reconcile: a report lists SR {} but the file is gone", rel);
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
