#include "app/http/dicomweb_json.h"

#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcsequen.h>
#include <dcmtk/dcmdata/dcjson.h>
#include <dcmtk/dcmdata/dctag.h>

#include <cstdio>
#include <set>
#include <sstream>

#include "dicom/text.h"

namespace firstread::app::http {
namespace {

bool is_binary(DcmEVR vr) {
  switch (vr) {
    case EVR_OB: case EVR_OW: case EVR_OF: case EVR_OD: case EVR_OL: case EVR_OV: case EVR_UN: case EVR_ox:
    case EVR_px: case EVR_pixelSQ: case EVR_PixelData: case EVR_OverlayData:
      return true;
    default:
      return false;
  }
}

// Binary values of the data set's top level go out as BulkDataURIs. DCMTK asks
// by tag alone, so a nested value with the same tag as a top-level one (an
// icon's Pixel Data) would get the top-level URI: those are inlined instead.
class BulkDataFormat : public DcmJsonFormatCompact {
 public:
  BulkDataFormat(std::string base, std::set<DcmTagKey> top_level)
      : DcmJsonFormatCompact(OFFalse), base_(std::move(base)), top_level_(std::move(top_level)) {}
  OFBool asBulkDataURI(const DcmTagKey& tag, OFString& uri) override {
    if (base_.empty() || !top_level_.count(tag) || nested_.count(tag)) return OFFalse;
    uri = (base_ + "/" + tag_hex(tag)).c_str();
    return OFTrue;
  }
  std::set<DcmTagKey> nested_;

 private:
  std::string base_;
  std::set<DcmTagKey> top_level_;
};

void collect_nested_binary(DcmItem& item, std::set<DcmTagKey>& out, int depth) {
  for (unsigned long i = 0; i < item.card(); ++i) {
    DcmElement* e = item.getElement(i);
    if (depth > 0 && is_binary(e->ident())) out.insert(e->getTag());
    if (e->ident() == EVR_SQ) {
      auto* sq = static_cast<DcmSequenceOfItems*>(e);
      for (unsigned long k = 0; k < sq->card(); ++k) collect_nested_binary(*sq->getItem(k), out, depth + 1);
    }
  }
}

}  // namespace

std::string tag_hex(const DcmTagKey& tag) {
  char buf[16];
  snprintf(buf, sizeof buf, "%04X%04X", tag.getGroup(), tag.getElement());
  return buf;
}

std::unique_ptr<DcmFileFormat> load_stored(const Context& ctx, const std::string& relative_path) {
  auto file = std::make_unique<DcmFileFormat>();
  const OFCondition cond =
      file->loadFile(ctx.storage.absolute(relative_path).c_str(), EXS_Unknown, EGL_noChange, 4096, ERM_autoDetect);
  if (cond.bad()) throw HttpError(500, "cannot read stored file " + relative_path + ": " + cond.text());
  return file;
}

DcmTagKey tag_from_name(const std::string& name) {
  if (name.size() == 8 && name.find_first_not_of("0123456789abcdefABCDEF") == std::string::npos) {
    unsigned group = 0, element = 0;
    sscanf(name.c_str(), "%4x%4x", &group, &element);
    return DcmTagKey(static_cast<Uint16>(group), static_cast<Uint16>(element));
  }
  DcmTag tag;
  if (DcmTag::findTagFromName(name.c_str(), tag).bad())
    throw HttpError(400, "'" + name.substr(0, 64) + "' is neither a DICOM keyword nor a tag (8 hex digits)");
  return tag.getXTag();
}

IncludeFields include_fields(const ApiRequest& req) {
  IncludeFields out;
  auto it = req.query.find("includefield");
  if (it == req.query.end()) return out;
  std::stringstream list(it->second);
  for (std::string name; std::getline(list, name, ',');) {
    if (name.empty()) continue;
    if (name == "all") out.all = true;
    else out.tags.push_back(tag_from_name(name));
  }
  return out;
}

void copy_attributes(DcmItem& source, DcmItem& target, const std::vector<DcmTagKey>& tags) {
  for (const auto& tag : tags) {
    DcmElement* e = nullptr;
    if (source.findAndGetElement(tag, e).good() && e != nullptr)
      target.insert(static_cast<DcmElement*>(e->clone()), true);
  }
}

json dataset_json(DcmItem& dataset, const std::string& bulk_base) {
  // Converted in place when the character set allows; a value that cannot be
  // converted stays as it is and is repaired below rather than failing the answer.
  dataset.convertToUTF8();
  std::set<DcmTagKey> top_level;
  for (unsigned long i = 0; i < dataset.card(); ++i)
    if (is_binary(dataset.getElement(i)->ident())) top_level.insert(dataset.getElement(i)->getTag());
  BulkDataFormat format(bulk_base, top_level);
  collect_nested_binary(dataset, format.nested_, 0);
  std::ostringstream out;
  const OFCondition cond = dataset.writeJson(out, format);
  if (cond.bad()) throw std::runtime_error(std::string("DICOM JSON: ") + cond.text());
  std::string text = out.str();
  if (dicom::first_invalid_utf8(text) != std::string::npos) text = dicom::sanitize_utf8_text(text);
  // DCMTK writes the data set's members; the object's braces are ours.
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  if (text.empty() || text.front() != '{') text = "{" + text + "}";
  return json::parse(text);
}

ApiResponse dicom_json_response(const json& body, const std::vector<std::string>& warnings) {
  ApiResponse r = json_response(200, body);
  r.content_type = "application/dicom+json";
  for (const auto& w : warnings) r.headers.emplace_back("Warning", "299 firstread: " + w);
  return r;
}

}  // namespace firstread::app::http
