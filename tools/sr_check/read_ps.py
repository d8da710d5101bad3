#!/usr/bin/python3
"""Reference reader for firstread's presentation states (GSPS / CSPS): reads the
file with pydicom, independently of DCMTK which wrote it, and prints what a
viewer takes from it as JSON: the boxes and texts per referenced image, the
graphic layers, the VOI and presentation LUT, the referenced images.

Usage: /usr/bin/python3 tools/sr_check/read_ps.py FILE.dcm
"""
import json
import sys

import pydicom


def refs(seq):
    out = []
    for item in seq or []:
        frames = item.get("ReferencedFrameNumber")
        if frames is None:
            frames = []
        elif not isinstance(frames, (list, pydicom.multival.MultiValue)):
            frames = [frames]
        out.append({"sop_class_uid": item.ReferencedSOPClassUID, "sop_instance_uid": item.ReferencedSOPInstanceUID,
                    "frames": [int(f) for f in frames]})
    return out


def read_ps(path):
    ds = pydicom.dcmread(path)
    out = {
        "sop_class_uid": ds.SOPClassUID, "sop_instance_uid": ds.SOPInstanceUID, "modality": ds.Modality,
        "study_instance_uid": ds.StudyInstanceUID, "series_instance_uid": ds.SeriesInstanceUID,
        "series_number": str(ds.get("SeriesNumber", "")), "instance_number": int(ds.InstanceNumber),
        "patient_id": ds.get("PatientID", ""), "patient_name": str(ds.get("PatientName", "")),
        "content_label": ds.ContentLabel, "content_description": ds.get("ContentDescription", ""),
        "creation": ds.PresentationCreationDate + ds.PresentationCreationTime,
        "specific_character_set": ds.get("SpecificCharacterSet"),
        "layers": [{"name": l.GraphicLayer, "order": int(l.GraphicLayerOrder),
                    "description": l.get("GraphicLayerDescription", "")} for l in ds.get("GraphicLayerSequence", [])],
        "referenced_series": [{"series": s.SeriesInstanceUID, "images": refs(s.ReferencedImageSequence)}
                              for s in ds.get("ReferencedSeriesSequence", [])],
        "annotations": [], "voi": [], "presentation_lut_shape": ds.get("PresentationLUTShape"),
        "rescale": [str(ds.get("RescaleIntercept", "")), str(ds.get("RescaleSlope", "")), ds.get("RescaleType", "")],
        "icc_profile_bytes": len(ds.ICCProfile) if "ICCProfile" in ds else 0,
    }
    for item in ds.get("GraphicAnnotationSequence", []):
        entry = {"images": refs(item.ReferencedImageSequence), "layer": item.GraphicLayer, "texts": [], "graphics": []}
        for text in item.get("TextObjectSequence", []):
            entry["texts"].append({"text": text.UnformattedTextValue,
                                   "box": [float(v) for v in text.BoundingBoxTopLeftHandCorner] +
                                          [float(v) for v in text.BoundingBoxBottomRightHandCorner]})
        for graphic in item.get("GraphicObjectSequence", []):
            data = [float(v) for v in graphic.GraphicData]
            entry["graphics"].append({"type": graphic.GraphicType, "units": graphic.GraphicAnnotationUnits,
                                      "points": [[data[i], data[i + 1]] for i in range(0, len(data), 2)],
                                      "filled": graphic.get("GraphicFilled")})
        out["annotations"].append(entry)
    for item in ds.get("SoftcopyVOILUTSequence", []):
        out["voi"].append({"images": refs(item.ReferencedImageSequence),
                           "center": float(item.WindowCenter) if "WindowCenter" in item else None,
                           "width": float(item.WindowWidth) if "WindowWidth" in item else None,
                           "function": item.get("VOILUTFunction", "LINEAR"),
                           "voi_lut": "VOILUTSequence" in item})
    return out


def main():
    if len(sys.argv) != 2:
        print("usage: read_ps.py FILE.dcm", file=sys.stderr)
        return 2
    try:
        result = read_ps(sys.argv[1])
    except (AttributeError, KeyError, IndexError, ValueError) as error:
        print(f"read_ps: {sys.argv[1]}: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(json.dumps(result, ensure_ascii=False, indent=1).encode("utf-8") + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
