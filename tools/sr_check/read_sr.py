#!/usr/bin/python3
"""Reference reader for firstread's AI SR: walks the content tree with pydicom
(independently of DCMTK, which wrote it) and prints what a viewer would take
from it as JSON on stdout.

Usage: /usr/bin/python3 tools/sr_check/read_sr.py FILE.dcm

Run it with Debian's /usr/bin/python3 (python3-pydicom). Exits 1 with a message
on stderr when the file is not a TID 1500 measurement report, or when a
measurement group lacks what OHIF dereferences without checks (tracking
identifier and UID, an Image Region with exactly one IMAGE child).
"""
import json
import sys

import pydicom

IMAGING_MEASUREMENT_REPORT = ("126000", "DCM")
LANGUAGE = ("121049", "DCM")
OBSERVER_TYPE = ("121005", "DCM")
DEVICE_OBSERVER_UID = ("121012", "DCM")
DEVICE_OBSERVER_NAME = ("121013", "DCM")
DEVICE_OBSERVER_MANUFACTURER = ("121014", "DCM")
DEVICE_OBSERVER_MODEL_NAME = ("121015", "DCM")
PROCEDURE_REPORTED = ("121058", "DCM")
IMAGE_LIBRARY = ("111028", "DCM")
IMAGING_MEASUREMENTS = ("126010", "DCM")
MEASUREMENT_GROUP = ("125007", "DCM")
QUALITATIVE_EVALUATIONS = ("C0034375", "UMLS")
TRACKING_IDENTIFIER = ("112039", "DCM")
TRACKING_UID = ("112040", "DCM")
FINDING = ("121071", "DCM")
IMAGE_REGION = ("111030", "DCM")
CERTAINTY_OF_FINDING = ("111012", "DCM")
COMMENT = ("121106", "DCM")
ALGORITHM_NAME = ("111001", "DCM")
ALGORITHM_VERSION = ("111003", "DCM")
AREA = ("42798000", "SCT")
SPECIALIST_CONTAINER = ("GSCO-SPEC", "99FIRSTREAD")  # GSCo (issue 15): one specialist on one image


class SrError(Exception):
    pass


def concept(item):
    """(CodeValue, CodingSchemeDesignator) of an item's concept name, or None."""
    seq = item.get("ConceptNameCodeSequence")
    if not seq:
        return None
    return (seq[0].CodeValue, seq[0].CodingSchemeDesignator)


def code_dict(code_item):
    return {"code": code_item.CodeValue, "scheme": code_item.CodingSchemeDesignator,
            "meaning": code_item.CodeMeaning}


def children(item):
    return list(item.get("ContentSequence", []))


def image_reference(image_item):
    if len(image_item.get("ReferencedSOPSequence", [])) != 1:
        raise SrError("IMAGE item without exactly one Referenced SOP Sequence item")
    ref = image_item.ReferencedSOPSequence[0]
    frames = ref.get("ReferencedFrameNumber")
    if frames is None:
        frames = []
    elif not isinstance(frames, (list, pydicom.multival.MultiValue)):
        frames = [frames]
    return {"sop_class_uid": ref.ReferencedSOPClassUID, "sop_instance_uid": ref.ReferencedSOPInstanceUID,
            "frames": [int(f) for f in frames]}


def value_of(item):
    """The value of a TEXT / CODE / UIDREF / NUM content item as JSON."""
    vt = item.ValueType
    if vt == "TEXT":
        return {"text": item.TextValue}
    if vt == "CODE":
        return code_dict(item.ConceptCodeSequence[0])
    if vt == "UIDREF":
        return {"uid": item.UID}
    if vt == "NUM":
        measured = item.MeasuredValueSequence[0]
        return {"value": float(measured.NumericValue),
                "unit": code_dict(measured.MeasurementUnitsCodeSequence[0])}
    raise SrError(f"unexpected value type {vt}")


def read_region(item, where, out):
    """An Image Region SCOORD with exactly one SELECTED FROM IMAGE child."""
    data = [float(v) for v in item.GraphicData]
    out["graphic_type"] = item.GraphicType
    out["graphic_data"] = [[data[i], data[i + 1]] for i in range(0, len(data), 2)]
    images = [c for c in children(item) if c.ValueType == "IMAGE" and c.RelationshipType == "SELECTED FROM"]
    if len(images) != 1:
        raise SrError(f"{where}: Image Region has {len(images)} SELECTED FROM IMAGE children, needs 1")
    out["referenced_image"] = image_reference(images[0])


def read_group(group, index):
    """One measurement group. The region may sit in the group (TID 1410) or
    below a NUM it was measured on (TID 1501/300: NUM INFERRED FROM SCOORD)."""
    where = f"measurement group {index + 1}"
    out = {"template": None, "tracking_identifier": None, "tracking_uid": None, "finding": None,
           "graphic_type": None, "graphic_data": None, "referenced_image": None, "region_relationship": None,
           "area": None, "certainty": None, "algorithm": {}, "comments": [], "direct_scoords": 0}
    templates = group.get("ContentTemplateSequence")
    if templates:
        out["template"] = templates[0].TemplateIdentifier
    for child in children(group):
        name = concept(child)
        if child.ValueType == "SCOORD":
            out["direct_scoords"] += 1
        if name == TRACKING_IDENTIFIER:
            out["tracking_identifier"] = child.TextValue
        elif name == TRACKING_UID:
            out["tracking_uid"] = child.UID
        elif name == FINDING:
            out["finding"] = value_of(child)
        elif name == IMAGE_REGION and child.ValueType == "SCOORD":
            read_region(child, where, out)
            out["region_relationship"] = child.RelationshipType
        elif child.ValueType == "NUM":
            if name == CERTAINTY_OF_FINDING:
                out["certainty"] = value_of(child)
            elif name == AREA:
                out["area"] = value_of(child)
            for sub in children(child):
                sub_name = concept(sub)
                if sub.ValueType == "SCOORD" and sub.RelationshipType == "INFERRED FROM":
                    read_region(sub, where, out)
                    out["region_relationship"] = "INFERRED FROM"
                elif sub_name == ALGORITHM_NAME:
                    out["algorithm"]["name"] = sub.TextValue
                elif sub_name == ALGORITHM_VERSION:
                    out["algorithm"]["version"] = sub.TextValue
        elif name == COMMENT:
            out["comments"].append(child.TextValue)
    if not out["tracking_identifier"] or not out["tracking_uid"]:
        raise SrError(f"{where}: needs both Tracking Identifier and Tracking Unique Identifier")
    if out["graphic_data"] is None:
        raise SrError(f"{where}: has no Image Region")
    return out


def read_observer_item(child, name, observer):
    """A device observer item (TID 1004) into `observer`; False for any other item."""
    if name == OBSERVER_TYPE:
        observer["type"] = code_dict(child.ConceptCodeSequence[0])["meaning"]
    elif name == DEVICE_OBSERVER_UID:
        observer["uid"] = child.UID
    elif name == DEVICE_OBSERVER_NAME:
        observer["name"] = child.TextValue
    elif name == DEVICE_OBSERVER_MANUFACTURER:
        observer["manufacturer"] = child.TextValue
    elif name == DEVICE_OBSERVER_MODEL_NAME:
        observer["model_name"] = child.TextValue
    else:
        return False
    return True


def read_specialist_group(group):
    """A GSCo specialist's group (issue 15): its own device observer, TEXT
    evaluations (label -> "probability p[, positive]", the retrieved case
    count), and no region."""
    out = {"observer": {}, "tracking_identifier": None, "evaluations": {}, "image": None}
    for child in children(group):
        name = concept(child)
        if read_observer_item(child, name, out["observer"]):
            pass
        elif name == TRACKING_IDENTIFIER:
            out["tracking_identifier"] = child.TextValue
        elif child.ValueType == "IMAGE":
            out["image"] = child.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        elif child.ValueType == "TEXT" and child.RelationshipType == "CONTAINS":
            out["evaluations"][child.ConceptNameCodeSequence[0].CodeMeaning] = child.TextValue
        elif child.ValueType == "SCOORD":
            raise SrError("a specialist group holds a region")
    return out


def collect_images(item, found):
    for child in children(item):
        if child.ValueType == "IMAGE":
            found.append(image_reference(child))
        collect_images(child, found)


def read_sr(path):
    ds = pydicom.dcmread(path)
    if concept(ds) != IMAGING_MEASUREMENT_REPORT:
        raise SrError(f"root concept is {concept(ds)}, not TID 1500 Imaging Measurement Report")
    out = {
        "sop_class_uid": ds.SOPClassUID,
        "sop_instance_uid": ds.SOPInstanceUID,
        "specific_character_set": ds.get("SpecificCharacterSet"),
        "modality": ds.Modality,
        "patient_name": str(ds.get("PatientName", "")),
        "patient_id": ds.get("PatientID", ""),
        "study_instance_uid": ds.StudyInstanceUID,
        "series_instance_uid": ds.SeriesInstanceUID,
        "series_number": str(ds.get("SeriesNumber", "")),
        "series_description": ds.get("SeriesDescription", ""),
        "completion_flag": ds.CompletionFlag,
        "verification_flag": ds.VerificationFlag,
        "preliminary_flag": ds.get("PreliminaryFlag"),
        "content_date": ds.ContentDate,
        "content_time": ds.ContentTime,
        "template": ds.ContentTemplateSequence[0].TemplateIdentifier if "ContentTemplateSequence" in ds else None,
        "language": None,
        "device_observer": {},
        "procedures_reported": [],
        "image_library": [],
        "narrative": [],
        "groups": [],
        "specialist_groups": [],
        "evidence": [],
        "predecessors": [],
        "contributing_equipment": [],
        "coding_schemes": [{"designator": c.CodingSchemeDesignator, "name": c.get("CodingSchemeName"),
                            "responsible": c.get("CodingSchemeResponsibleOrganization")}
                           for c in ds.get("CodingSchemeIdentificationSequence", [])],
    }
    for child in children(ds):
        name = concept(child)
        if name == LANGUAGE:
            out["language"] = code_dict(child.ConceptCodeSequence[0])
        elif read_observer_item(child, name, out["device_observer"]):
            pass
        elif name == PROCEDURE_REPORTED:
            out["procedures_reported"].append(code_dict(child.ConceptCodeSequence[0]))
        elif name == IMAGE_LIBRARY:
            collect_images(child, out["image_library"])
        elif name == IMAGING_MEASUREMENTS:
            for group in children(child):
                if concept(group) == MEASUREMENT_GROUP:
                    out["groups"].append(read_group(group, len(out["groups"])))
        elif name == SPECIALIST_CONTAINER:
            out["specialist_groups"].append(read_specialist_group(child))
        elif name == QUALITATIVE_EVALUATIONS:
            for evaluation in children(child):
                if evaluation.ValueType not in ("TEXT", "CODE"):
                    raise SrError(f"Qualitative Evaluations holds a {evaluation.ValueType}, only CODE/TEXT allowed")
                entry = {"concept": code_dict(evaluation.ConceptNameCodeSequence[0])}
                entry.update(value_of(evaluation))
                out["narrative"].append(entry)
    for study in ds.get("CurrentRequestedProcedureEvidenceSequence", []):
        for series in study.ReferencedSeriesSequence:
            for instance in series.ReferencedSOPSequence:
                out["evidence"].append({"study": study.StudyInstanceUID, "series": series.SeriesInstanceUID,
                                        "sop_class_uid": instance.ReferencedSOPClassUID,
                                        "sop_instance_uid": instance.ReferencedSOPInstanceUID})
    for study in ds.get("PredecessorDocumentsSequence", []):
        for series in study.ReferencedSeriesSequence:
            for instance in series.ReferencedSOPSequence:
                out["predecessors"].append({"study": study.StudyInstanceUID, "series": series.SeriesInstanceUID,
                                            "sop_class_uid": instance.ReferencedSOPClassUID,
                                            "sop_instance_uid": instance.ReferencedSOPInstanceUID})
    for equipment in ds.get("ContributingEquipmentSequence", []):
        purpose = equipment.get("PurposeOfReferenceCodeSequence")
        out["contributing_equipment"].append({
            "purpose": code_dict(purpose[0]) if purpose else None,
            "manufacturer": equipment.get("Manufacturer"),
            "model_name": equipment.get("ManufacturerModelName"),
            "software_versions": str(equipment.get("SoftwareVersions", "")),
            "device_uid": equipment.get("DeviceUID"),
        })
    return out


def main():
    if len(sys.argv) != 2:
        print("usage: read_sr.py FILE.dcm", file=sys.stderr)
        return 2
    try:
        result = read_sr(sys.argv[1])
    except (SrError, AttributeError, KeyError, IndexError) as error:
        print(f"read_sr: {sys.argv[1]}: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(json.dumps(result, ensure_ascii=False, indent=1).encode("utf-8"))
    sys.stdout.buffer.write(b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
