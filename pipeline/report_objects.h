// The objects a report sends beside its SR (issue 16): one GSPS or CSPS per
// source series the model read, and optionally a marked key image per image
// read. Built from what the job already holds (the source datasets, the
// frames the model read, the findings), written durably under storage like
// the SR. A report's presentation states share one series and its key images
// another; a re-run's go into the superseded report's series with the next
// Instance Numbers and a later Presentation Creation Date/Time.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "reports/sr_builder.h"
#include "storage/file_storage.h"

class DcmDataset;

namespace firstread::pipeline {

// One image the model read.
struct ReadImage {
  const DcmDataset* dataset = nullptr;  // with pixel data
  int frame_read = 0;                   // 0-based frame decoded for the model
  int width = 0, height = 0;            // the model's frame (8-bit RGB), kept only for key images
  std::vector<uint8_t> rgb;
};

// An object of the report being superseded (from the database).
struct EarlierObject {
  std::string kind;  // "gsps", "csps", "key_image"
  std::string series_instance_uid;
  int instance_number = 1;
};

struct ReportObject {
  std::string kind;               // "gsps", "csps" or "key_image"
  std::string source_key;         // source series UID (PS) or source SOP Instance UID (key image)
  std::string sop_class_uid, sop_instance_uid, series_instance_uid, file_path;  // file_path: relative to storage
  int instance_number = 1;
};

struct ReportObjectsInput {
  std::string study_uid;
  std::vector<ReadImage> images;
  std::vector<reports::SrFinding> findings;
  std::vector<EarlierObject> earlier;  // the superseded report's objects
  bool key_images = false;             // some destination wants them
  std::string creation_datetime;       // YYYYMMDDHHMMSS
  std::string model_name, model_version;
};

// Builds and stores the objects; returns them with their paths. Throws
// std::runtime_error naming the object and the reason. `warnings` gets what
// was written differently from what was asked (e.g. no VOI for a frame).
std::vector<ReportObject> build_and_store_report_objects(const ReportObjectsInput& input, storage::FileStorage& storage,
                                                         std::vector<std::string>& warnings);

}  // namespace firstread::pipeline
