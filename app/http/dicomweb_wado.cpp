// WADO-RS (PS3.18 10.4) on everything stored here: instances byte for byte
// as stored (multipart/related; type="application/dicom"), metadata as DICOM
// JSON with bulk data by URI, frames (native pixel data as is; compressed
// frames as stored when the client accepts transfer-syntax=*, else
// decompressed), rendered JPEGs or PNGs through the same pixel path as the model's
// input, and top-level bulk data values.
#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcmetinf.h>
#include <dcmtk/dcmdata/dcxfer.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>
#include <vector>

#include "app/http/dicomweb_json.h"
#include "app/http/dicomweb_multipart.h"
#include "db/dicomweb.h"
#include "dicom/pixels.h"

namespace firstread::app::http {
namespace {

std::string path_param(const ApiRequest& req, const char* name) {
  auto it = req.path_params.find(name);
  if (it == req.path_params.end()) return "";
  require_uid(name, it->second);
  return it->second;
}

// The objects a WADO-RS path names (study, series, instance); 404 if none.
std::vector<db::ObjectHit> named_objects(Context& ctx, const ApiRequest& req) {
  db::ObjectMatch m;
  m.study_uid = path_param(req, "study");
  m.series_uid = path_param(req, "series");
  m.sop_instance_uid = path_param(req, "instance");
  auto hits = db::DicomwebIndex(ctx.pool).objects(m);
  if (hits.empty())
    throw HttpError(404, "no such " + std::string(!m.sop_instance_uid.empty() ? "instance " + m.sop_instance_uid
                                                  : !m.series_uid.empty()      ? "series " + m.series_uid
                                                                               : "study " + m.study_uid));
  return hits;
}

// The audit line of a WADO-RS answer names the study of its path.
ApiResponse audited(ApiResponse r, const ApiRequest& req) {
  r.audit_studies = {req.path_params.at("study")};
  return r;
}

std::string read_whole(const Context& ctx, const std::string& relative_path) {
  std::ifstream in(ctx.storage.absolute(relative_path), std::ios::binary);
  if (!in) throw HttpError(500, "cannot read stored file " + relative_path);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

std::string stored_transfer_syntax(DcmFileFormat& file) {
  OFString ts;
  file.getMetaInfo()->findAndGetOFString(DCM_TransferSyntaxUID, ts);
  return ts.c_str();
}

// What an Accept header allows for parts of `part_type` (application/dicom,
// application/octet-stream): any transfer syntax ("*"), or the listed ones
// (a range without transfer-syntax: default_syntax). No Accept, */* or
// multipart/related without a type: anything.
struct Acceptable {
  bool any_syntax = false;
  std::set<std::string> syntaxes;
  bool matches_type = false;
  bool allows(const std::string& ts) const { return any_syntax || syntaxes.count(ts); }
};

Acceptable acceptable(const ApiRequest& req, const std::string& part_type, const std::string& default_syntax) {
  Acceptable a;
  std::vector<MediaType> ranges;
  try {
    ranges = parse_accept(req.accept);
  } catch (const std::invalid_argument& e) {
    throw HttpError(400, std::string("Accept: ") + e.what());
  }
  if (ranges.empty()) {
    a.any_syntax = a.matches_type = true;
    return a;
  }
  for (const auto& r : ranges) {
    const std::string type = r.param("type");
    const bool match = r.type == "*/*" || (r.type == "multipart/related" && (type.empty() || type == part_type ||
                                                                              type == "*/*")) ||
                       r.type == part_type;
    if (!match) continue;
    a.matches_type = true;
    const std::string ts = r.param("transfer-syntax");
    // No transfer-syntax: the part type's default, or as stored where default_syntax is empty.
    if (ts == "*" || (ts.empty() && (default_syntax.empty() || r.type == "*/*" || type.empty() || type == "*/*")))
      a.any_syntax = true;
    else
      a.syntaxes.insert(ts.empty() ? default_syntax : ts);
  }
  if (!a.matches_type)
    throw HttpError(406, "Accept '" + req.accept.substr(0, 200) + "' allows no multipart/related; type=\"" +
                             part_type + "\" answer");
  return a;
}

ApiResponse multipart_response(MultipartWriter& writer, const std::string& part_type, const std::string& extra = "") {
  ApiResponse r;
  r.content_type = "multipart/related; type=\"" + part_type + "\"" + extra + "; boundary=" + writer.boundary();
  r.body = writer.finish();
  return r;
}

std::string instance_url(const ApiRequest& req, const db::ObjectHit& o) {
  return req.base_url + "/dicomweb/studies/" + o.study_uid + "/series/" + o.series_uid + "/instances/" +
         o.sop_instance_uid;
}

// Frame numbers of ".../frames/1,3": 1-based, each within the instance's frames.
std::vector<int> frame_numbers(const std::string& list, int frames) {
  std::vector<int> out;
  std::stringstream in(list);
  for (std::string item; std::getline(in, item, ',');) {
    const long long n = integer_param("frame number", item, 1, 1 << 30);
    if (n > frames)
      throw HttpError(404, "frame " + item + " is out of range: the instance has " + std::to_string(frames) +
                               " frame(s), numbered from 1");
    out.push_back(static_cast<int>(n));
  }
  if (out.empty()) throw HttpError(400, "no frame numbers in '" + list + "'");
  return out;
}

int frame_count(DcmDataset& dataset, const std::string& sop) {
  try {
    return dicom::dicom_frame_count(dataset);
  } catch (const dicom::DicomImageError& e) {
    throw HttpError(422, "instance " + sop + ": " + e.what());
  }
}

}  // namespace

ApiResponse wado_retrieve(Context& ctx, const ApiRequest& req) {
  const auto objects = named_objects(ctx, req);
  // Instances go out as stored: an Accept without transfer-syntax takes them so.
  const Acceptable accept = acceptable(req, "application/dicom", "");
  MultipartWriter writer;
  for (const auto& o : objects) {
    auto header = load_stored(ctx, o.file_path);
    const std::string ts = stored_transfer_syntax(*header);
    header.reset();
    if (!accept.allows(ts))
      throw HttpError(406, "instance " + o.sop_instance_uid + " is stored as " + ts +
                               " and is sent only as stored: accept transfer-syntax=* or " + ts);
    writer.add("application/dicom; transfer-syntax=" + ts, read_whole(ctx, o.file_path),
               "Content-Location: " + instance_url(req, o) + "\r\n");
  }
  return audited(multipart_response(writer, "application/dicom"), req);
}

ApiResponse wado_metadata(Context& ctx, const ApiRequest& req) {
  json answer = json::array();
  for (const auto& o : named_objects(ctx, req)) {
    auto file = load_stored(ctx, o.file_path);
    answer.push_back(dataset_json(*file->getDataset(), instance_url(req, o) + "/bulk"));
  }
  return audited(dicom_json_response(answer), req);
}

ApiResponse wado_frames(Context& ctx, const ApiRequest& req) {
  const auto objects = named_objects(ctx, req);
  const db::ObjectHit& o = objects.front();
  auto file = load_stored(ctx, o.file_path);
  DcmDataset& dataset = *file->getDataset();
  const std::string stored = stored_transfer_syntax(*file);
  const bool encapsulated = DcmXfer(stored.c_str()).isEncapsulated();
  const Acceptable accept = acceptable(req, "application/octet-stream", "1.2.840.10008.1.2.1");
  const bool keep_compressed = encapsulated && accept.allows(stored);
  if (!accept.allows("1.2.840.10008.1.2.1") && !keep_compressed)
    throw HttpError(406, "frames are sent as stored (" + stored + ") or as explicit VR little endian");
  MultipartWriter writer;
  std::string syntax;
  for (int n : frame_numbers(req.path_params.at("frames"), frame_count(dataset, o.sop_instance_uid))) {
    dicom::FrameBytes frame;
    try {
      frame = dicom::frame_bytes(dataset, o.file_path, n - 1, keep_compressed);
    } catch (const dicom::DicomImageError& e) {
      throw HttpError(encapsulated && !keep_compressed ? 406 : 422,
                      "instance " + o.sop_instance_uid + " frame " + std::to_string(n) + ": " + e.what());
    }
    syntax = frame.transfer_syntax_uid;
    writer.add("application/octet-stream; transfer-syntax=" + syntax,
               std::string(reinterpret_cast<const char*>(frame.bytes.data()), frame.bytes.size()),
               "Content-Location: " + instance_url(req, o) + "/frames/" + std::to_string(n) + "\r\n");
  }
  return audited(multipart_response(writer, "application/octet-stream", "; transfer-syntax=" + syntax), req);
}

namespace {

constexpr int kJpegQuality = 90;  // without PS3.18 8.3.5.1.2's "quality" parameter

// The rendered media type the Accept header prefers: image/jpeg (PS3.18
// Table 8.7.4-1: the default for single-frame rendered content, also for no
// Accept, */* or image/*) or image/png; highest q first, in order on ties.
std::string rendered_media_type(const std::string& accept) {
  if (accept.empty()) return "image/jpeg";
  std::vector<MediaType> ranges;
  try {
    ranges = parse_accept(accept);
  } catch (const std::invalid_argument& e) {
    throw HttpError(400, std::string("Accept: ") + e.what());
  }
  auto q = [](const MediaType& m) {
    const std::string v = m.param("q");
    return v.empty() ? 1.0 : std::strtod(v.c_str(), nullptr);
  };
  std::stable_sort(ranges.begin(), ranges.end(), [&](const MediaType& a, const MediaType& b) { return q(a) > q(b); });
  for (const MediaType& m : ranges) {
    if (q(m) <= 0) continue;
    if (m.type == "image/jpeg" || m.type == "image/png") return m.type;
    if (m.type == "*/*" || m.type == "image/*") return "image/jpeg";
  }
  throw HttpError(406, "rendered images are image/jpeg or image/png, not " + accept);
}

}  // namespace

ApiResponse wado_rendered(Context& ctx, const ApiRequest& req) {
  const auto objects = named_objects(ctx, req);
  const db::ObjectHit& o = objects.front();
  const std::string media_type = rendered_media_type(req.accept);
  // PS3.18 8.3.5.1.2: 1..100, for a lossy type (JPEG); PNG is lossless and ignores it.
  int quality = kJpegQuality;
  if (const auto q = query_param(req, "quality")) quality = static_cast<int>(integer_param("quality", *q, 1, 100));
  int frame = 1;
  if (auto it = req.path_params.find("frames"); it != req.path_params.end()) {
    const auto numbers = frame_numbers(it->second, o.frames.value_or(1 << 30));
    if (numbers.size() != 1) throw HttpError(400, "a rendered answer is one frame");
    frame = numbers.front();
  }
  dicom::DicomPixels pixels;
  try {
    pixels = dicom::decode_dicom_frame(ctx.storage.absolute(o.file_path), frame - 1);
  } catch (const dicom::DicomImageError& e) {
    throw HttpError(422, "instance " + o.sop_instance_uid + " frame " + std::to_string(frame) +
                             " cannot be rendered: " + e.what());
  }
  ApiResponse r;
  r.content_type = media_type;
  const auto& image = pixels.image;
  r.body = media_type == "image/png" ? encode_png_rgb8(image.rgb.data(), image.width, image.height)
                                     : encode_jpeg_rgb8(image.rgb.data(), image.width, image.height, quality);
  return audited(std::move(r), req);
}

ApiResponse wado_bulkdata(Context& ctx, const ApiRequest& req) {
  const auto objects = named_objects(ctx, req);
  const db::ObjectHit& o = objects.front();
  const DcmTagKey tag = tag_from_name(req.path_params.at("tag"));
  auto file = load_stored(ctx, o.file_path);
  DcmDataset& dataset = *file->getDataset();
  DcmElement* element = nullptr;
  if (dataset.findAndGetElement(tag, element).bad() || element == nullptr)
    throw HttpError(404, "instance " + o.sop_instance_uid + " has no " + tag_hex(tag));
  const std::string stored = stored_transfer_syntax(*file);
  if (tag == DCM_PixelData && DcmXfer(stored.c_str()).isEncapsulated()) {
    // Encapsulated pixel data: its frames, as stored.
    const int frames = frame_count(dataset, o.sop_instance_uid);
    MultipartWriter writer;
    for (int f = 0; f < frames; ++f) {
      dicom::FrameBytes frame;
      try {
        frame = dicom::frame_bytes(dataset, o.file_path, f, true);
      } catch (const dicom::DicomImageError& e) {
        throw HttpError(422, "instance " + o.sop_instance_uid + ": " + e.what());
      }
      writer.add("application/octet-stream; transfer-syntax=" + stored,
                 std::string(reinterpret_cast<const char*>(frame.bytes.data()), frame.bytes.size()));
    }
    return audited(multipart_response(writer, "application/octet-stream", "; transfer-syntax=" + stored), req);
  }
  std::string value(element->getLength(), '\0');
  if (!value.empty() && element->getPartialValue(value.data(), 0, static_cast<Uint32>(value.size())).bad())
    throw HttpError(500, "cannot read " + tag_hex(tag) + " of " + o.file_path);
  MultipartWriter writer;
  writer.add("application/octet-stream", value);
  return audited(multipart_response(writer, "application/octet-stream"), req);
}

}  // namespace firstread::app::http
