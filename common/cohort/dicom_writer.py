"""Write a rendered series as DICOM Part-10 MR Image Storage files, one per sagittal slice.

UIDs are derived deterministically from the cohort seed and the patient (pydicom's
``generate_uid`` with entropy sources), so the same cohort always carries the same UIDs.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from pydicom import config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.dataelem import DataElement
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.pixels import get_encoder
from pydicom.tag import Tag
from pydicom.uid import MRImageStorage, RLELossless, UID

from .grid import Grid
from .scanners import ScannerProfile, SequenceProtocol

_NAMESPACE = uuid.UUID("5f1c0d2e-6a57-4a0e-9a43-5b1e2f3c4d5e")  # SpineMet-FL synthetic cohort
_SCANNING = {"T1": ["SE"], "T2": ["SE"], "STIR": ["IR", "SE"]}
_VARIANT = {"T1": ["SK", "SP", "OSP"], "T2": ["SK", "SP", "OSP"], "STIR": ["SK", "SP", "MP"]}


@dataclass(frozen=True)
class StudyInfo:
    """What every series of one study shares."""

    patient_id: str
    patient_name: str
    birth_date: str
    sex: str
    age_years: int
    weight_kg: float
    study_uid: str
    study_date: str
    study_time: str
    accession: str
    frame_of_reference_uid: str
    station: str


def derived_uid(*parts: object) -> UID:
    """A deterministic UID in the 2.25 (UUID) arc: a name-based UUID (RFC 4122 version 5)
    of the given parts, so the same cohort always carries the same UIDs."""
    name = "|".join(str(p) for p in parts)
    return UID(f"2.25.{uuid.uuid5(_NAMESPACE, name).int}")


def _ds(value: float) -> str:
    """A decimal string as precise as DS allows (16 characters)."""
    return f"{value:.12f}".rstrip("0").rstrip(".")[:16]


def _protocol_dataset(profile: ScannerProfile, protocol: SequenceProtocol) -> Dataset:
    """The elements every series of this site and sequence shares."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NORM", "DIS2D"]
    ds.SOPClassUID = MRImageStorage
    ds.Modality = "MR"
    ds.Manufacturer = profile.manufacturer
    ds.InstitutionName = profile.institution
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "MRI SPINE THORACOLUMBAR"
    ds.SeriesDescription = protocol.description
    ds.ManufacturerModelName = profile.model
    ds.BodyPartExamined = "LSPINE"
    ds.ScanningSequence = _SCANNING[protocol.sequence]
    ds.SequenceVariant = _VARIANT[protocol.sequence]
    ds.MRAcquisitionType = "2D"
    ds.SequenceName = {"T1": "*tse2d1_3", "T2": "*tse2d1_17", "STIR": "*tir2d1_13"}[protocol.sequence]
    ds.SliceThickness = f"{profile.slice_thickness:.1f}"
    ds.RepetitionTime = f"{protocol.repetition_time:g}"
    ds.EchoTime = f"{protocol.echo_time:g}"
    if protocol.inversion_time is not None:
        ds.InversionTime = f"{protocol.inversion_time:g}"
    ds.NumberOfAverages = "2"
    ds.ImagingFrequency = f"{42.577478 * profile.field_strength:.6f}"
    ds.ImagedNucleus = "1H"
    ds.MagneticFieldStrength = f"{profile.field_strength:g}"
    ds.SpacingBetweenSlices = f"{profile.slice_spacing:.2f}"
    ds.EchoTrainLength = str(protocol.echo_train_length)
    ds.ProtocolName = protocol.description
    ds.FlipAngle = f"{protocol.flip_angle:g}"
    ds.InPlanePhaseEncodingDirection = profile.phase_direction
    ds.PatientPosition = "HFS"
    ds.AcquisitionNumber = 1
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = profile.bits_stored
    ds.HighBit = profile.bits_stored - 1
    ds.PixelRepresentation = 0
    if profile.rescale_slope != 1.0:
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = f"{profile.rescale_slope:g}"
        ds.RescaleType = "US"
    return ds


def _series_dataset(study: StudyInfo, grid: Grid, series_number: int, series_uid: str,
                    window: tuple[float, float]) -> Dataset:
    """The elements of one series that depend on the patient, the study or the images."""
    ds = Dataset()
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = study.study_date
    t0 = dt.datetime.strptime(study.study_time, "%H%M%S") + dt.timedelta(minutes=4 * series_number)
    ds.StudyTime = study.study_time
    ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = t0.strftime("%H%M%S")
    ds.AccessionNumber = study.accession
    ds.StationName = study.station
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = study.birth_date
    ds.PatientSex = study.sex
    ds.PatientAge = f"{study.age_years:03d}Y"
    ds.PatientWeight = f"{study.weight_kg:.1f}"
    ds.StudyInstanceUID = study.study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = study.accession[-6:]
    ds.SeriesNumber = series_number
    ds.ImageOrientationPatient = [f"{c:g}" for c in grid.image_orientation]
    ds.FrameOfReferenceUID = study.frame_of_reference_uid
    ds.Rows, ds.Columns = grid.shape[1], grid.shape[2]
    ds.PixelSpacing = [_ds(grid.spacing[1]), _ds(grid.spacing[2])]
    ds.WindowCenter = f"{window[0]:.0f}"
    ds.WindowWidth = f"{window[1]:.0f}"
    return ds


# Elements that differ between the slices of a series; everything else is encoded once.
_PER_SLICE = (Tag(0x0008, 0x0018), Tag(0x0020, 0x0013), Tag(0x0020, 0x0032),
              Tag(0x0020, 0x1041), Tag(0x7FE0, 0x0010))


def _little_explicit() -> DicomBytesIO:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    return fp


def _element(elem: DataElement) -> bytes:
    """One element encoded by pydicom's writer (explicit VR little endian)."""
    fp = _little_explicit()
    write_data_element(fp, elem)
    return fp.getvalue()


def _encoded_elements(ds: Dataset) -> dict[int, bytes]:
    """Each element of ``ds`` encoded by pydicom, by tag."""
    return {elem.tag: _element(elem) for elem in ds.values()}


@lru_cache(maxsize=None)
def _protocol_elements(profile: ScannerProfile, protocol: SequenceProtocol) -> dict[int, bytes]:
    """The shared elements of a site's sequence, encoded once per process."""
    return _encoded_elements(_protocol_dataset(profile, protocol))


def _segments(elements: dict[int, bytes]) -> list[bytes]:
    """The encoded elements joined in tag order in the runs between the per-slice tags."""
    bounds = _PER_SLICE + (Tag(0xFFFF, 0xFFFF),)
    runs, tags = [], iter(sorted(elements))
    tag = next(tags, None)
    for hi in bounds:
        run = []
        while tag is not None and tag < hi:
            run.append(elements[tag])
            tag = next(tags, None)
        runs.append(b"".join(run))
    return runs


class _FileMeta:
    """The Part-10 file meta group of a series' files, encoded once by pydicom.

    Only the SOP Instance UID (and so the group length) differs between the files of a
    series: pydicom's ``write_file_meta_info`` encodes the group for the first file (adding
    its implementation UID and version), and the other files reuse its encoded elements.
    """

    def __init__(self, transfer_syntax: UID, first_sop_uid: str):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = first_sop_uid
        meta.TransferSyntaxUID = transfer_syntax
        fp = _little_explicit()
        write_file_meta_info(fp, meta, enforce_standard=True)   # fills in the defaults
        self.first = fp.getvalue()
        self.head = b"".join(_element(e) for e in meta if 0x00020000 < e.tag < 0x00020003)
        self.tail = b"".join(_element(e) for e in meta if e.tag > 0x00020003)

    def encoded(self, sop_uid: str) -> bytes:
        own = _element(DataElement(0x00020003, "UI", sop_uid))
        return _group_length(len(self.head) + len(own) + len(self.tail)) + self.head + own \
            + self.tail


@lru_cache(maxsize=None)
def _group_length(length: int) -> bytes:
    """The file meta group length element, encoded by pydicom."""
    return _element(DataElement(0x00020000, "UL", length))


@lru_cache(maxsize=None)
def _file_meta(transfer_syntax: UID) -> _FileMeta:
    """The file meta encoder of a transfer syntax, built once per process (any instance UID:
    each file puts its own)."""
    return _FileMeta(transfer_syntax, "1.2.3")


@lru_cache(maxsize=None)
def _instance_number(k: int) -> bytes:
    """InstanceNumber of the k-th slice of a series, encoded by pydicom."""
    return _element(DataElement(0x00200013, "IS", str(k + 1)))


def write_series(folder: Path, stored: np.ndarray, grid: Grid, study: StudyInfo,
                 profile: ScannerProfile, protocol: SequenceProtocol, series_number: int,
                 cohort_seed: int) -> tuple[str, int]:
    """Write the slices of one series into ``folder``; return (series UID, bytes written).

    The elements every slice shares are encoded once by pydicom's writer and reused; each
    slice adds its own UID, number, position and compressed pixel data (pydicom's encoder
    for the site's transfer syntax), in tag order, so each file is a standard Part-10 file.
    """
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = derived_uid(cohort_seed, study.patient_id, "series", series_number)
    hi = float(np.percentile(stored[:, ::4, ::4], 99.5)) * profile.rescale_slope
    # The elements every slice shares: those of the site's sequence (encoded once per
    # process) and those of this patient's series.
    elements = dict(_protocol_elements(profile, protocol))
    elements.update(_encoded_elements(_series_dataset(study, grid, series_number, series_uid,
                                                      (hi / 2.0, hi))))
    shared = _segments(elements)
    encoder = get_encoder(profile.transfer_syntax)
    kw = {"encoding_plugin": "pylibjpeg"} if profile.transfer_syntax == RLELossless else {}
    normal = np.cross(grid.image_orientation[:3], grid.image_orientation[3:])
    sop_uids = [derived_uid(cohort_seed, study.patient_id, "sop", series_number, k)
                for k in range(grid.shape[0])]
    file_meta = _file_meta(profile.transfer_syntax)
    total = 0
    for k, sop_uid in enumerate(sop_uids):
        check = config.settings.writing_validation_mode if k == 0 else config.IGNORE
        ipp = grid.image_position(k)
        # pydicom validates the frame against the encoding options; the slices of a series
        # share shape, dtype and value range (clipped to BitsStored), so once is enough.
        frame = encoder.encode(np.ascontiguousarray(stored[k]), validate=k == 0,
                               rows=grid.shape[1],
                               columns=grid.shape[2], samples_per_pixel=1, bits_allocated=16,
                               bits_stored=profile.bits_stored, pixel_representation=0,
                               photometric_interpretation="MONOCHROME2", number_of_frames=1,
                               **kw)
        # Values built here in their VR's format; pydicom validated them on the template
        # and first slice, so the other slices skip its per-value checks.
        own = (_element(DataElement(0x00080018, "UI", sop_uid, validation_mode=check)),
               _instance_number(k),
               _element(DataElement(0x00200032, "DS", [f"{c:.4f}" for c in ipp],
                                    validation_mode=check)),
               _element(DataElement(0x00201041, "DS", f"{float(np.dot(normal, ipp)):.4f}",
                                    validation_mode=check)),
               _element(DataElement(0x7FE00010, "OB", encapsulate([frame]),
                                    is_undefined_length=True, validation_mode=check)))
        # The preamble, the file meta group, then shared runs and per-slice elements in tag
        # order.
        parts = [b"\x00" * 128 + b"DICM", file_meta.encoded(sop_uid)]
        for segment, elem in zip(shared, own):
            parts += (segment, elem)
        parts.append(shared[-1])
        body = b"".join(parts)
        path = folder / f"{k + 1:04d}.dcm"
        path.write_bytes(body)
        total += len(body)
    return str(series_uid), total
