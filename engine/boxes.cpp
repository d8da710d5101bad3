#include "engine/boxes.h"

#include <algorithm>
#include <cctype>

namespace firstread::engine {

static bool parse_int(const std::string& s, size_t& p, int& v) {
  while (p < s.size() && std::isspace(static_cast<unsigned char>(s[p]))) ++p;
  size_t start = p;
  bool neg = false;
  if (p < s.size() && s[p] == '-') {
    neg = true;
    ++p;
  }
  long long acc = 0;
  while (p < s.size() && std::isdigit(static_cast<unsigned char>(s[p])) && acc < 1000000000) acc = acc * 10 + (s[p++] - '0');
  if (p == start || (neg && p == start + 1)) return false;
  v = int(neg ? -acc : acc);
  while (p < s.size() && std::isspace(static_cast<unsigned char>(s[p]))) ++p;
  return true;
}

std::vector<BoxFinding> parse_boxes(const std::string& text, const PreprocessGeometry& g, int scale) {
  std::vector<BoxFinding> out;
  if (scale <= 0) scale = 1000;
  size_t pos = 0;
  std::string label;
  size_t label_end = 0;
  for (;;) {
    size_t b = text.find("<box>", pos);
    if (b == std::string::npos) break;
    // The label is the last <ref>..</ref> before this box (and after the previous box).
    size_t r = text.rfind("<ref>", b);
    label.clear();
    if (r != std::string::npos && r >= label_end) {
      size_t re = text.find("</ref>", r);
      if (re != std::string::npos && re < b) label = text.substr(r + 5, re - r - 5);
    }
    size_t e = text.find("</box>", b);
    if (e == std::string::npos) break;
    const std::string body = text.substr(b + 5, e - b - 5);
    size_t p = 0;
    // [[x1, y1, x2, y2], [..]]
    while (p < body.size() && body[p] != '[') ++p;
    ++p;
    for (;;) {
      while (p < body.size() && (std::isspace(static_cast<unsigned char>(body[p])) || body[p] == ',')) ++p;
      if (p >= body.size() || body[p] != '[') break;
      ++p;
      int v[4];
      bool ok = true;
      for (int k = 0; k < 4 && ok; ++k) {
        ok = parse_int(body, p, v[k]);
        if (ok && k < 3) {
          if (p < body.size() && body[p] == ',') ++p;
          else ok = false;
        }
      }
      if (!ok || p >= body.size() || body[p] != ']') break;
      ++p;
      BoxFinding f;
      f.label = label;
      for (int k = 0; k < 4; ++k) f.model_box[k] = v[k];
      const double vw = g.view_width, vh = g.view_height;
      const double xs[2] = {v[0] / double(scale) * vw - g.pad_left, v[2] / double(scale) * vw - g.pad_left};
      const double ys[2] = {v[1] / double(scale) * vh - g.pad_top, v[3] / double(scale) * vh - g.pad_top};
      f.pixel_box[0] = std::clamp(xs[0], 0.0, double(g.source_width));
      f.pixel_box[2] = std::clamp(xs[1], 0.0, double(g.source_width));
      f.pixel_box[1] = std::clamp(ys[0], 0.0, double(g.source_height));
      f.pixel_box[3] = std::clamp(ys[1], 0.0, double(g.source_height));
      out.push_back(f);
    }
    pos = label_end = e + 6;
  }
  return out;
}

}  // namespace firstread::engine
