// What QIDO-RS and WADO-RS read (migration 0009): studies, series and the
// objects a viewer can open (received instances and firstread's own SRs,
// presentation states and key images, firstread.dicomweb_objects). Matching,
// order, counts and paging happen here, through indexes; the attribute values
// a DICOMweb answer shows beyond these are read from the files by the caller.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "db/database.h"

namespace firstread::db {

struct StudyMatch {
  std::string patient_id;            // exact
  std::string patient_name;          // DICOM wildcards * and ?, case-insensitive; no wildcard: whole value
  std::string date_from, date_to;    // YYYYMMDD, inclusive; empty: open
  std::string accession_number;      // exact
  std::vector<std::string> modalities;  // any of them (own objects' SR / PR / OT count)
  std::vector<std::string> study_uids;  // any of them
  int limit = 100, offset = 0;
};

struct StudyHit {
  std::string study_uid;
  std::vector<std::string> modalities;  // the instances' and firstread's own objects', sorted
  int series = 0, instances = 0;
  std::string file_path;  // one received instance of the study (its study attributes), relative to storage
};

struct SeriesMatch {
  std::string study_uid;  // required
  std::string series_uid, modality;
  std::optional<int> series_number;
  int limit = 1000, offset = 0;
};

struct SeriesHit {
  std::string series_uid, modality;
  std::optional<int> series_number;
  int instances = 0;
  std::string file_path;  // one instance of the series (its series attributes)
};

struct ObjectMatch {
  std::string study_uid;  // required
  std::string series_uid, sop_instance_uid, sop_class_uid;
  std::optional<int> instance_number;
  int limit = 0, offset = 0;  // limit 0: all
};

struct ObjectHit {
  std::string study_uid, series_uid, sop_instance_uid, sop_class_uid, modality, file_path;
  std::optional<int> instance_number, rows, columns, frames;
};

class DicomwebIndex {
 public:
  explicit DicomwebIndex(ConnectionPool& pool) : pool_(pool) {}
  // Newest study first (first_received_at, study_uid), limit / offset.
  std::vector<StudyHit> studies(const StudyMatch& match);
  // In Series Number order (unnumbered last), then by UID.
  std::vector<SeriesHit> series(const SeriesMatch& match);
  // In series, Instance Number (unnumbered last), SOP Instance UID order.
  std::vector<ObjectHit> objects(const ObjectMatch& match);

 private:
  ConnectionPool& pool_;
};

}  // namespace firstread::db
