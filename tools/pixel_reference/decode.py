#!/usr/bin/python3
"""Reference for dicom/pixels.cpp: one DICOM frame -> 8-bit RGB, computed
with pydicom (python3-pydicom 2.3, numpy, Pillow for JPEG / JPEG 2000).

Usage:
  decode.py FILE FRAME OUT.ppm        one frame; prints one JSON line
  decode.py --batch MANIFEST          MANIFEST lines: FILE<TAB>FRAME<TAB>OUT.ppm;
                                      prints one JSON line per manifest line
FRAME is 0-based; -1 means the middle frame (Number of Frames // 2).
JSON: {"file", "ok", "frame", "frames", "photometric", "window", "decoder",
       "width", "height"} or {"file", "ok": false, "reason"}.

Decoding: pydicom's pixel_array. When pydicom has no handler for the transfer
syntax (JPEG-LS, JPEG lossless, 12-bit JPEG), GDCM's `gdcmconv --raw` (an
independent implementation) decompresses the file first and pydicom reads that.

The 8-bit rule (dicom/pixels.cpp implements the same, keep them in step):
  1. Stored values. Native and non-J2K compressed data: the low Bits Stored
     bits, sign-extended when Pixel Representation is 1 (PS3.5 8.1.1).
     JPEG 2000: the codestream's own precision wins (pydicom's
     APPLY_J2K_CORRECTIONS), because several files disagree with their header;
     unsigned codestream data in a signed image (Pixel Representation 1) is
     read as two's complement of the codestream precision.
  2. Grey (MONOCHROME1/2): pydicom apply_modality_lut (Rescale Slope/Intercept
     or Modality LUT Sequence), then
       - VOI LUT Sequence (first item): the value (rounded half to even)
         indexes the LUT, clamped to its ends (voi_lut_lookup); 8-bit value =
         entry * 255 / (2^LUTDescriptor[2] - 1);
       - else the first Window Center/Width, when usable (LINEAR: width >= 1,
         LINEAR_EXACT/SIGMOID: width > 0): pydicom apply_windowing (PS3.3
         C.11.2.1.2/C.11.2.1.3) whose output range [y_min, y_max] is mapped
         linearly onto 0..255;
       - else min-max over the frame: (v - min) * 255 / (max - min), all 0
         when max == min.
     MONOCHROME1: 255 - value. Grey is replicated into R, G and B.
  3. RGB: as is; YBR_FULL / YBR_FULL_422: pydicom convert_color_space to RGB
     (JPEG 2000 YBR_RCT/YBR_ICT come out of the codec as RGB already);
     PALETTE COLOR: pydicom apply_color_lut, entries scaled from 8 bits when
     the LUT data holds one byte per entry, else from the LUT Descriptor's
     bit depth. Colour samples wider than 8 bits: v * 255 / (2^Bits Stored - 1)
     (the engine uses the codestream precision for JPEG 2000 colour; no
     sample file has JPEG 2000 colour wider than 8 bits).
  4. Rounding: floor(v + 0.5), clamped to 0..255.
"""
import json
import os
import subprocess
import sys
import tempfile
import warnings

import numpy as np
import pydicom
from pydicom.pixel_data_handlers import util as pdu

warnings.simplefilter("ignore")

J2K_SYNTAXES = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91")


def to_u8(values):
    return np.clip(np.floor(np.asarray(values, dtype=np.float64) + 0.5), 0, 255).astype(np.uint8)


def mask_stored_bits(arr, ds):
    """Keep the low Bits Stored bits; sign-extend for Pixel Representation 1."""
    bits_stored = int(ds.BitsStored)
    bits_allocated = int(ds.BitsAllocated)
    if bits_allocated == 1 or bits_stored >= bits_allocated:
        return arr
    values = arr.astype(np.int64) & ((1 << bits_stored) - 1)
    if int(ds.PixelRepresentation) == 1:
        sign = 1 << (bits_stored - 1)
        values = np.where(values & sign, values - (1 << bits_stored), values)
    return values


def frame_array(ds, frame, frames):
    arr = ds.pixel_array
    if frames > 1:
        arr = arr[frame]
    return arr


def first_value(ds, keyword):
    value = ds[keyword].value
    return float(value[0] if ds[keyword].VM > 1 else value)


def window_usable(ds):
    """A first window that pydicom's apply_windowing accepts; else min-max."""
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return False
    try:
        width = first_value(ds, "WindowWidth")
        first_value(ds, "WindowCenter")
    except (TypeError, ValueError, IndexError):
        return False
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip()
    if function == "LINEAR":
        return width >= 1
    return function in ("LINEAR_EXACT", "SIGMOID") and width > 0


def voi_lut_lookup(values, item, little_endian):
    """PS3.3 C.11.2.1.1: values below the first mapped one take the first
    entry, values past the last entry the last one. Written out rather than
    pydicom 2.3's apply_voi, which builds its index in the LUT's dtype: with
    8-bit entries `value - first_map` wraps modulo 256 before it is clipped."""
    descriptor = [int(v) for v in item.LUTDescriptor]
    entries = descriptor[0] or 65536
    first_mapped = descriptor[1]
    data = item["LUTData"]
    if data.VR == "OW":
        lut = np.frombuffer(bytes(data.value), dtype="<u2" if little_endian else ">u2")[:entries]
    else:
        lut = np.asarray(data.value, dtype=np.int64)[:entries]
    index = np.clip(values - first_mapped, 0, entries - 1)
    return lut[index]


def grey_to_u8(arr, ds):
    values = pdu.apply_modality_lut(arr, ds).astype(np.float64)
    if ds.get("VOILUTSequence"):
        item = ds.VOILUTSequence[0]
        depth = int(item.LUTDescriptor[2])
        out = voi_lut_lookup(np.rint(values).astype(np.int64), item, ds.is_little_endian).astype(np.float64)
        return to_u8(out * 255.0 / ((1 << depth) - 1)), "voi-lut"
    if window_usable(ds):
        # The output range apply_windowing maps onto (copied from pydicom 2.3).
        if ds.get("ModalityLUTSequence"):
            y_min, y_max = 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
        elif int(ds.PixelRepresentation) == 0:
            y_min, y_max = 0.0, float(2 ** int(ds.BitsStored) - 1)
        else:
            y_min, y_max = float(-2 ** (int(ds.BitsStored) - 1)), float(2 ** (int(ds.BitsStored) - 1) - 1)
        slope, intercept = ds.get("RescaleSlope", None), ds.get("RescaleIntercept", None)
        if slope is not None and intercept is not None:
            y_min = y_min * float(slope) + float(intercept)
            y_max = y_max * float(slope) + float(intercept)
        out = pdu.apply_windowing(values, ds, 0)
        window = "window %g/%g" % (first_value(ds, "WindowCenter"), first_value(ds, "WindowWidth"))
        return to_u8((out - y_min) * 255.0 / (y_max - y_min)), window
    lo, hi = float(values.min()), float(values.max())
    if hi == lo:
        return to_u8(np.zeros_like(values)), "minmax"
    return to_u8((values - lo) * 255.0 / (hi - lo)), "minmax"


def decode_one(path, frame_arg):
    ds = pydicom.dcmread(path, force=True)
    if "PixelData" not in ds:
        raise ValueError("no pixel data")
    decoder = "pydicom"
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    frame = frames // 2 if frame_arg < 0 else frame_arg
    if frame >= frames:
        raise ValueError("frame %d out of range (%d frames)" % (frame, frames))
    photometric = str(ds.PhotometricInterpretation).strip()
    syntax = str(ds.file_meta.TransferSyntaxUID)
    try:
        arr = frame_array(ds, frame, frames)
    except Exception as first_error:
        # Native data pydicom refuses (truncated, odd) stays refused: GDCM
        # would pad it, and that is not a reference.
        if not ds.file_meta.TransferSyntaxUID.is_compressed:
            raise
        # No pydicom handler for this syntax: let GDCM decompress it.
        with tempfile.TemporaryDirectory() as tmp:
            raw_path = os.path.join(tmp, "raw.dcm")
            done = subprocess.run(["gdcmconv", "--raw", path, raw_path], capture_output=True)
            if done.returncode != 0:
                raise ValueError("pydicom: %s; gdcmconv failed" % first_error)
            ds = pydicom.dcmread(raw_path, force=True)
            arr = frame_array(ds, frame, frames)
            decoder = "gdcmconv+pydicom"
            # GDCM writes the colour model of what it decompressed (RGB for
            # J2K RCT/ICT); that is what the values are in now.
            photometric = str(ds.PhotometricInterpretation).strip()
    if syntax not in J2K_SYNTAXES:
        arr = mask_stored_bits(arr, ds)
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        grey, window = grey_to_u8(arr, ds)
        if photometric == "MONOCHROME1":
            grey = 255 - grey
        rgb = np.repeat(grey[:, :, None], 3, axis=2)
    elif photometric == "PALETTE COLOR":
        lut_rgb = pdu.apply_color_lut(arr, ds).astype(np.float64)
        # apply_color_lut judges the entry size by the data length (8-bit
        # entries may be packed one per byte); scale from that size.
        entries = int(ds.RedPaletteColorLookupTableDescriptor[0]) or 65536
        depth = 8 if len(ds.RedPaletteColorLookupTableData) == entries else int(ds.RedPaletteColorLookupTableDescriptor[2])
        rgb = to_u8(lut_rgb * 255.0 / ((1 << depth) - 1))
        window = "palette"
    elif photometric in ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT"):
        colour = arr
        # pydicom leaves JPEG YBR data in YBR (Pillow draft mode) and native
        # YBR is YBR; J2K RCT/ICT come out of OpenJPEG as RGB already.
        if photometric in ("YBR_FULL", "YBR_FULL_422"):
            colour = pdu.convert_color_space(colour, "YBR_FULL", "RGB")
        bits = int(ds.BitsStored)
        if bits > 8:
            rgb = to_u8(colour.astype(np.float64) * 255.0 / ((1 << bits) - 1))
            window = "scaled (%d-bit colour)" % bits
        else:
            rgb = colour.astype(np.uint8)
            window = "none (8-bit colour)"
    else:
        raise ValueError("unsupported photometric interpretation '%s'" % photometric)
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    return rgb, {"frame": frame, "frames": frames, "photometric": photometric,
                 "window": window, "decoder": decoder}


def write_ppm(path, rgb):
    height, width = rgb.shape[:2]
    with open(path, "wb") as f:
        f.write(b"P6\n%d %d\n255\n" % (width, height))
        f.write(rgb.tobytes())


def run(path, frame_arg, out_path):
    try:
        rgb, info = decode_one(path, frame_arg)
    except Exception as error:  # the reason is the result
        return {"file": path, "ok": False, "reason": str(error)}
    write_ppm(out_path, rgb)
    info.update({"file": path, "ok": True, "width": int(rgb.shape[1]), "height": int(rgb.shape[0])})
    return info


def main(argv):
    if len(argv) == 3 and argv[1] == "--batch":
        with open(argv[2]) as manifest:
            for line in manifest:
                parts = line.rstrip("\n").split("\t")
                if len(parts) == 3:
                    print(json.dumps(run(parts[0], int(parts[1]), parts[2])), flush=True)
        return 0
    if len(argv) == 4:
        result = run(argv[1], int(argv[2]), argv[3])
        print(json.dumps(result))
        return 0 if result["ok"] else 2
    sys.stderr.write(__doc__)
    return 64


if __name__ == "__main__":
    sys.exit(main(sys.argv))
