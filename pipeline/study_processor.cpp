#include "pipeline/study_processor.h"

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <stdexcept>

#include "db/reports.h"
#include "db/studies.h"
#include "dicom/pixels.h"
#include "dicom/sop_class.h"
#include "dicom/text.h"
#include "metrics/registry.h"
#include "pipeline/report_objects.h"
#include "reports/model_output.h"
#include "reports/sr_builder.h"

namespace firstread::pipeline {
namespace {

using Clock = std::chrono::steady_clock;
double ms_since(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

const config::Route* find_route(const config::Config& c, const std::string& name) {
  for (const auto& r : c.routes)
    if (r.name == name) return &r;
  return nullptr;
}

std::string now_dicom_datetime() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  localtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y%m%d%H%M%S", &tm);
  return buf;
}

// The same with microseconds: presentation states of a re-run must sort after
// the ones they supersede even within one second.
std::string now_dicom_datetime_with_fraction() {
  const auto now = std::chrono::system_clock::now();
  const auto micros = std::chrono::duration_cast<std::chrono::microseconds>(now.time_since_epoch()).count() % 1000000;
  char fraction[16];
  std::snprintf(fraction, sizeof fraction, ".%06lld", static_cast<long long>(micros));
  return now_dicom_datetime() + fraction;
}

bool destination_wants(const config::ExportDestination& d, const std::string& route, const std::string& object) {
  bool wanted = d.routes.empty();
  for (const auto& rn : d.routes) wanted = wanted || rn == route;
  return wanted && std::find(d.objects.begin(), d.objects.end(), object) != d.objects.end();
}

// A server's model id as the SR's device name: valid UTF-8, at most 64 bytes (LO).
std::string served_model_name(const std::string& id) {
  return dicom::truncate_utf8_bytes(dicom::sanitize_utf8_text(id), 64);
}

// A model region as a finding on the source image's pixels, or none when the
// box is outside the model's grid (logged) or squeezed to nothing by clamping.
// A specialist's probability for the same label becomes its confidence.
std::optional<reports::SrFinding> finding_of(const worklist::Job& job, const MappedRegion& box, const SelectedImage& img,
                                             int frame_number, const GscoImage& gsco) {
  if (!box.in_grid) {
    spdlog::warn("pipeline: job {}: box [{}, {}, {}, {}] is empty or outside the {} grid; region dropped", job.job_id,
                 box.model_box[0], box.model_box[1], box.model_box[2], box.model_box[3], box.grid);
    return std::nullopt;
  }
  reports::SrFinding f;
  f.label = dicom::sanitize_utf8_text(box.label);
  if (f.label.empty()) f.label = "finding";
  f.sop_class_uid = img.sop_class_uid;
  f.sop_instance_uid = img.sop_instance_uid;
  f.frame = frame_number;
  f.x1 = box.pixel_box[0];
  f.y1 = box.pixel_box[1];
  f.x2 = box.pixel_box[2];
  f.y2 = box.pixel_box[3];
  if (f.x2 <= f.x1 || f.y2 <= f.y1) return std::nullopt;
  // Percent in the SR, 0..1 in api.findings.
  if (const auto p = specialist_confidence(gsco.specialists, f.label)) f.confidence = *p * 100.0;
  return f;
}

// Each specialist's classification of one image, as the SR records it (a
// qualitative evaluation with the specialist as device observer).
void add_specialist_evaluations(const config::Route& route, const GscoImage& gsco, const std::string& sop_instance_uid,
                                std::vector<reports::SrSpecialistEvaluation>& out) {
  for (const SpecialistResult& r : gsco.specialists) {
    reports::SrSpecialistEvaluation e{r.name, r.version, r.device_observer_uid, sop_instance_uid, {}, {}, -1};
    for (size_t i = 0; i < r.labels.size(); ++i) e.probabilities.push_back({r.labels[i], r.probs[i]});
    for (const auto& p : r.positives()) e.positives.push_back(p.first);
    if (route.gsco == config::GscoMode::rad || route.gsco == config::GscoMode::both)
      e.retrieved_cases = int(gsco.neighbours.size());
    out.push_back(std::move(e));
  }
}

}  // namespace

std::vector<SelectedImage> select_images(const std::vector<InstanceRow>& instances, const config::Route& route) {
  std::vector<SelectedImage> out;
  if (route.select == config::ImageSelection::middle) {
    std::map<std::string, std::vector<const InstanceRow*>> by_series;
    std::vector<std::string> order;
    for (const auto& i : instances) {
      if (!i.has_pixels) continue;
      if (!by_series.count(i.series_instance_uid)) order.push_back(i.series_instance_uid);
      by_series[i.series_instance_uid].push_back(&i);
    }
    for (const auto& series : order) {
      const auto& list = by_series[series];  // already in instance order
      const InstanceRow* mid = list[list.size() / 2];
      out.push_back({mid->sop_instance_uid, mid->sop_class_uid, mid->series_instance_uid, mid->file_path,
                     list.size() == 1 && mid->frames > 1 ? -1 : 0});
      if (static_cast<int>(out.size()) >= route.max_images) break;
    }
    return out;
  }
  for (const auto& i : instances) {
    if (!i.has_pixels) continue;
    out.push_back({i.sop_instance_uid, i.sop_class_uid, i.series_instance_uid, i.file_path, 0});
    if (static_cast<int>(out.size()) >= route.max_images) break;
  }
  return out;
}

std::vector<SelectedImage> study_images(db::ConnectionPool& pool, const std::string& study_uid,
                                        const config::Route& route) {
  // The study's instances, in series and instance order.
  std::vector<InstanceRow> rows;
  // What firstread made for this study (SRs, presentation states, key images) may come back from the PACS:
  // it is stored, but it is not an image for the model.
  const std::vector<std::string> own_list = db::Reports(pool).own_instances(study_uid);
  const std::set<std::string> own(own_list.begin(), own_list.end());
  for (const db::StudyInstance& r : db::Studies(pool).instances(study_uid)) {
    if (own.count(r.sop_instance_uid)) continue;
    InstanceRow i;
    i.sop_instance_uid = r.sop_instance_uid;
    i.sop_class_uid = r.sop_class_uid;
    i.series_instance_uid = r.series_instance_uid;
    i.file_path = r.file_path;
    i.series_number = r.series_number;
    i.instance_number = r.instance_number;
    i.frames = r.frames;
    // Structured reports and other documents carry no pixels for the model.
    i.has_pixels = r.has_rows_and_columns && !dicom::sop_class::is_structured_report(i.sop_class_uid);
    rows.push_back(i);
  }
  return select_images(rows, route);
}

// What reading a study's images gave: the decoded sources (kept open for the
// SR and presentation states), the findings on their pixels, the text, and
// what GSCo and the backend reported.
struct StudyProcessor::StudyRead {
  std::vector<std::unique_ptr<DcmFileFormat>> sources;
  std::vector<ReadImage> read_images;  // what the presentation states and key images are made from
  std::vector<reports::SrFinding> findings;
  std::string narrative, served_model;
  nlohmann::json gsco_images = nlohmann::json::array();  // GSCo (issue 15): what the specialists said per image
  std::vector<reports::SrSpecialistEvaluation> evaluations;
  std::vector<std::string> prompts;  // each distinct prompt the generalist was asked
  int prompt_tokens = 0, completion_tokens = 0;
  bool truncated = false;
  double decode_ms = 0, inference_ms = 0;
};

// The SR and its companion objects, durable on the storage volume.
struct StudyProcessor::WrittenObjects {
  reports::BuiltSr sr;
  std::string sr_path, model_name;
  std::vector<ReportObject> objects;
  int64_t supersedes = 0;  // the report of the same study and route this one replaces
  double sr_ms = 0;
};

int64_t StudyProcessor::process(const worklist::Job& job, const std::string& owner) {
  const auto t_start = Clock::now();
  const config::Route* route = find_route(config_, job.route);
  if (!route) throw std::runtime_error("route '" + job.route + "' is no longer configured");
  if (!route->specialists.empty() && !specialists_)
    throw std::runtime_error("route '" + route->name + "' lists specialists but this node has none loaded");

  const std::vector<SelectedImage> selected = study_images(pool_, job.study_uid, *route);
  if (selected.empty()) throw std::runtime_error("study " + job.study_uid + " has no image the model can read");

  const BackendIdentity who = backends_.get(route->model).identity();
  bool key_images = false;  // some destination of this route wants marked key images
  for (const auto& d : config_.exports.destinations) key_images = key_images || destination_wants(d, job.route, "key_image");

  StudyRead read;
  for (size_t n = 0; n < selected.size(); ++n) read_image(job, *route, who, selected[n], n, selected.size(), key_images, read);
  if (read.narrative.empty()) read.narrative = "(the model produced no text)";
  // A reader must know the text stops where the token limit cut it.
  if (read.truncated)
    read.narrative += "\n[Truncated: the model stopped at the route's limit of " + std::to_string(route->max_new_tokens) +
                      " tokens; the text above is incomplete.]";

  const WrittenObjects written = write_objects(job, *route, who, key_images, read);
  const int64_t report_id = commit_report(job, owner, *route, who, read, written);
  spdlog::info("pipeline: job {} study={} reported: report {} sr={} findings={} objects={} total {:.0f} ms", job.job_id,
               job.study_uid, report_id, written.sr.sop_instance_uid, read.findings.size(), written.objects.size(),
               ms_since(t_start));
  return report_id;
}

// One selected image: decode its frame, ask GSCo's specialists (when the
// route lists them) and the model, and add its findings and text to `read`.
void StudyProcessor::read_image(const worklist::Job& job, const config::Route& route, const BackendIdentity& who,
                                const SelectedImage& img, size_t n, size_t count, bool key_images, StudyRead& read) {
  auto t = Clock::now();
  auto file = std::make_unique<DcmFileFormat>();
  const std::string path = storage_.absolute(img.file_path);
  OFCondition cond = file->loadFile(path.c_str());
  if (cond.bad()) throw std::runtime_error("cannot read " + img.file_path + ": " + cond.text());
  dicom::DicomPixels pixels = dicom::decode_dicom_frame(*file->getDataset(), img.file_path, img.frame);
  const engine::RgbImage image{pixels.image.width, pixels.image.height, std::move(pixels.image.rgb)};
  read.decode_ms += ms_since(t);

  t = Clock::now();
  config::Route asked = route;  // the route with the prompt GSCo assembled for this image
  GscoImage gsco;
  if (!route.specialists.empty()) {
    gsco = run_gsco(route, image, *specialists_, library_);
    asked.prompt = gsco.prompt;
    read.gsco_images.push_back(gsco_json(gsco, img.sop_instance_uid));
    add_specialist_evaluations(route, gsco, img.sop_instance_uid, read.evaluations);
  }
  if (std::find(read.prompts.begin(), read.prompts.end(), asked.prompt) == read.prompts.end())
    read.prompts.push_back(asked.prompt);
  const FrameInference result = backends_.infer(route.model, image, asked);
  read.inference_ms += ms_since(t);
  spdlog::info("pipeline: job {} study={} sop={} frame={} ({} backend): {}", job.job_id, job.study_uid,
               img.sop_instance_uid, pixels.frame + 1, who.backend, result.log_detail);
  read.prompt_tokens += result.prompt_tokens;
  read.completion_tokens += result.completion_tokens;
  read.truncated = read.truncated || result.truncated;
  if (read.served_model.empty()) read.served_model = served_model_name(result.served_model);

  const int frame_number = pixels.frames > 1 ? pixels.frame + 1 : 0;
  for (const auto& box : result.regions)
    if (auto f = finding_of(job, box, img, frame_number, gsco)) read.findings.push_back(std::move(*f));
  const std::string text = dicom::sanitize_utf8_text(result.narrative);
  if (count > 1)
    read.narrative += (read.narrative.empty() ? "" : "\n") + std::string("Image ") + std::to_string(n + 1) + ": " + text;
  else
    read.narrative = text;
  ReadImage shown{file->getDataset(), pixels.frame};
  if (key_images) {
    shown.width = image.width;
    shown.height = image.height;
    shown.rgb = image.rgb;
  }
  read.read_images.push_back(std::move(shown));
  read.sources.push_back(std::move(file));
}

// The SR (superseding the latest report of the study and route) and, beside
// it, a presentation state per source series and, when wanted, key images
// (issue 16), each written durably.
StudyProcessor::WrittenObjects StudyProcessor::write_objects(const worklist::Job& job, const config::Route& route,
                                                             const BackendIdentity& who, bool key_images,
                                                             StudyRead& read) {
  db::Reports reports_table(pool_);
  WrittenObjects out;
  std::optional<reports::SrPredecessor> predecessor;
  if (const auto latest = reports_table.latest_for_route(job.study_uid, job.route)) {
    out.supersedes = latest->report_id;
    predecessor = reports::SrPredecessor{job.study_uid, latest->sr_series_instance_uid,
                                         dicom::sop_class::kComprehensive3DSr, latest->sr_sop_instance_uid};
  }

  const auto t = Clock::now();
  reports::SrInput input;
  for (const auto& s : read.sources) input.sources.push_back(s->getDataset());
  input.narrative = read.narrative;
  input.language = config::language_code(route.language);
  // The device observer: the model that answered (remote: the served model's
  // id as the server gave it, at the URL's host).
  input.model_name = who.backend == "openai" && !read.served_model.empty() ? read.served_model : who.model_name;
  input.model_version = who.model_version;
  input.device_observer_uid = who.device_observer_uid;
  if (!who.host.empty()) input.device_location = "inference server " + who.host;
  input.content_datetime = now_dicom_datetime();
  input.findings = read.findings;
  input.predecessor = predecessor;
  input.specialist_evaluations = read.evaluations;
  out.sr = reports::build_sr(input);
  out.model_name = input.model_name;
  for (const auto& w : out.sr.warnings) spdlog::warn("pipeline: job {} study={} SR: {}", job.job_id, job.study_uid, w);
  out.sr_path = "reports/" + job.study_uid + "/" + out.sr.series_instance_uid + "/" + out.sr.sop_instance_uid + ".dcm";
  storage_.write_durably(out.sr_path, [&](const std::string& tmp) {
    OFCondition c = out.sr.file->saveFile(tmp.c_str(), EXS_LittleEndianExplicit);
    if (c.bad()) throw std::runtime_error("cannot write SR " + tmp + ": " + c.text());
  });

  ReportObjectsInput objects_input;
  objects_input.study_uid = job.study_uid;
  objects_input.images = std::move(read.read_images);
  objects_input.findings = read.findings;
  if (out.supersedes)
    for (const db::ReportObjectRow& o : reports_table.objects_of(out.supersedes))
      objects_input.earlier.push_back({o.kind, o.series_instance_uid, o.instance_number});
  objects_input.key_images = key_images;
  objects_input.creation_datetime = now_dicom_datetime_with_fraction();
  objects_input.model_name = input.model_name;
  objects_input.model_version = who.model_version;
  std::vector<std::string> object_warnings;
  out.objects = build_and_store_report_objects(objects_input, storage_, object_warnings);
  for (const auto& w : object_warnings) spdlog::warn("pipeline: job {} study={}: {}", job.job_id, job.study_uid, w);
  out.sr_ms = ms_since(t);
  return out;
}

// The report, its findings, one export row per destination and object it
// wants, and the job's completion: one transaction (db::Reports::commit).
int64_t StudyProcessor::commit_report(const worklist::Job& job, const std::string& owner, const config::Route& route,
                                      const BackendIdentity& who, const StudyRead& read,
                                      const WrittenObjects& written) {
  db::NewReport report;
  report.study_uid = job.study_uid;
  report.route = job.route;
  report.model = who.model_name;
  report.model_version = who.model_version;
  report.language = config::language_code(route.language);
  report.text = read.narrative;
  report.sr_sop_instance_uid = written.sr.sop_instance_uid;
  report.sr_series_instance_uid = written.sr.series_instance_uid;
  report.sr_file_path = written.sr_path;
  report.supersedes_report_id = written.supersedes;
  report.decode_ms = read.decode_ms;
  report.inference_ms = read.inference_ms;
  report.sr_ms = written.sr_ms;
  for (const ReportObject& o : written.objects)
    report.objects.push_back({o.kind, o.source_key, o.sop_class_uid, o.sop_instance_uid, o.series_instance_uid,
                              o.file_path, o.instance_number});
  report.backend = who.backend;
  report.served_model = read.served_model;
  report.prompt_tokens = read.prompt_tokens;
  report.completion_tokens = read.completion_tokens;
  report.truncated = read.truncated;
  if (!route.specialists.empty()) {
    for (const auto& p : read.prompts) report.prompt += (report.prompt.empty() ? "" : "\n") + p;
    report.gsco = nlohmann::json{{"mode", gsco_mode_name(route.gsco)}, {"images", read.gsco_images}}.dump();
  } else {
    report.prompt = route.prompt;
  }
  std::vector<db::NewFinding> rows_of_findings;
  for (const auto& f : read.findings) {
    std::optional<double> probability;
    if (f.confidence) probability = *f.confidence / 100.0;
    rows_of_findings.push_back({f.label, f.text, f.sop_instance_uid, f.frame, f.x1, f.y1, f.x2, f.y2, probability});
  }
  std::vector<db::NewExport> exports;
  for (const auto& d : config_.exports.destinations) {
    if (!destination_wants(d, job.route, "sr")) continue;
    exports.push_back({d.name, d.ae_title, d.host, d.port, config_.exports.max_attempts, -1});
    for (size_t i = 0; i < written.objects.size(); ++i)
      if (destination_wants(d, job.route, written.objects[i].kind == "key_image" ? "key_image" : "gsps"))
        exports.push_back({d.name, d.ae_title, d.host, d.port, config_.exports.max_attempts, static_cast<int>(i)});
  }
  const db::CommittedReport committed =
      db::Reports(pool_).commit(report, rows_of_findings, exports, {job.job_id, owner});
  metrics::observe_job({who.model_name, committed.job_seconds, committed.latency_ms / 1000, read.decode_ms / 1000,
                        read.inference_ms / 1000, written.sr_ms / 1000, committed.db_ms / 1000});
  return committed.report_id;
}

}  // namespace firstread::pipeline
