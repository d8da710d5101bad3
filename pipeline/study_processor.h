// One job, end to end: the study's images -> model input -> engine -> findings
// mapped to source pixels -> DICOM SR -> durable file -> report, findings,
// export rows and the job's completion in one transaction.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "config/config.h"
#include "db/database.h"
#include "pipeline/gsco.h"
#include "pipeline/inference_backend.h"
#include "storage/file_storage.h"
#include "worklist/job_queue.h"

namespace firstread::pipeline {

struct SelectedImage {
  std::string sop_instance_uid, sop_class_uid, series_instance_uid, file_path;
  int frame = 0;  // 0-based frame to read; -1 = the middle frame
};

struct InstanceRow {
  std::string sop_instance_uid, sop_class_uid, series_instance_uid, file_path;
  int series_number = 0, instance_number = 0, frames = 1;
  bool has_pixels = false;
};

// Which images of a study go to the model (route.select): each takes every
// image instance, in series/instance order, up to max_images; "middle" takes
// the middle instance of each series (the middle frame for a multi-frame one).
std::vector<SelectedImage> select_images(const std::vector<InstanceRow>& instances, const config::Route& route);

// The images of a study the route reads: select_images over its instances in
// series and instance order, leaving out what firstread made (SRs,
// presentation states, key images the PACS may send back).
std::vector<SelectedImage> study_images(db::ConnectionPool& pool, const std::string& study_uid,
                                        const config::Route& route);

class StudyProcessor {
 public:
  // specialists / library: GSCo (issue 15), needed by routes that list specialists.
  StudyProcessor(const config::Config& config, db::ConnectionPool& pool, storage::FileStorage& storage,
                 InferenceBackends& backends, Specialists* specialists = nullptr,
                 retrieval::CaseLibrary* library = nullptr)
      : config_(config), pool_(pool), storage_(storage), backends_(backends), specialists_(specialists),
        library_(library) {}

  // Runs the job and commits its report; returns the report id. Throws
  // std::runtime_error whose message is the reason the job failed.
  int64_t process(const worklist::Job& job, const std::string& owner);

 private:
  struct StudyRead;
  struct WrittenObjects;
  // The stages of process(), in order.
  void read_image(const worklist::Job& job, const config::Route& route, const BackendIdentity& who,
                  const SelectedImage& img, size_t n, size_t count, bool key_images, StudyRead& read);
  WrittenObjects write_objects(const worklist::Job& job, const config::Route& route, const BackendIdentity& who,
                               bool key_images, StudyRead& read);
  int64_t commit_report(const worklist::Job& job, const std::string& owner, const config::Route& route,
                        const BackendIdentity& who, const StudyRead& read, const WrittenObjects& written);

  const config::Config& config_;
  db::ConnectionPool& pool_;
  storage::FileStorage& storage_;
  InferenceBackends& backends_;
  Specialists* specialists_;
  retrieval::CaseLibrary* library_;
};

}  // namespace firstread::pipeline
