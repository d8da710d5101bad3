// The multipart/related reader STOW-RS streams bodies through: the same parts
// whichever way the body is cut into pieces, delimiters split across pieces,
// bodies holding boundary look-alikes, preamble and epilogue, refusals.
#include <gtest/gtest.h>

#include <random>

#include "app/http/dicomweb_multipart.h"

using namespace firstread::app::http;

namespace {

struct Part {
  std::map<std::string, std::string> headers;
  std::string body;
  bool ended = false;
};

// Feeds `body` in pieces of the given sizes (cycled) and collects the parts.
std::vector<Part> read_parts(const std::string& boundary, const std::string& body, const std::vector<size_t>& pieces,
                             bool* finished = nullptr) {
  std::vector<Part> parts;
  MultipartReader reader(boundary, {[&](const auto& h) { parts.push_back({h, "", false}); },
                                    [&](const char* d, size_t n) { parts.back().body.append(d, n); },
                                    [&] { parts.back().ended = true; }});
  size_t at = 0, k = 0;
  while (at < body.size()) {
    const size_t n = std::min(pieces[k++ % pieces.size()], body.size() - at);
    reader.feed(body.data() + at, n);
    at += n;
  }
  if (finished) *finished = reader.finished();
  return parts;
}

std::string binary_blob(size_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(gen() & 0xFF);
  return s;
}

}  // namespace

TEST(DicomwebMultipart, SplitsPartsWhateverThePieceSizes) {
  const std::string boundary = "b0undary-42";
  const std::string first = binary_blob(70000, 1);
  // A body that contains the boundary without the CRLF before it, and a CRLF-- not followed by it.
  const std::string second = "--b0undary-42 inside\r\n--b0undary-4 almost\r\n" + binary_blob(1000, 2);
  const std::string body = "preamble to ignore\r\n--" + boundary +
                           "\r\nContent-Type: application/dicom\r\nContent-Location: a\r\n\r\n" + first + "\r\n--" +
                           boundary + "  \r\ncontent-type:application/dicom\r\n\r\n" + second + "\r\n--" + boundary +
                           "--\r\nepilogue";
  for (const std::vector<size_t>& pieces : std::vector<std::vector<size_t>>{
           {1}, {2}, {3}, {7}, {13, 1}, {4096}, {65536}, {1 << 20}, {5, 16, 1, 999}}) {
    bool finished = false;
    const auto parts = read_parts(boundary, body, pieces, &finished);
    ASSERT_EQ(parts.size(), 2u) << "pieces of " << pieces[0];
    EXPECT_TRUE(finished);
    EXPECT_EQ(parts[0].headers.at("content-type"), "application/dicom");
    EXPECT_EQ(parts[0].headers.at("content-location"), "a");
    EXPECT_EQ(parts[1].headers.at("content-type"), "application/dicom");
    EXPECT_TRUE(parts[0].body == first) << "pieces of " << pieces[0];
    EXPECT_TRUE(parts[1].body == second) << "pieces of " << pieces[0];
    EXPECT_TRUE(parts[0].ended && parts[1].ended);
  }
}

TEST(DicomwebMultipart, BodyStartingWithTheDelimiterAndPartsWithoutHeaders) {
  const auto parts = read_parts("x", "--x\r\n\r\nabc\r\n--x\r\n\r\n\r\n--x--", {1});
  ASSERT_EQ(parts.size(), 2u);
  EXPECT_TRUE(parts[0].headers.empty());
  EXPECT_EQ(parts[0].body, "abc");
  EXPECT_EQ(parts[1].body, "");
}

TEST(DicomwebMultipart, TruncatedBodyLeavesThePartOpenAndUnfinished) {
  bool finished = true;
  const auto parts = read_parts("x", "--x\r\nContent-Type: application/dicom\r\n\r\nhalf a fi", {4}, &finished);
  ASSERT_EQ(parts.size(), 1u);
  EXPECT_FALSE(parts[0].ended);
  EXPECT_FALSE(finished);
}

TEST(DicomwebMultipart, RefusesMalformedHeadersAndBoundaries) {
  EXPECT_THROW(read_parts("x", "--x\r\nno colon here\r\n\r\nabc\r\n--x--", {64}), std::invalid_argument);
  EXPECT_THROW(read_parts("x", "--x\r\n" + std::string(20000, 'a'), {1024}), std::invalid_argument);
  EXPECT_THROW(read_parts("x", "--xjunk\r\n\r\nabc\r\n--x--", {64}), std::invalid_argument);
  EXPECT_THROW(MultipartReader("", {}), std::invalid_argument);
  EXPECT_THROW(MultipartReader(std::string(71, 'b'), {}), std::invalid_argument);
}

TEST(DicomwebMultipart, MediaTypesAndAcceptLists) {
  const MediaType m = parse_media_type("Multipart/Related; type=\"application/dicom\"; boundary=\"a;b,c\"");
  EXPECT_EQ(m.type, "multipart/related");
  EXPECT_EQ(m.param("type"), "application/dicom");
  EXPECT_EQ(m.param("boundary"), "a;b,c");
  const auto accept =
      parse_accept("multipart/related; type=\"application/octet-stream\"; transfer-syntax=*, image/png;q=0.5");
  ASSERT_EQ(accept.size(), 2u);
  EXPECT_EQ(accept[0].param("transfer-syntax"), "*");
  EXPECT_EQ(accept[1].type, "image/png");
  EXPECT_THROW(parse_media_type("nonsense"), std::invalid_argument);
  EXPECT_THROW(parse_media_type("a/b; novalue"), std::invalid_argument);
}

TEST(DicomwebMultipart, WriterOutputReadsBack) {
  MultipartWriter w;
  w.add("application/dicom", "one");
  w.add("application/dicom", binary_blob(5000, 3));
  const std::string boundary = w.boundary();
  const std::string body = w.finish();
  bool finished = false;
  const auto parts = read_parts(boundary, body, {100}, &finished);
  ASSERT_EQ(parts.size(), 2u);
  EXPECT_TRUE(finished);
  EXPECT_EQ(parts[0].body, "one");
  EXPECT_EQ(parts[1].headers.at("content-length"), "5000");
  EXPECT_TRUE(parts[1].body == binary_blob(5000, 3));
}
