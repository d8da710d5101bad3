#include "pipeline/case_library.h"

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <openssl/sha.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>

#include "db/cases.h"
#include "dicom/pixels.h"
#include "engine/common.h"
#include "pipeline/study_processor.h"

namespace firstread::pipeline {
namespace {

using Kind = CaseLibraryError::Kind;

std::string trim(const std::string& s) {
  size_t a = 0, b = s.size();
  while (a < b && std::isspace(static_cast<unsigned char>(s[a]))) ++a;
  while (b > a && std::isspace(static_cast<unsigned char>(s[b - 1]))) --b;
  return s.substr(a, b - a);
}

std::string lower(std::string s) {
  for (char& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// A file of the import directory as the frame the specialists see: PNG/PPM/PGM
// through the engine's reader, anything else as DICOM (the pipeline's 8-bit path).
engine::RgbImage read_frame(const std::string& path, const std::string& name) {
  const std::string ext = lower(std::filesystem::path(path).extension().string());
  try {
    if (ext == ".png" || ext == ".ppm" || ext == ".pgm") return engine::load_image_file(path);
    dicom::DicomPixels pixels = dicom::decode_dicom_frame(path, 0);
    return engine::RgbImage{pixels.image.width, pixels.image.height, std::move(pixels.image.rgb)};
  } catch (const std::exception& e) {
    throw CaseLibraryError(Kind::bad_input, name + ": cannot be read as an image: " + e.what());
  }
}

// The identity of an imported image: SHA-256 of the file's bytes, lower-case hex.
std::string file_sha256(const std::string& path, const std::string& name) {
  std::string bytes;
  try {
    bytes = engine::read_text_file(path);
  } catch (const std::exception& e) {
    throw CaseLibraryError(Kind::bad_input, name + ": " + e.what());
  }
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(), digest);
  char hex[2 * SHA256_DIGEST_LENGTH + 1];
  for (int i = 0; i < SHA256_DIGEST_LENGTH; ++i) std::snprintf(hex + 2 * i, 3, "%02x", digest[i]);
  return hex;
}

// Each file's digest; two lines naming the same bytes (a copy under another name) are refused:
// the library holds an image once, and which line's labels to keep is the user's call.
std::vector<std::string> digests_once(const std::string& dir, const std::vector<LabelledFile>& files,
                                      const std::string& labels_csv) {
  std::vector<std::string> digests;
  std::map<std::string, const LabelledFile*> first;
  for (const auto& f : files) {
    digests.push_back(file_sha256((std::filesystem::path(dir) / f.file).string(), f.file));
    const auto [at, added] = first.emplace(digests.back(), &f);
    if (!added)
      throw CaseLibraryError(Kind::bad_input, labels_csv + ": " + at->second->file + " (line " +
                                                  std::to_string(at->second->line) + ") and " + f.file + " (line " +
                                                  std::to_string(f.line) + ") are the same image");
  }
  return digests;
}

void add_once(std::vector<std::string>& labels, std::string label) {
  if (std::find(labels.begin(), labels.end(), label) == labels.end()) labels.push_back(std::move(label));
}

}  // namespace

std::string checked_label(const std::string& label, const std::string& where) {
  const std::string t = trim(label);
  if (t.empty()) throw CaseLibraryError(Kind::bad_input, where + ": empty label");
  if (t.size() > 64) throw CaseLibraryError(Kind::bad_input, where + ": label '" + t.substr(0, 40) + "...' is longer than 64 bytes");
  for (unsigned char c : t)
    if (c < 0x20 || c == 0x7f || c == ',' || c == ';')
      throw CaseLibraryError(Kind::bad_input, where + ": label '" + t + "' contains a control character, ',' or ';'");
  return t;
}

std::vector<LabelledFile> parse_labels_csv(const std::string& text, const std::string& path) {
  std::vector<LabelledFile> out;
  std::set<std::string> seen;
  std::istringstream in(text);
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const std::string where = path + ":" + std::to_string(n);
    const std::string t = trim(line);
    if (t.empty() || t[0] == '#') continue;
    const size_t comma = t.find(',');
    if (comma == std::string::npos)
      throw CaseLibraryError(Kind::bad_input, where + ": expected `file,label[;label...]`, got '" + t.substr(0, 80) + "'");
    LabelledFile f;
    f.line = n;
    f.file = trim(t.substr(0, comma));
    if (out.empty() && seen.empty() && lower(f.file) == "file") {  // the header
      seen.insert("");
      continue;
    }
    if (f.file.empty()) throw CaseLibraryError(Kind::bad_input, where + ": empty file name");
    if (f.file.find("..") != std::string::npos || f.file[0] == '/')
      throw CaseLibraryError(Kind::bad_input, where + ": file '" + f.file + "' must be a path inside the directory");
    if (!seen.insert(f.file).second)
      throw CaseLibraryError(Kind::bad_input, where + ": file '" + f.file + "' is listed twice");
    std::istringstream labels(t.substr(comma + 1));
    for (std::string label; std::getline(labels, label, ';');) {
      if (trim(label).empty()) continue;
      add_once(f.labels, checked_label(label, where));
    }
    if (f.labels.empty()) throw CaseLibraryError(Kind::bad_input, where + ": file '" + f.file + "' has no label");
    out.push_back(std::move(f));
  }
  if (out.empty()) throw CaseLibraryError(Kind::bad_input, path + ": names no file");
  return out;
}

ImportResult import_cases(const std::string& dir, const std::string& labels_csv, const std::string& specialist,
                          Specialists& specialists, db::ConnectionPool& pool) {
  if (!std::filesystem::is_directory(dir)) throw CaseLibraryError(Kind::bad_input, dir + ": not a directory");
  std::string text;
  try {
    text = engine::read_text_file(labels_csv);
  } catch (const std::exception& e) {
    throw CaseLibraryError(Kind::bad_input, e.what());
  }
  const std::vector<LabelledFile> files = parse_labels_csv(text, labels_csv);
  std::vector<std::string> missing;
  for (const auto& f : files)
    if (!std::filesystem::is_regular_file(std::filesystem::path(dir) / f.file))
      missing.push_back(f.file + " (line " + std::to_string(f.line) + ")");
  if (!missing.empty()) {
    std::string list;
    for (size_t i = 0; i < missing.size() && i < 10; ++i) list += (i ? ", " : "") + missing[i];
    if (missing.size() > 10) list += ", ... (" + std::to_string(missing.size()) + " in all)";
    throw CaseLibraryError(Kind::bad_input, labels_csv + " names files that are not in " + dir + ": " + list);
  }
  const std::vector<std::string> digests = digests_once(dir, files, labels_csv);
  ImportResult result;
  result.specialist = specialist;
  result.specialist_version = specialists.identity(specialist).first;  // a wrong directory fails here, before any file
  std::vector<db::NewCase> cases;
  for (size_t i = 0; i < files.size(); ++i) {
    const LabelledFile& f = files[i];
    const engine::RgbImage frame = read_frame((std::filesystem::path(dir) / f.file).string(), f.file);
    const SpecialistResult r = specialists.classify(specialist, frame);
    cases.push_back({specialist, r.version, "import", f.file, digests[i], 0, f.labels, r.feature});
  }
  db::CaseWrite written = db::Cases(pool).add_imported(cases);
  result.case_ids = std::move(written.case_ids);
  result.replaced_case_ids = std::move(written.replaced);
  result.unchanged = written.unchanged;
  spdlog::info("case library: imported {} cases of specialist {} from {} ({} already there, {} replaced)",
               cases.size() - size_t(result.unchanged), specialist, dir, result.unchanged,
               result.replaced_case_ids.size());
  return result;
}

nlohmann::json confirm_json(const ConfirmResult& r) {
  return {{"report_id", r.report_id},   {"study_uid", r.study_uid},
          {"route", r.route},           {"labels", r.labels},
          {"case_ids", r.case_ids},     {"replaced_case_ids", r.replaced_case_ids},
          {"unchanged_cases", r.unchanged}};
}

ConfirmResult confirm_report(int64_t report_id, const std::vector<std::string>& labels, const config::Config& config,
                             db::ConnectionPool& pool, const storage::FileStorage& storage, Specialists& specialists) {
  ConfirmResult result;
  result.report_id = report_id;
  for (size_t i = 0; i < labels.size(); ++i)
    add_once(result.labels, checked_label(labels[i], "labels[" + std::to_string(i) + "]"));
  if (result.labels.empty()) throw CaseLibraryError(Kind::bad_input, "labels: at least one label is needed");
  const auto target = db::Cases(pool).report_target(report_id);
  if (!target) throw CaseLibraryError(Kind::unknown_report, "unknown report " + std::to_string(report_id));
  result.study_uid = target->study_uid;
  result.route = target->route;
  const auto route = std::find_if(config.routes.begin(), config.routes.end(),
                                  [&](const config::Route& r) { return r.name == target->route; });
  if (route == config.routes.end())
    throw CaseLibraryError(Kind::not_applicable, "report " + std::to_string(report_id) + ": its route '" +
                                                     target->route + "' is no longer configured");
  if (route->specialists.empty())
    throw CaseLibraryError(Kind::not_applicable, "report " + std::to_string(report_id) + ": route '" + route->name +
                                                     "' has no specialists, so its images have no feature to retrieve by");
  const std::vector<SelectedImage> images = study_images(pool, target->study_uid, *route);
  if (images.empty())
    throw CaseLibraryError(Kind::not_applicable, "report " + std::to_string(report_id) + ": study " + target->study_uid +
                                                     " has no image");
  std::vector<db::NewCase> cases;
  for (const SelectedImage& img : images) {
    dicom::DicomPixels pixels;
    try {
      pixels = dicom::decode_dicom_frame(storage.absolute(img.file_path), img.frame);
    } catch (const std::exception& e) {
      throw std::runtime_error("report " + std::to_string(report_id) + ": image " + img.sop_instance_uid + ": " + e.what());
    }
    const engine::RgbImage frame{pixels.image.width, pixels.image.height, std::move(pixels.image.rgb)};
    for (const auto& name : route->specialists) {
      const SpecialistResult r = specialists.classify(name, frame);
      cases.push_back({name, r.version, "confirmed", img.sop_instance_uid, "", report_id, result.labels, r.feature});
    }
  }
  db::CaseWrite written = db::Cases(pool).confirm(cases);
  result.case_ids = std::move(written.case_ids);
  result.replaced_case_ids = std::move(written.replaced);
  result.unchanged = written.unchanged;
  std::string labels_text;
  for (const auto& l : result.labels) labels_text += (labels_text.empty() ? "" : ", ") + l;
  spdlog::info("case library: report {} confirmed as [{}]: {} cases, {} of them unchanged, {} earlier ones replaced",
               report_id, labels_text, result.case_ids.size(), result.unchanged, result.replaced_case_ids.size());
  return result;
}

}  // namespace firstread::pipeline
