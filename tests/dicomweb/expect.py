#!/usr/bin/python3
"""What a STOW-RS receiver following PS3.18 must answer for each file, decided
with pydicom (not with the code under test), and each stored file's first
frame as a client must get it from WADO-RS .../frames/1.

Usage: expect.py OUT_DIR FILE...   prints a JSON object per file (one line each):
  {"file", "outcome": "stored" | "C000" | "A900", "why", "sop", "sop_class", "study", "series",
   "transfer_syntax", "frame": path of frame 1's expected bytes or null, "frame_kind": native | encapsulated | null,
   "rle_decoded": path of frame 1 decoded (RLE only) or null}
outcome C000: not a PS3.10 file with a meta header, a data set not encoded in its transfer syntax's VR
form, a value shorter than its length (truncated), or a missing / invalid UID (one encoded as UN is not a UID);
A900: the meta header's Media Storage SOP Class / Instance UID differs from the data set's.
"""
import json
import os
import re
import sys
import warnings

import pydicom
from pydicom.encaps import generate_pixel_data_frame

UID = re.compile(r"^(0|[0-9]+)(\.[0-9]+)*$")


def valid_uid(v):
    return isinstance(v, str) and 0 < len(v) <= 64 and UID.match(v) is not None


UID_TAGS = (0x00080016, 0x00080018, 0x0020000D, 0x0020000E)


def malformed(ds, caught):
    """Why the file is not a well-formed PS3.10 file, or None."""
    for w in caught:
        if "Expected explicit VR" in str(w.message) or "Expected implicit VR" in str(w.message):
            return "the data set is not encoded in its transfer syntax's VR form"
    for tag in list(ds.keys()):
        raw = ds.get_item(tag)
        value, length = getattr(raw, "value", None), getattr(raw, "length", None)
        if isinstance(value, (bytes, bytearray)) and length not in (None, 0xFFFFFFFF) and len(value) < length:
            return "element %s is truncated (%d of %d bytes)" % (tag, len(value), length)
        if tag in UID_TAGS and getattr(raw, "VR", None) == "UN":
            return "UID %s is encoded with VR UN" % tag
    return None


def native_frame(ds):
    """Frame 1 of native pixel data, little endian, as the raw bytes of the element."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    samples = int(getattr(ds, "SamplesPerPixel", 1))
    bits = int(ds.BitsAllocated)
    if bits not in (8, 16, 32):
        return None
    if getattr(ds, "PhotometricInterpretation", "") == "YBR_FULL_422":
        return None
    arr = ds.pixel_array  # decoded by pydicom, in machine (little endian) order
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    first = arr[0] if frames > 1 else arr
    planar = int(getattr(ds, "PlanarConfiguration", 0) or 0)
    if samples > 1 and planar == 1:
        first = first.transpose(2, 0, 1)  # stored colour-by-plane
    data = first.astype(first.dtype.newbyteorder("<")).tobytes()
    assert len(data) == rows * cols * samples * bits // 8
    return data


def main():
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    for n, path in enumerate(sys.argv[2:]):
        r = {"file": path, "outcome": "C000", "why": "", "sop": "", "sop_class": "", "study": "", "series": "",
             "transfer_syntax": "", "frame": None, "frame_kind": None, "rle_decoded": None}
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                ds = pydicom.dcmread(path)  # force=False: a PS3.10 preamble and meta header are required
        except Exception as e:
            r["why"] = "not a PS3.10 file: %s" % e
            print(json.dumps(r))
            continue
        problem = malformed(ds, caught)
        meta = ds.file_meta
        r["sop"] = str(getattr(ds, "SOPInstanceUID", ""))
        r["sop_class"] = str(getattr(ds, "SOPClassUID", ""))
        r["study"] = str(getattr(ds, "StudyInstanceUID", ""))
        r["series"] = str(getattr(ds, "SeriesInstanceUID", ""))
        ts = str(getattr(meta, "TransferSyntaxUID", ""))
        r["transfer_syntax"] = ts
        if not ts:
            r["why"] = "no Transfer Syntax UID in the meta header"
        elif problem:
            r["why"] = problem
        elif not all(valid_uid(r[k]) for k in ("sop", "sop_class", "study", "series")):
            r["why"] = "a missing or invalid UID"
        elif str(getattr(meta, "MediaStorageSOPInstanceUID", "")) != r["sop"] or \
                str(getattr(meta, "MediaStorageSOPClassUID", "")) != r["sop_class"]:
            r["outcome"] = "A900"
            r["why"] = "meta header UIDs differ from the data set's"
        else:
            r["outcome"] = "stored"
        if r["outcome"] == "stored" and "PixelData" in ds:
            try:
                if ds.file_meta.TransferSyntaxUID.is_compressed:
                    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
                    data = next(generate_pixel_data_frame(ds.PixelData, frames))
                    r["frame_kind"] = "encapsulated"
                    if ts == "1.2.840.10008.1.2.5":
                        decoded = native_frame(ds)
                        if decoded is not None:
                            p = os.path.join(out_dir, "%d.rle_decoded" % n)
                            open(p, "wb").write(decoded)
                            r["rle_decoded"] = p
                else:
                    data = native_frame(ds)
                    r["frame_kind"] = "native"
                if data is not None:
                    p = os.path.join(out_dir, "%d.frame" % n)
                    open(p, "wb").write(data)
                    r["frame"] = p
                else:
                    r["frame_kind"] = None
            except Exception as e:  # pixel data pydicom cannot read: no frame expectation
                r["frame_kind"] = None
                r["why"] = "frame not checked: %s" % e
        print(json.dumps(r))


if __name__ == "__main__":
    main()
