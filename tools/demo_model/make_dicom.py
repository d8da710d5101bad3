#!/usr/bin/python3
"""Writes held-out phantoms (never used in training) as DICOM studies, plus a
ground truth with boxes in source pixels.

  chest   CR and DX, MONOCHROME2 and MONOCHROME1, 16-bit words (12 or 16 bits
          stored) with Rescale Slope/Intercept; most with a window that maps
          back to the phantom's 8-bit values, some without (min-max); a few
          JPEG-lossless compressed (dcmcjpeg)
  derm    XC (VL Photographic), RGB 8-bit
  fundus  OP (Ophthalmic Photography 8 Bit), RGB 8-bit
  endo    ES (VL Endoscopic), RGB 8-bit
  RGB files: every third one JPEG baseline compressed with DCMTK's dcmcjpeg
  (YBR_FULL_422 after compression).

One study per image. Usage: make_dicom.py OUT_DIR [--per-modality 40]
Writes OUT_DIR/<modality>/<n>.dcm and OUT_DIR/ground_truth.json:
  [{"file", "modality", "dicom_modality", "study_uid", "width", "height",
    "photometric", "compressed", "findings": [{"label", "boxes": [[x1,y1,x2,y2] source pixels]}]}]
These are synthetic phantoms, not patient images.
"""
import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import phantoms  # noqa: E402

SOP = {"CR": "1.2.840.10008.5.1.4.1.1.1", "DX": "1.2.840.10008.5.1.4.1.1.1.1",
       "XC": "1.2.840.10008.5.1.4.1.1.77.1.4", "OP": "1.2.840.10008.5.1.4.1.1.77.1.5.1",
       "ES": "1.2.840.10008.5.1.4.1.1.77.1.1"}
BODY = {"chest": "CHEST", "derm": "SKIN", "fundus": "EYE", "endo": "COLON"}
PREFIX = "1.2.826.0.1.3680043.8.498."  # pydicom's example root; deterministic suffixes below


def uid(*parts):
    return generate_uid(prefix=PREFIX, entropy_srcs=["firstread-demo"] + [str(p) for p in parts])


def base_dataset(path, dicom_modality, key, idx, p):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SOP[dicom_modality]
    meta.MediaStorageSOPInstanceUID = uid(key, idx, "sop")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(path, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = uid(key, idx, "study")
    ds.SeriesInstanceUID = uid(key, idx, "series")
    ds.Modality = dicom_modality
    ds.BodyPartExamined = BODY[key]
    ds.PatientName = "PHANTOM^%s^%03d" % (key.upper(), idx)
    ds.PatientID = "PH-%s-%03d" % (key.upper(), idx)
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.AccessionNumber = "DEMO%s%03d" % (key[:2].upper(), idx)
    ds.StudyID = str(idx)
    ds.StudyDate = "20260101"
    ds.StudyTime = "%02d%02d00" % (8 + idx // 60 % 10, idx % 60)
    ds.StudyDescription = "firstread demo phantom (synthetic, not a patient)"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Manufacturer = "firstread demo phantoms"
    ds.ImageComments = "Synthetic phantom for firstread's demo model; seed %d" % p["seed"]
    ds.Rows, ds.Columns = p["height"], p["width"]
    ds.is_little_endian, ds.is_implicit_VR = True, False
    return ds


def write_grey(path, key, idx, p, rng):
    mod = "CR" if idx % 2 == 0 else "DX"
    mono1 = idx % 4 in (1, 2)
    v8 = np.asarray(p["image"].convert("L"), dtype=np.int32)
    ds = base_dataset(path, mod, key, idx, p)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if mono1 else "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.PixelRepresentation = 0
    src = (255 - v8) if mono1 else v8
    if idx % 3 != 2:
        # 12 bits stored; modality value = raw - 1024; window (1024.5, 4081) gives back the 8-bit value
        raw = src * 16 + 8
        ds.BitsStored, ds.HighBit = 12, 11
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = "1", "-1024", "US"
        ds.WindowCenter, ds.WindowWidth = "1024.5", "4081"
        window = "window"
    else:
        # 16 bits stored, slope 0.5, no window: the reader stretches min..max
        raw = src * 200 + 1000
        ds.BitsStored, ds.HighBit = 16, 15
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = "0.5", "0", "US"
        window = "minmax"
    if mod == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PixelData = raw.astype("<u2").tobytes()
    ds.save_as(path, write_like_original=False)
    return mod, ds.PhotometricInterpretation, window


def write_rgb(path, key, idx, p):
    mod = {"derm": "XC", "fundus": "OP", "endo": "ES"}[key]
    ds = base_dataset(path, mod, key, idx, p)
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if mod == "OP":
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.ImageLaterality = "R" if idx % 2 else "L"
    ds.PixelData = np.asarray(p["image"].convert("RGB"), dtype=np.uint8).tobytes()
    ds.save_as(path, write_like_original=False)
    return mod, "RGB", "none"


def jpeg(path, lossless):
    if not shutil.which("dcmcjpeg"):
        return False
    tmp = path + ".tmp"
    args = ["dcmcjpeg", "+e1" if lossless else "+eb"] + ([] if lossless else ["+q", "92"]) + [path, tmp]
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode != 0:
        print("dcmcjpeg failed on", path, r.stderr, file=sys.stderr)
        return False
    os.replace(tmp, path)
    return True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--per-modality", type=int, default=40)
    ap.add_argument("--first", type=int, default=0,
                    help="first held-out index (seed HELDOUT_BASE + FIRST): e.g. 40 for a selection set that "
                         "leaves out bench/demo_accuracy's 40")
    ap.add_argument("--modalities", default=",".join(phantoms.MODALITIES))
    args = ap.parse_args()
    mods = args.modalities.split(",")
    unknown = [m for m in mods if m not in phantoms.MODALITIES]
    if unknown:
        sys.exit("make_dicom: unknown modality %s (known: %s)" % (", ".join(unknown), ", ".join(phantoms.MODALITIES)))
    truth = []
    rng = np.random.RandomState(99)
    for key in mods:
        os.makedirs(os.path.join(args.out, key), exist_ok=True)
        for idx in range(args.first, args.first + args.per_modality):
            p = phantoms.make(key, phantoms.HELDOUT_BASE + idx)
            rel = os.path.join(key, "%03d.dcm" % idx)
            path = os.path.join(args.out, rel)
            if key == "chest":
                mod, photo, window = write_grey(path, key, idx, p, rng)
                comp = jpeg(path, True) and "jpeg-lossless" if idx % 5 == 4 else "none"
            else:
                mod, photo, window = write_rgb(path, key, idx, p)
                comp = jpeg(path, False) and "jpeg-baseline" if idx % 3 == 1 else "none"
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            truth.append({"file": rel, "modality": key, "dicom_modality": mod, "study_uid": ds.StudyInstanceUID,
                          "sop_instance_uid": ds.SOPInstanceUID, "seed": p["seed"], "width": p["width"],
                          "height": p["height"], "photometric": str(ds.PhotometricInterpretation),
                          "transfer_syntax": str(ds.file_meta.TransferSyntaxUID), "window": window,
                          "compressed": comp or "none", "findings": p["findings"]})
    with open(os.path.join(args.out, "ground_truth.json"), "w") as f:
        json.dump({"note": "synthetic phantoms (held-out seeds), boxes in source pixels [x1, y1, x2, y2)",
                   "generated": datetime.date(2026, 1, 1).isoformat(), "studies": truth}, f, indent=1)
    print("wrote %d studies to %s" % (len(truth), args.out))


if __name__ == "__main__":
    main()
