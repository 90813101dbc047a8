"""Findings as DICOM a PACS and its viewers understand: a SEG of the delineations and an SR measurement report.

* **SEG** (binary): one segment per node (property type SCT 59441001 "Lymph node"), on the source series' grid,
  its tracking identifier the node's id and a tracking UID; the shared pixel measures carry the spacing between
  slices (readers take the slice thickness otherwise, and lose slices where slices overlap).
* **SR**, Comprehensive 3D SR with a TID 1500 measurement report: one volumetric measurement group per node with
  the same tracking identifier and UID as its segment, finding type lymph node, short and long axis (SCT 103340004,
  103339001; mm), the probability (DCM 111047 "Probability of cancer": the metastasis probability), the reader's
  class (reviewed) or the model's suspicion, the two rule categories, the referenced segment and the source series.
  A report that supersedes another names it among its predecessor documents.

Codes without a standard equivalent (the rules, the model's suspicion, the reviewed class's concept name) are in
the private scheme ``99LNNODE``; docs/reference.md lists them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from lnnode.geometry import ImageGeometry

from .findings import Finding
from .series import person_name, slice_index

__all__ = ["Report", "make_report", "LNNODE_SCHEME", "CODES"]

LNNODE_SCHEME = "99LNNODE"
_MANUFACTURER = "lnnode"
_UNITLESS = hd.sr.CodedConcept("1", "UCUM", "no units")
_ANATOMY = hd.sr.CodedConcept("91723000", "SCT", "Anatomical Structure")


def _local(value: str, meaning: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value, LNNODE_SCHEME, meaning)


CODES = {
    "class": _local("reviewed_class", "Node class (reviewed)"),
    "suspicion": _local("model_suspicion", "Model suspicion of metastasis"),
    "size_10mm": _local("size_10mm", "Size rule (short axis >= 10 mm)"),
    "morphology": _local("morphology", "Morphology rule"),
    "metastatic": hd.sr.CodedConcept("128462008", "SCT", "Metastasis"),
    "benign": hd.sr.CodedConcept("30807003", "SCT", "Benign"),
    "suspicious": _local("suspicious", "Suspicious"),
    "not_suspicious": _local("not_suspicious", "Not suspicious"),
    "indeterminate": _local("indeterminate", "Indeterminate"),
}


_RULES = ("size_10mm", "morphology")


@dataclass
class Report:
    """The SEG and SR datasets and the tracking UID of each finding (by its id)."""

    seg: hd.seg.Segmentation | None  # None: no nodes
    sr: hd.sr.Comprehensive3DSR
    tracking_uids: dict[str, str]


def _algorithm(version: str) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(name="lnnode", family=codes.DCM.ArtificialIntelligence, version=version)


def _ordered_sources(sources: Sequence[Dataset], geometry: ImageGeometry) -> list[tuple[int, Dataset]]:
    return sorted(((slice_index(ds, geometry), ds) for ds in sources), key=lambda kd: kd[0])


def _set_spacing_between_slices(seg: hd.seg.Segmentation, geometry: ImageGeometry) -> None:
    """Readers take the slice thickness as the step between frames unless told: where slices overlap or have
    gaps that loses or invents slices. Set after construction: highdicom references each frame's source image
    only while the pixel measures equal the source's, which rarely carry this attribute."""
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    measures.SpacingBetweenSlices = f"{geometry.spacing[2]:.6g}"


def make_seg(
    sources: Sequence[Dataset],
    geometry: ImageGeometry,
    findings: Sequence[Finding],
    tracking_uids: Sequence[str],
    reviewed: bool,
    version: str,
    series_number: int,
    description: str,
    creator: str | None = None,
) -> hd.seg.Segmentation:
    """The SEG of ``findings`` on the source series (single-frame images on ``geometry``'s grid)."""
    # the frames of the slices a node is on, and only those: a whole series would be one (k, rows, cols, segments)
    # array of mostly zeros that highdicom checks voxel by voxel (seconds at 512 x 512 x 160)
    slices = [np.nonzero(f.mask.any(axis=(0, 1)))[0] for f in findings]
    wanted = set(np.concatenate(slices).tolist())
    ordered = [(k, ds) for k, ds in _ordered_sources(sources, geometry) if k in wanted]
    frame_of = {k: i for i, (k, _) in enumerate(ordered)}
    pixels = np.zeros((len(ordered), geometry.shape[1], geometry.shape[0], len(findings)), np.uint8)
    for segment, (f, ks) in enumerate(zip(findings, slices, strict=True)):
        for k in ks:
            pixels[frame_of[int(k)], :, :, segment] = f.mask[:, :, k].T  # a frame is (row j, column i)
    algorithm = hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC if reviewed else "AUTOMATIC"
    segments = [
        hd.seg.SegmentDescription(
            segment_number=n,
            segment_label=f"lymph node {f.id}",
            segmented_property_category=_ANATOMY,
            segmented_property_type=codes.SCT.LymphNode,
            algorithm_type=algorithm,
            algorithm_identification=_algorithm(version),
            tracking_uid=uid,
            tracking_id=f.id,
        )
        for n, (f, uid) in enumerate(zip(findings, tracking_uids, strict=True), start=1)
    ]
    seg = hd.seg.Segmentation(
        source_images=[ds for _, ds in ordered],
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=_MANUFACTURER,
        manufacturer_model_name="lnnode",
        software_versions=version,
        device_serial_number="0",
        series_description=description,
        content_label="LYMPHNODES",
        content_creator_name=person_name(creator) if creator else None,
        content_description=description[:64],
    )
    _set_spacing_between_slices(seg, geometry)
    return seg


def _group(f: Finding, number: int, uid: str, seg: Dataset, series_uid: str):
    measurements = [
        hd.sr.Measurement(name=name, value=value, unit=codes.UCUM.Millimeter)
        for name, value in ((codes.SCT.ShortAxis, f.short_axis_mm), (codes.SCT.LongAxis, f.long_axis_mm))
        if value is not None
    ]
    if f.p_metastasis is not None:
        measurements.append(hd.sr.Measurement(codes.DCM.ProbabilityOfCancer, round(f.p_metastasis, 4), _UNITLESS))
    evaluations = [
        hd.sr.QualitativeEvaluation(CODES[rule], CODES[value])
        for rule, value in sorted(f.rules.items())
        if rule in _RULES and value in CODES  # the rules lnnode reports; a result may carry others
    ]
    if f.node_class is not None:
        evaluations.insert(0, hd.sr.QualitativeEvaluation(CODES["class"], CODES[f.node_class]))
    elif f.suspicious is not None:
        value = "suspicious" if f.suspicious else "not_suspicious"
        evaluations.insert(0, hd.sr.QualitativeEvaluation(CODES["suspicion"], CODES[value]))
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uid, identifier=f.id),
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID,
            sop_instance_uid=seg.SOPInstanceUID,
            segment_number=number,
            source_series=hd.sr.SourceSeriesForSegmentation(series_uid),
        ),
        finding_type=codes.SCT.LymphNode,
        measurements=measurements,
        qualitative_evaluations=evaluations,
    )


def _observation_context(reviewer: str | None, version: str) -> hd.sr.ObservationContext:
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=["lnnode", version]),  # the same device in every report of a version
            name="lnnode",
            manufacturer_name=_MANUFACTURER,
            model_name=version,
        ),
    )
    person = None
    if reviewer:
        person = hd.sr.ObserverContext(
            observer_type=codes.DCM.Person,
            observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(name=person_name(reviewer)),
        )
    return hd.sr.ObservationContext(observer_person_context=person, observer_device_context=device)


def make_report(
    sources: Sequence[Dataset],
    geometry: ImageGeometry,
    findings: Sequence[Finding],
    reviewed: bool,
    reviewer: str | None = None,
    version: str = "lnnode",
    previous: Sequence[Dataset] = (),
    series_number: int = 900,
) -> Report:
    """SEG + SR of ``findings`` on the source series ``sources`` (its single-frame images, read on ``geometry``).

    ``reviewed``: the findings are a reader's label (else the model's result); ``previous``: the SR documents
    this one supersedes; ``series_number``: of the SEG (the SR's is one more). A case without findings gets an
    SR that says so and no SEG segment: ``seg`` is None then."""
    if not sources:
        raise ValueError("a SEG and an SR reference the source images: none were given")
    uids = [str(hd.UID()) for _ in findings]
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M")
    kind = "reviewed" if reviewed else "model result"
    seg = None
    if findings:
        seg = make_seg(sources, geometry, findings, uids, reviewed, version, series_number, f"lnnode nodes, {kind}",
                       creator=reviewer)  # fmt: skip
    series_uid = sources[0].SeriesInstanceUID
    numbered = enumerate(zip(findings, uids, strict=True), start=1)
    groups = [_group(f, n, uid, seg, series_uid) for n, (f, uid) in numbered]
    modality = str(sources[0].get("Modality", "CT")).upper()
    procedure = codes.LN.MRIUnspecifiedBodyRegion if modality == "MR" else codes.LN.CTUnspecifiedBodyRegion
    content = hd.sr.MeasurementReport(
        observation_context=_observation_context(reviewer, version),
        procedure_reported=procedure,
        imaging_measurements=groups,  # empty: an Imaging Measurements container that says "no nodes"
        title=codes.DCM.ImagingMeasurementReport,
        referenced_images=None if groups else [sources[0]],
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[*sources, *([seg] if seg is not None else [])],
        content=content[0],
        series_instance_uid=hd.UID(),
        series_number=series_number + 1,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=_MANUFACTURER,
        is_complete=True,
        is_final=reviewed,
        series_description=f"lnnode node report, {kind} {stamp}",
        previous_versions=list(previous) or None,
    )
    return Report(seg, sr, {f.id: uid for f, uid in zip(findings, uids, strict=True)})
