#include "reports/model_output.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>

namespace firstread::reports {
namespace {

constexpr const char* kBoxOpen = "<box>";
constexpr const char* kBoxClose = "</box>";
constexpr size_t kBoxOpenSize = 5, kBoxCloseSize = 6;

bool is_space(char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; }

void skip_spaces(const std::string& s, size_t& p) {
  while (p < s.size() && is_space(s[p])) ++p;
}

// An optionally negative decimal integer, spaces around it skipped. Values
// beyond a billion stop accumulating (they are off any grid anyway).
bool parse_int(const std::string& s, size_t& p, int& v) {
  skip_spaces(s, p);
  const size_t start = p;
  const bool negative = p < s.size() && s[p] == '-';
  if (negative) ++p;
  long long acc = 0;
  while (p < s.size() && std::isdigit(static_cast<unsigned char>(s[p])) && acc < 1000000000) acc = acc * 10 + (s[p++] - '0');
  if (p == start || (negative && p == start + 1)) return false;
  v = static_cast<int>(negative ? -acc : acc);
  skip_spaces(s, p);
  return true;
}

// One [x1, y1, x2, y2] at body[p] (p is left after the closing bracket).
bool parse_box(const std::string& body, size_t& p, int* v) {
  if (p >= body.size() || body[p] != '[') return false;
  ++p;
  for (int k = 0; k < 4; ++k) {
    if (!parse_int(body, p, v[k])) return false;
    if (k < 3) {
      if (p >= body.size() || body[p] != ',') return false;
      ++p;
    }
  }
  if (p >= body.size() || body[p] != ']') return false;
  ++p;
  return true;
}

// Model-grid coordinates -> source pixels: scale to the model view, remove the
// padding, clamp to the source image.
void map_to_source(const int* v, const engine::PreprocessGeometry& g, int scale, double* out) {
  const double vw = g.view_width, vh = g.view_height;
  const double x1 = v[0] / double(scale) * vw - g.pad_left, x2 = v[2] / double(scale) * vw - g.pad_left;
  const double y1 = v[1] / double(scale) * vh - g.pad_top, y2 = v[3] / double(scale) * vh - g.pad_top;
  out[0] = std::clamp(x1, 0.0, double(g.source_width));
  out[1] = std::clamp(y1, 0.0, double(g.source_height));
  out[2] = std::clamp(x2, 0.0, double(g.source_width));
  out[3] = std::clamp(y2, 0.0, double(g.source_height));
}

// The label of the box at b: the last <ref>..</ref> before it that starts
// after the previous box ended.
std::string label_before(const std::string& text, size_t b, size_t previous_box_end) {
  const size_t r = text.rfind("<ref>", b);
  if (r == std::string::npos || r < previous_box_end) return "";
  const size_t re = text.find("</ref>", r);
  if (re == std::string::npos || re >= b) return "";
  return text.substr(r + 5, re - r - 5);
}

// A complete box list between <box> and </box>: [[ ... ]] on one line, with
// spaces around; such a block leaves the narrative whole.
bool is_box_block(const std::string& text, size_t begin, size_t end) {
  while (begin < end && is_space(text[begin])) ++begin;
  while (end > begin && is_space(text[end - 1])) --end;
  if (end - begin < 4 || text.compare(begin, 2, "[[") != 0 || text.compare(end - 2, 2, "]]") != 0) return false;
  for (size_t i = begin; i < end; ++i)
    if (text[i] == '\n' || text[i] == '\r') return false;
  return true;
}

void erase_all(std::string& s, const std::string& tag) {
  for (size_t p; (p = s.find(tag)) != std::string::npos;) s.erase(p, tag.size());
}


// The JSON string value of "key" inside text[from, to), or "" (only the
// escapes a label needs: \" \\ \/ \n \t; \uXXXX is kept as written).
std::string json_string_field(const std::string& text, size_t from, size_t to, const std::string& key) {
  const std::string quoted = "\"" + key + "\"";
  size_t k = text.find(quoted, from);
  if (k == std::string::npos || k >= to) return "";
  size_t p = text.find(':', k + quoted.size());
  if (p == std::string::npos || p >= to) return "";
  ++p;
  while (p < to && std::isspace(static_cast<unsigned char>(text[p]))) ++p;
  if (p >= to || text[p] != '"') return "";
  std::string out;
  for (++p; p < to && text[p] != '"'; ++p) {
    if (text[p] == '\\' && p + 1 < to) {
      const char e = text[++p];
      if (e == 'u') out += "\\u";
      else out += e == 'n' ? '\n' : e == 't' ? '\t' : e;
    } else {
      out += text[p];
    }
  }
  return out;
}

// Qwen2.5-VL pixel boxes (see BoxFormat::Syntax::qwen25_json).
std::vector<ModelRegion> parse_qwen_regions(const std::string& text, int sent_width, int sent_height,
                                            int source_width, int source_height) {
  std::vector<ModelRegion> out;
  if (sent_width <= 0 || sent_height <= 0) return out;
  const std::string key = "\"bbox_2d\"";
  for (size_t k = text.find(key); k != std::string::npos; k = text.find(key, k + key.size())) {
    size_t p = text.find(':', k + key.size());
    if (p == std::string::npos) break;
    ++p;
    while (p < text.size() && std::isspace(static_cast<unsigned char>(text[p]))) ++p;
    if (p >= text.size() || text[p] != '[') continue;
    ++p;
    double v[4];
    bool ok = true;
    for (int i = 0; i < 4 && ok; ++i) {
      while (p < text.size() && std::isspace(static_cast<unsigned char>(text[p]))) ++p;
      const char* start = text.c_str() + p;
      char* end = nullptr;
      v[i] = std::strtod(start, &end);
      ok = end != start;
      p += static_cast<size_t>(end - start);
      while (ok && p < text.size() && std::isspace(static_cast<unsigned char>(text[p]))) ++p;
      if (ok && i < 3) ok = p < text.size() && text[p++] == ',';
    }
    if (!ok || p >= text.size() || text[p] != ']') continue;
    // The label lives in the same object: between its '{' and '}'.
    const size_t open = text.rfind('{', k);
    const size_t close = text.find('}', p);
    ModelRegion f;
    if (open != std::string::npos && close != std::string::npos)
      f.label = json_string_field(text, open, close, "label");
    for (int i = 0; i < 4; ++i) f.model_box[i] = static_cast<int>(std::lround(v[i]));
    const double sx = double(source_width) / sent_width, sy = double(source_height) / sent_height;
    f.pixel_box[0] = std::clamp(v[0] * sx, 0.0, double(source_width));
    f.pixel_box[2] = std::clamp(v[2] * sx, 0.0, double(source_width));
    f.pixel_box[1] = std::clamp(v[1] * sy, 0.0, double(source_height));
    f.pixel_box[3] = std::clamp(v[3] * sy, 0.0, double(source_height));
    const int* b = f.model_box;
    f.within_grid = b[0] >= 0 && b[1] >= 0 && b[2] <= sent_width && b[3] <= sent_height && b[0] < b[2] && b[1] < b[3];
    out.push_back(f);
  }
  return out;
}


}  // namespace

bool box_within_grid(const int* model_box, int scale) {
  for (int k = 0; k < 4; ++k)
    if (model_box[k] < 0 || model_box[k] > scale) return false;
  return model_box[0] < model_box[2] && model_box[1] < model_box[3];
}

std::optional<BoxFormat> parse_box_format(const std::string& name) {
  BoxFormat f;
  if (name == "internvl-999") f.scale = 999;
  else if (name == "internvl-1000") f.scale = 1000;
  else if (name == "qwen25-pixels") f.syntax = BoxFormat::Syntax::qwen25_json;
  else return std::nullopt;
  return f;
}

std::vector<ModelRegion> parse_regions(const std::string& text, const engine::PreprocessGeometry& geometry,
                                       const BoxFormat& format) {
  if (format.syntax == BoxFormat::Syntax::qwen25_json)
    return parse_qwen_regions(text, format.sent_width, format.sent_height, geometry.source_width,
                              geometry.source_height);
  const int scale = format.scale > 0 ? format.scale : 1000;
  std::vector<ModelRegion> out;
  size_t pos = 0;
  for (;;) {
    const size_t b = text.find(kBoxOpen, pos);
    if (b == std::string::npos) break;
    const size_t e = text.find(kBoxClose, b);
    if (e == std::string::npos) break;
    const std::string label = label_before(text, b, pos);
    const std::string body = text.substr(b + kBoxOpenSize, e - b - kBoxOpenSize);
    // [[x1, y1, x2, y2], [..]]: the outer bracket, then boxes separated by commas.
    size_t p = body.find('[');
    p = p == std::string::npos ? body.size() : p + 1;
    for (;;) {
      while (p < body.size() && (is_space(body[p]) || body[p] == ',')) ++p;
      ModelRegion region;
      if (!parse_box(body, p, region.model_box)) break;
      region.label = label;
      map_to_source(region.model_box, geometry, scale, region.pixel_box);
      region.within_grid = box_within_grid(region.model_box, scale);
      out.push_back(std::move(region));
    }
    pos = e + kBoxCloseSize;
  }
  return out;
}

std::string strip_region_markup(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  size_t pos = 0;
  for (;;) {
    const size_t b = text.find(kBoxOpen, pos);
    if (b == std::string::npos) {
      out.append(text, pos, std::string::npos);
      break;
    }
    const size_t e = text.find(kBoxClose, b + kBoxOpenSize);
    if (e != std::string::npos && is_box_block(text, b + kBoxOpenSize, e)) {
      out.append(text, pos, b - pos);
      pos = e + kBoxCloseSize;
    } else {
      out.append(text, pos, b + kBoxOpenSize - pos);  // the tag goes below, its text stays
      pos = b + kBoxOpenSize;
    }
  }
  for (const char* tag : {"<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>"}) erase_all(out, tag);
  return out;
}

ModelOutput parse_model_output(const std::string& text, const engine::PreprocessGeometry& geometry,
                               const BoxFormat& format) {
  return {parse_regions(text, geometry, format), strip_region_markup(text)};
}

}  // namespace firstread::reports
