"""Read what the scan needs from one file's header, or say in plain words why the file is
not usable. Never raises: any failure becomes a :class:`Rejected`.

Reasons (``Rejected.reason``) are fixed phrases; ``detail`` adds what a person needs to fix
the file. Neither copies any value from inside the file (no names, no descriptions, no IDs):
only the path, counts, sizes and names from pydicom's own UID dictionary.
"""

from __future__ import annotations

import os
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from .geometry import valid_orientation
from .sequence import SequenceTags

# Reasons, as a person reads them.
NOT_FOUND = "not found"
EMPTY = "empty file"
NOT_DICOM = "not DICOM"
CORRUPT_HEADER = "unreadable DICOM header"
NOT_IMAGE = "not an image"
NOT_MR = "not MR"
NO_PIXELS = "no pixel data"
TRUNCATED = "truncated pixel data"
UNSUPPORTED_SYNTAX = "unsupported transfer syntax"
UNSUPPORTED_IMAGE = "unsupported image type"
MISSING_GEOMETRY = "missing geometry"
INCONSISTENT_GEOMETRY = "inconsistent geometry"
DUPLICATE = "duplicate instance"

MR_STORAGE = {"1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.4.1",
              "1.2.840.10008.5.1.4.1.1.4.4"}
DICOMDIR = "1.2.840.10008.1.3.10"


@dataclass(frozen=True)
class Rejected:
    """A file the reader cannot use, with the reason in plain words."""

    path: Path
    reason: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" + (f" ({self.detail})" if self.detail else "")

    def to_dict(self) -> dict:
        return {"path": str(self.path), "reason": self.reason, "detail": self.detail}


@dataclass(frozen=True)
class Frame:
    """Geometry and modality LUT of one 2-D image (a single-frame file or one frame)."""

    index: int | None                       # frame index in a multi-frame file, else None
    position: tuple[float, float, float]    # ImagePositionPatient
    orientation: tuple[float, ...]          # ImageOrientationPatient (6)
    pixel_spacing: tuple[float, float]      # (row spacing, column spacing)
    slope: float = 1.0
    intercept: float = 0.0


@dataclass
class FileHeader:
    path: Path
    study_uid: str
    series_uid: str
    sop_uid: str
    patient_id: str
    transfer_syntax: str
    rows: int
    cols: int
    frames: list[Frame]
    multiframe: bool
    sequence_tags: SequenceTags
    description: str = ""
    manufacturer: str = ""
    field_strength: float | None = None
    patient_position: str = ""
    spacing_between_slices: float | None = None
    slice_thickness: float | None = None
    frame_of_reference: str = ""
    extra: dict = field(default_factory=dict)


def _float(v) -> float | None:
    try:
        if v is None or v == "":
            return None
        if isinstance(v, (list, tuple)) or hasattr(v, "__iter__") and not isinstance(v, str):
            v = list(v)[0]
        return float(v)
    except (TypeError, ValueError, IndexError):
        return None


def _floats(v, n: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(x) for x in v)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


def _str(v) -> str:
    if v is None:
        return ""
    if not isinstance(v, str) and hasattr(v, "__iter__"):
        return "\\".join(str(x) for x in v)
    return str(v)


def _item(ds, seq: str):
    s = ds.get(seq)
    return s[0] if s else None


def _group(ds, frame_item, name: str):
    """A functional-group macro item for one frame: per-frame first, then shared."""
    if frame_item is not None:
        it = _item(frame_item, name)
        if it is not None:
            return it
    shared = _item(ds, "SharedFunctionalGroupsSequence")
    return _item(shared, name) if shared is not None else None


def _pixel_element_check(fh, ds, size: int, frames: int) -> tuple[str, str] | None:
    """Look at the pixel data element where ``dcmread(stop_before_pixels=True)`` stopped:
    missing, or declared/encapsulated size beyond the end of the file. Reads a few bytes per
    fragment, never the pixel values. Returns (reason, detail) or None when it looks whole."""
    ts = UID(ds.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2"))
    pos = fh.tell()
    head = fh.read(12)
    if len(head) < 8:
        return NO_PIXELS, "the file has no Pixel Data element"
    little = ts.is_little_endian if ts.is_transfer_syntax else True
    implicit = ts.is_implicit_VR if ts.is_transfer_syntax else False
    e = "<" if little else ">"
    group, elem = struct.unpack(e + "HH", head[:4])
    if (group, elem) in ((0x7FE0, 0x0008), (0x7FE0, 0x0009)):
        return UNSUPPORTED_IMAGE, "floating-point pixel data"
    if (group, elem) != (0x7FE0, 0x0010):
        return NO_PIXELS, "the file has no Pixel Data element"
    if implicit:
        (length,) = struct.unpack(e + "L", head[4:8])
        start = pos + 8
    else:
        vr = head[4:6]
        if vr in (b"OB", b"OW", b"UN", b"OD", b"OF", b"OL", b"OV", b"UT"):
            if len(head) < 12:
                return TRUNCATED, "the file ends inside the Pixel Data element"
            (length,) = struct.unpack(e + "L", head[8:12])
            start = pos + 12
        else:
            (length,) = struct.unpack(e + "H", head[6:8])
            start = pos + 8
    if length != 0xFFFFFFFF:                       # native: the declared size must be there
        bits = int(ds.get("BitsAllocated", 16) or 16)
        spp = int(ds.get("SamplesPerPixel", 1) or 1)
        n = int(ds.Rows) * int(ds.Columns) * frames * spp
        expected = (n + 7) // 8 if bits == 1 else n * bits // 8
        have = min(length, size - start)
        if have < expected:
            return TRUNCATED, f"{have} of {expected} bytes of pixel data present"
        return None
    # Encapsulated: walk the items (basic offset table + fragments) to the delimiter.
    off, fragments, data = start, 0, 0
    while True:
        fh.seek(off)
        item = fh.read(8)
        if len(item) < 8:
            return TRUNCATED, ("the file ends before the end of the compressed pixel data "
                               f"({fragments} fragments read)")
        g, el, ln = struct.unpack("<HHL", item)
        if (g, el) == (0xFFFE, 0xE0DD):
            break
        if (g, el) != (0xFFFE, 0xE000) or ln == 0xFFFFFFFF:
            return TRUNCATED, "the compressed pixel data is corrupt (bad item tag)"
        if off + 8 + ln > size:
            return TRUNCATED, (f"a compressed fragment declares {ln} bytes but only "
                               f"{max(0, size - off - 8)} remain in the file")
        if fragments > 0:
            data += ln
        fragments += 1
        off += 8 + ln
    if data == 0:
        return TRUNCATED, "the compressed pixel data has no fragments"
    return None


def _decoder_problem(ts: str) -> str | None:
    from pydicom.pixels.decoders.base import get_decoder

    uid = UID(ts)
    name = uid.name if uid.is_transfer_syntax else "an unknown transfer syntax UID"
    try:
        dec = get_decoder(uid)
    except NotImplementedError:
        return f"pydicom has no decoder for {name}"
    if not dec.is_available:
        return f"no installed plugin decodes {name} (install one of pydicom's pixel plugins)"
    return None


def _frames(ds) -> tuple[list[Frame], bool] | None:
    nframes = int(_float(ds.get("NumberOfFrames")) or 1)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    enhanced = per_frame is not None or ds.get("SharedFunctionalGroupsSequence") is not None
    if not enhanced:
        iop = _floats(ds.get("ImageOrientationPatient") or (), 6)
        ipp = _floats(ds.get("ImagePositionPatient") or (), 3)
        ps = _floats(ds.get("PixelSpacing") or (), 2)
        if iop is None or ipp is None or ps is None or not valid_orientation(iop) or nframes > 1:
            return None
        slope = _float(ds.get("RescaleSlope"))
        inter = _float(ds.get("RescaleIntercept"))
        return [Frame(None, ipp, iop, ps, 1.0 if slope is None else slope,
                      0.0 if inter is None else inter)], False
    out = []
    for i in range(nframes):
        item = per_frame[i] if per_frame is not None and i < len(per_frame) else None
        pos, ori, pm = (_group(ds, item, n) for n in (
            "PlanePositionSequence", "PlaneOrientationSequence", "PixelMeasuresSequence"))
        if pos is None or ori is None or pm is None:
            return None
        iop = _floats(ori.get("ImageOrientationPatient") or (), 6)
        ipp = _floats(pos.get("ImagePositionPatient") or (), 3)
        ps = _floats(pm.get("PixelSpacing") or (), 2)
        if iop is None or ipp is None or ps is None or not valid_orientation(iop):
            return None
        pvt = _group(ds, item, "PixelValueTransformationSequence")
        slope = _float(pvt.get("RescaleSlope")) if pvt is not None else None
        inter = _float(pvt.get("RescaleIntercept")) if pvt is not None else None
        out.append(Frame(i, ipp, iop, ps, 1.0 if slope is None else slope,
                         0.0 if inter is None else inter))
    return out, True


def _sequence_tags(ds) -> SequenceTags:
    tr, te, ti, ir = (_float(ds.get("RepetitionTime")), _float(ds.get("EchoTime")),
                      _float(ds.get("InversionTime")), None)
    shared = _item(ds, "SharedFunctionalGroupsSequence")
    first = _item(ds, "PerFrameFunctionalGroupsSequence")
    if shared is not None or first is not None:
        timing = _group(ds, first, "MRTimingAndRelatedParametersSequence")
        echo = _group(ds, first, "MREchoSequence")
        mod = _group(ds, first, "MRModifierSequence")
        if timing is not None and tr is None:
            tr = _float(timing.get("RepetitionTime"))
        if echo is not None and te is None:
            te = _float(echo.get("EffectiveEchoTime"))
        if mod is not None:
            ir = _str(mod.get("InversionRecovery")).upper() == "YES"
            if ti is None:
                ti = _float(mod.get("InversionTimes"))
    scanning = ds.get("ScanningSequence")
    scanning = tuple(str(x).upper() for x in ([scanning] if isinstance(scanning, str)
                                               else (scanning or ())))
    return SequenceTags(
        scanning_sequence=scanning, repetition_time=tr, echo_time=te, inversion_time=ti,
        inversion_recovery=ir, field_strength=_float(ds.get("MagneticFieldStrength")),
        echo_pulse_sequence=_str(ds.get("EchoPulseSequence")),
        acquisition_contrast=_str(ds.get("AcquisitionContrast")),
        texts=(_str(ds.get("SeriesDescription")), _str(ds.get("ProtocolName")),
               _str(ds.get("SequenceName")), _str(ds.get("PulseSequenceName"))))


def _open(path: Path, fh):
    try:
        return pydicom.dcmread(fh, stop_before_pixels=True)
    except InvalidDicomError:
        # No 'DICM' preamble: accept a raw dataset only when it starts like one
        # (group 0002 or 0008, little endian), as many old archives store them.
        fh.seek(0)
        start = fh.read(4)
        if start[:2] not in (b"\x02\x00", b"\x08\x00"):
            raise
        fh.seek(0)
        ds = pydicom.dcmread(fh, stop_before_pixels=True, force=True)
        if "SOPClassUID" not in ds and "Modality" not in ds:
            raise InvalidDicomError("no DICOM elements")
        return ds


def read_header(path: str | os.PathLike) -> FileHeader | Rejected:
    """The header of one file, or why it cannot be used. Never raises."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _read_header(path)
    except Exception as exc:  # noqa: BLE001 - a bad file must never stop the walk
        return Rejected(path, CORRUPT_HEADER, f"{type(exc).__name__} while reading")


def _read_header(path: Path) -> FileHeader | Rejected:
    try:
        size = path.stat().st_size
    except OSError:
        return Rejected(path, NOT_FOUND, "cannot stat the file")
    if size == 0:
        return Rejected(path, EMPTY, "0 bytes")
    with open(path, "rb") as fh:
        try:
            ds = _open(path, fh)
        except InvalidDicomError:
            return Rejected(path, NOT_DICOM, "no DICOM preamble or data elements")
        except Exception as exc:  # noqa: BLE001
            fh.seek(128)
            if fh.read(4) == b"DICM":
                return Rejected(path, CORRUPT_HEADER,
                                f"the header is truncated or corrupt ({type(exc).__name__})")
            return Rejected(path, NOT_DICOM, "not a DICOM file")
        sop_class = _str(ds.get("SOPClassUID") or
                         (ds.file_meta.get("MediaStorageSOPClassUID") if ds.file_meta else ""))
        if sop_class == DICOMDIR or "DirectoryRecordSequence" in ds:
            return Rejected(path, NOT_IMAGE, "a DICOMDIR index")
        frames_hdr = int(_float(ds.get("NumberOfFrames")) or 1)
        deflated = ds.file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian
        problem = None
        if "Rows" not in ds or "Columns" not in ds:
            problem = (NO_PIXELS, "no Rows/Columns: not an image")
        elif not deflated:   # deflated files are inflated in memory: checked on load
            problem = _pixel_element_check(fh, ds, size, frames_hdr)
        if problem is not None and problem[0] != TRUNCATED:
            return Rejected(path, *problem)
        modality = _str(ds.get("Modality")).upper()
        if modality != "MR":
            what = f"Modality {modality}" if modality.isalpha() and len(modality) <= 6 else \
                "no Modality"
            return Rejected(path, NOT_MR, what)
        ts = str(ds.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2"))
        why = _decoder_problem(ts)
        if why:
            return Rejected(path, UNSUPPORTED_SYNTAX, why)
        if problem is not None:
            return Rejected(path, *problem)
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        return Rejected(path, UNSUPPORTED_IMAGE, "colour image (SamplesPerPixel != 1)")
    fr = _frames(ds)
    if fr is None:
        return Rejected(path, MISSING_GEOMETRY,
                        "no usable ImagePositionPatient / ImageOrientationPatient / PixelSpacing")
    frames, enhanced = fr
    study, series, sop = (_str(ds.get(k)) for k in
                          ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"))
    if not (study and series and sop):
        return Rejected(path, MISSING_GEOMETRY, "no Study/Series/SOP Instance UID")
    pm = _group(ds, _item(ds, "PerFrameFunctionalGroupsSequence"), "PixelMeasuresSequence") \
        if enhanced else None
    sbs = _float(ds.get("SpacingBetweenSlices"))
    thick = _float(ds.get("SliceThickness"))
    if pm is not None:
        sbs = sbs if sbs is not None else _float(pm.get("SpacingBetweenSlices"))
        thick = thick if thick is not None else _float(pm.get("SliceThickness"))
    return FileHeader(
        path=path, study_uid=study, series_uid=series, sop_uid=sop,
        patient_id=_str(ds.get("PatientID")), transfer_syntax=ts,
        rows=int(ds.Rows), cols=int(ds.Columns), frames=frames, multiframe=enhanced or
        len(frames) > 1, sequence_tags=_sequence_tags(ds),
        description=_str(ds.get("SeriesDescription")),
        manufacturer=_str(ds.get("Manufacturer")),
        field_strength=_float(ds.get("MagneticFieldStrength")),
        patient_position=_str(ds.get("PatientPosition")).upper(),
        spacing_between_slices=sbs, slice_thickness=thick,
        frame_of_reference=_str(ds.get("FrameOfReferenceUID")))
