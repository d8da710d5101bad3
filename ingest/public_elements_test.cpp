#include "ingest/public_elements.h"

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcistrmb.h>
#include <dcmtk/dcmdata/dcitem.h>
#include <dcmtk/dcmdata/dcmetinf.h>
#include <dcmtk/dcmdata/dcsequen.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>
#include <iterator>
#include <string>

using firstread::ingest::public_elements_before;

namespace {

const std::string kCtSmall = "/usr/lib/python3/dist-packages/pydicom/data/test_files/CT_small.dcm";
const DcmTagKey kStop(0x0028, 0x0012);

// CT_small (GE, about 120 private elements) written by DCMTK in the given encoding.
std::string ct_small_as(E_TransferSyntax xfer, E_EncodingType sequences, DcmFileFormat* modify = nullptr) {
  DcmFileFormat ff;
  EXPECT_TRUE(ff.loadFile(kCtSmall.c_str()).good());
  if (modify) {
    DcmItem* ref = nullptr;
    EXPECT_TRUE(ff.getDataset()->findOrCreateSequenceItem(DCM_ReferencedImageSequence, ref, -2).good());
    ref->putAndInsertString(DCM_ReferencedSOPInstanceUID, "1.2.3.4");
  }
  char path[] = "/tmp/firstread-public-elements-XXXXXX";
  const int fd = mkstemp(path);
  close(fd);
  EXPECT_TRUE(ff.saveFile(path, xfer, sequences).good());
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), {});
  unlink(path);
  return bytes;
}

std::unique_ptr<DcmFileFormat> parse(const std::string& bytes) {
  DcmInputBufferStream in;
  in.setBuffer(bytes.data(), static_cast<offile_off_t>(bytes.size()));
  in.setEos();
  auto ff = std::make_unique<DcmFileFormat>();
  ff->transferInit();
  EXPECT_TRUE(ff->read(in).good());
  ff->transferEnd();
  return ff;
}

// Every element the original has before the stop tag, public ones with the
// same value in the kept bytes, private ones absent; nothing at or after the stop.
void expect_public_header_of(const std::string& original, const std::string& kept) {
  auto full = parse(original);
  auto part = parse(kept);
  DcmDataset& a = *full->getDataset();
  DcmDataset& b = *part->getDataset();
  int publics = 0, privates = 0;
  for (unsigned long i = 0; i < a.card(); ++i) {
    DcmElement* e = a.getElement(i);
    const DcmTagKey tag = e->getTag();
    if (!(tag < kStop)) {
      EXPECT_FALSE(b.tagExists(tag)) << tag.toString() << " is after the stop tag";
      continue;
    }
    if (tag.getGroup() % 2) {
      ++privates;
      EXPECT_FALSE(b.tagExists(tag)) << tag.toString() << " is private";
      continue;
    }
    ++publics;
    OFString va, vb;
    e->getOFStringArray(va);
    DcmElement* kept_element = nullptr;
    ASSERT_TRUE(b.findAndGetElement(tag, kept_element).good()) << tag.toString() << " missing";
    kept_element->getOFStringArray(vb);
    EXPECT_EQ(std::string(va.c_str()), std::string(vb.c_str())) << tag.toString();
  }
  EXPECT_GT(privates, 100) << "CT_small should carry GE's private groups";
  EXPECT_GT(publics, 50);
  OFString ts;
  part->getMetaInfo()->findAndGetOFString(DCM_TransferSyntaxUID, ts);
  EXPECT_FALSE(ts.empty());
  OFString rows;
  EXPECT_TRUE(b.findAndGetOFString(DCM_Columns, rows).good());
  EXPECT_EQ(std::string(rows.c_str()), "128");
}

}  // namespace

TEST(PublicElements, ExplicitVrHeaderKeepsEveryPublicElementAndNoPrivateOne) {
  const std::string bytes = ct_small_as(EXS_LittleEndianExplicit, EET_ExplicitLength);
  auto kept = public_elements_before(bytes.data(), bytes.size(), true, 0x0028, 0x0012);
  ASSERT_TRUE(kept);
  EXPECT_TRUE(kept->reached_stop);
  EXPECT_LT(kept->bytes.size(), bytes.size() / 4);
  expect_public_header_of(bytes, kept->bytes);
}

TEST(PublicElements, ImplicitVrHeaderKeepsEveryPublicElementAndNoPrivateOne) {
  const std::string bytes = ct_small_as(EXS_LittleEndianImplicit, EET_ExplicitLength);
  auto kept = public_elements_before(bytes.data(), bytes.size(), false, 0x0028, 0x0012);
  ASSERT_TRUE(kept);
  EXPECT_TRUE(kept->reached_stop);
  expect_public_header_of(bytes, kept->bytes);
}

TEST(PublicElements, SequenceOfDefinedLengthIsKeptUndefinedLengthIsLeftToDcmtk) {
  DcmFileFormat with_sequence;
  const std::string defined = ct_small_as(EXS_LittleEndianExplicit, EET_ExplicitLength, &with_sequence);
  auto kept = public_elements_before(defined.data(), defined.size(), true, 0x0028, 0x0012);
  ASSERT_TRUE(kept);
  auto part = parse(kept->bytes);
  DcmItem* item = nullptr;
  ASSERT_TRUE(part->getDataset()->findAndGetSequenceItem(DCM_ReferencedImageSequence, item, 0).good());
  OFString uid;
  item->findAndGetOFString(DCM_ReferencedSOPInstanceUID, uid);
  EXPECT_EQ(std::string(uid.c_str()), "1.2.3.4");

  const std::string undefined = ct_small_as(EXS_LittleEndianExplicit, EET_UndefinedLength, &with_sequence);
  EXPECT_FALSE(public_elements_before(undefined.data(), undefined.size(), true, 0x0028, 0x0012));
}

TEST(PublicElements, BytesThatStopBeforeTheStopTagOrAreNotPs310AreLeftToDcmtk) {
  const std::string bytes = ct_small_as(EXS_LittleEndianExplicit, EET_ExplicitLength);
  // Cut inside the value of Rows (0028,0010) US, 8 + 2 bytes: an element before the stop tag is incomplete.
  const size_t rows = bytes.find(std::string("\x28\x00\x10\x00US", 6));
  ASSERT_NE(rows, std::string::npos);
  EXPECT_FALSE(public_elements_before(bytes.data(), rows + 9, true, 0x0028, 0x0012));
  // Cut right after it: complete so far, the stop not reached yet.
  auto so_far = public_elements_before(bytes.data(), rows + 10, true, 0x0028, 0x0012);
  ASSERT_TRUE(so_far);
  EXPECT_FALSE(so_far->reached_stop);
  // No "DICM" after the preamble.
  std::string no_magic = bytes;
  no_magic[128] = 'X';
  EXPECT_FALSE(public_elements_before(no_magic.data(), no_magic.size(), true, 0x0028, 0x0012));
  // A stop after every tag of the file: all of it walked, the stop never reached.
  auto all = public_elements_before(bytes.data(), bytes.size(), true, 0xffff, 0xffff);
  ASSERT_TRUE(all);
  EXPECT_FALSE(all->reached_stop);
}
