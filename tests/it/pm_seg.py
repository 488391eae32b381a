"""Reads the node's Parametric Map, Structured Report and (optional) Segmentation with highdicom
and pydicom, as a third-party consumer would, and prints what the Rust test checks as JSON:
where the map peaks and where the segment's centroid lies, in patient coordinates (LPS mm)
computed by highdicom from the files' own geometry, the SR's SCOORD3D hotspot and whether the
segment holds it.

Usage: pm_seg.py PM.dcm SR.dcm [SEG.dcm]
"""

import json
import sys

import highdicom as hd
import numpy as np
import pydicom


def walk(items):
    for item in items:
        yield item
        yield from walk(item.get("ContentSequence", []))


def concept(item):
    names = item.get("ConceptNameCodeSequence", [])
    return names[0].CodeMeaning if names else None


def read_pm(path):
    pm = hd.pm.ParametricMap.from_dataset(pydicom.dcmread(path))
    mapping = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    volume = pm.get_volume(apply_real_world_transform=True)
    values = volume.array
    if not np.all(np.isfinite(values)):
        raise SystemExit(f"{path}: non-finite values in the parametric map")
    peak = np.unravel_index(np.argmax(values), values.shape)
    lps = volume.map_indices_to_reference(np.array([peak]))[0]
    return {
        "frames": int(pm.NumberOfFrames),
        "shape": list(values.shape),
        "max_value": float(values.max()),
        "min_value": float(values.min()),
        "max_lps": [float(v) for v in lps],
        "lut_label": str(mapping.LUTLabel),
        "lut_explanation": str(mapping.LUTExplanation),
        "units": str(mapping.MeasurementUnitsCodeSequence[0].CodeValue),
        "frame_of_reference": str(pm.FrameOfReferenceUID),
        "study": str(pm.StudyInstanceUID),
    }


def read_seg(path, point):
    seg = hd.seg.segread(path)
    description = seg.get_segment_description(1)
    volume = seg.get_volume(segment_numbers=[1], combine_segments=True)
    mask = volume.array > 0
    indices = np.argwhere(mask)
    if len(indices) == 0:
        raise SystemExit(f"{path}: empty segment")
    lps = volume.map_indices_to_reference(indices)
    contains = False
    if point is not None:
        at = volume.map_reference_to_indices(np.array([point]), round_output=True)[0]
        inside = all(0 <= a < n for a, n in zip(at, mask.shape))
        contains = bool(inside and mask[tuple(at)])
    return {
        "contains_sr_point": contains,
        "frames": int(seg.NumberOfFrames),
        "voxels": int(len(indices)),
        "centroid_lps": [float(v) for v in lps.mean(axis=0)],
        "category": str(description.segmented_property_category.value),
        "type": str(description.segmented_property_type.value),
        "algorithm_type": str(description.algorithm_type.value),
        "algorithm_name": str(description.algorithm_identification[0].AlgorithmName),
        "label": str(description.segment_label),
        "frame_of_reference": str(seg.FrameOfReferenceUID),
        "study": str(seg.StudyInstanceUID),
        "sop_instance_uid": str(seg.SOPInstanceUID),
    }


def read_sr(path):
    sr = pydicom.dcmread(path)
    items = list(walk(sr.ContentSequence))
    points = [list(map(float, i.GraphicData)) for i in items if i.ValueType == "SCOORD3D"]
    referenced = {}
    for i in items:
        if i.ValueType == "IMAGE" and concept(i):
            referenced[concept(i)] = str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
    evidence = [
        str(sop.ReferencedSOPInstanceUID)
        for study in sr.get("PertinentOtherEvidenceSequence", [])
        for series in study.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    ]
    return {"point": points[0] if points else None, "images": referenced, "evidence": evidence}


def main():
    pm_path, sr_path = sys.argv[1], sys.argv[2]
    seg_path = sys.argv[3] if len(sys.argv) > 3 else None
    sr = read_sr(sr_path)
    out = {
        "pm": read_pm(pm_path),
        "pm_sop_instance_uid": str(pydicom.dcmread(pm_path, stop_before_pixels=True).SOPInstanceUID),
        "sr": sr,
        "seg": read_seg(seg_path, sr["point"]) if seg_path else None,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
