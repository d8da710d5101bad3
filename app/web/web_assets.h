// The results page's files, compiled into the binary by app/web/embed_web.cmake.
#pragma once

#include <cstddef>

namespace firstread::app {

struct WebAsset {
  const char* name;  // file name in app/web, e.g. "index.html"
  const unsigned char* data;
  std::size_t size;
};

// Every file of app/web (html, js, css); the last entry has name == nullptr.
extern const WebAsset kWebAssets[];

}  // namespace firstread::app
