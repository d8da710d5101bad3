// DICOM JSON (PS3.18 Annex F) for QIDO-RS and WADO-RS, written by DCMTK's
// JSON writer (DcmItem::writeJson) after the values are converted to UTF-8:
// one stored file's header, a search answer's attributes copied from it, and
// what the request asked for (includefield, Accept).
#pragma once

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dctagkey.h>

#include <memory>
#include <string>
#include <vector>

#include "app/http/api.h"

namespace firstread::app::http {

// A stored file read with values over 4 KiB left on disk (pixel data is read
// only if asked for). Throws HttpError 500 naming the file if it cannot.
std::unique_ptr<DcmFileFormat> load_stored(const Context& ctx, const std::string& relative_path);

// Tags named by keyword (StudyDescription) or as 8 hex digits (00081030).
// Throws HttpError 400 naming a name that is neither.
DcmTagKey tag_from_name(const std::string& name);

// includefield: comma-separated tags / keywords (the parameter may repeat in
// the query string; ApiRequest keeps its last value); "all": every attribute.
struct IncludeFields {
  bool all = false;
  std::vector<DcmTagKey> tags;
};
IncludeFields include_fields(const ApiRequest& req);

// The attributes of `source` among `tags` copied into `target` (those it has).
void copy_attributes(DcmItem& source, DcmItem& target, const std::vector<DcmTagKey>& tags);

// DICOM JSON of a data set (converted to UTF-8 first). Binary values at the
// top level (pixel data, overlays, other OB/OW/OF/...) are given as
// BulkDataURI = bulk_base + "/" + tag (8 hex digits) when bulk_base is set.
json dataset_json(DcmItem& dataset, const std::string& bulk_base = "");

// An answer of Content-Type application/dicom+json.
ApiResponse dicom_json_response(const json& body, const std::vector<std::string>& warnings = {});

// "0020000D"-style keys of a DICOM JSON object.
std::string tag_hex(const DcmTagKey& tag);

}  // namespace firstread::app::http
