"""Every stored file is a valid, clinically plausible MR Image Storage Part-10 file."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pydicom
import pytest
from pydicom.uid import MRImageStorage

from conftest import series_files
from spinemet.common.cohort.patient import SERIES_FOLDERS

REQUIRED = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
            "PixelSpacing", "SliceThickness", "SpacingBetweenSlices", "ImagePositionPatient",
            "ImageOrientationPatient", "Rows", "Columns", "SeriesDescription",
            "ScanningSequence", "RepetitionTime", "EchoTime", "Manufacturer",
            "MagneticFieldStrength", "InstitutionName")


@pytest.fixture(scope="module")
def all_files(small_cohort):
    """(row, sequence, path, dataset with decoded pixel shape) for every file of the cohort."""
    out = []
    for row in small_cohort.labels:
        for seq in SERIES_FOLDERS:
            files = series_files(small_cohort.series_dir(row, seq))
            for f in files:
                ds = pydicom.dcmread(f)
                out.append((row, seq, f, ds))
    return out


def test_every_patient_has_three_series(small_cohort):
    for row in small_cohort.labels:
        folders = sorted(p.name for p in small_cohort.patient_dir(row).iterdir())
        assert folders == sorted(SERIES_FOLDERS.values())


def test_files_are_part10_with_preamble_and_file_meta(all_files):
    assert len(all_files) > 24 * 3 * 10
    for _, _, path, ds in all_files:
        with open(path, "rb") as fh:
            head = fh.read(132)
        assert head[128:132] == b"DICM", path
        assert ds.preamble is not None and len(ds.preamble) == 128
        assert ds.file_meta.MediaStorageSOPClassUID == MRImageStorage
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.SOPClassUID == MRImageStorage
        assert ds.Modality == "MR"


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.5"])
def test_reused_file_meta_is_what_pydicom_writes_for_each_file(syntax):
    # The writer encodes the file meta group once per series and swaps the instance UID;
    # for every other UID (of another length too) the bytes equal pydicom's own encoding.
    from pydicom.dataset import FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info
    from spinemet.common.cohort.dicom_writer import _FileMeta, derived_uid

    meta = _FileMeta(pydicom.uid.UID(syntax), str(derived_uid(0, "p", "sop", 1, 0)))
    for uid in ("1.2.3", str(derived_uid(0, "p", "sop", 1, 7)), "1.2.840.1234567.99"):
        ref = FileMetaDataset()
        ref.MediaStorageSOPClassUID = MRImageStorage
        ref.MediaStorageSOPInstanceUID = uid
        ref.TransferSyntaxUID = syntax
        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, False
        write_file_meta_info(fp, ref, enforce_standard=True)
        assert meta.encoded(uid) == fp.getvalue()


def test_pixel_data_uses_a_compressed_transfer_syntax(all_files):
    syntaxes = set()
    for _, _, path, ds in all_files:
        ts = ds.file_meta.TransferSyntaxUID
        assert ts.is_compressed, (path, ts)
        syntaxes.add(str(ts))
    # The three sites of the small cohort store JPEG-LS lossless and RLE lossless.
    assert len(syntaxes) >= 2


def test_required_tags_are_present(all_files):
    for _, seq, path, ds in all_files:
        missing = [kw for kw in REQUIRED if kw not in ds or ds[kw].value in (None, "")]
        assert not missing, (path, missing)


def test_inversion_time_only_on_stir(all_files):
    for _, seq, path, ds in all_files:
        if seq == "STIR":
            assert "InversionTime" in ds and 100 <= float(ds.InversionTime) <= 250, path
            assert "IR" in list(ds.ScanningSequence)
        else:
            assert "InversionTime" not in ds, path


def test_rows_columns_equal_pixel_array_shape(all_files):
    for _, _, path, ds in all_files:
        assert ds.pixel_array.shape == (ds.Rows, ds.Columns), path


def test_study_uid_shared_by_the_three_series_and_equals_labels(all_files, small_cohort):
    per_patient = defaultdict(set)
    for row, _, _, ds in all_files:
        assert ds.PatientID == row["patient_id"]
        per_patient[row["patient_id"]].add(ds.StudyInstanceUID)
    for row in small_cohort.labels:
        assert per_patient[row["patient_id"]] == {row["study_uid"]}


def test_series_uids_unique_per_series(all_files):
    series = defaultdict(set)     # (patient, seq) -> series UIDs
    for row, seq, _, ds in all_files:
        series[(row["patient_id"], seq)].add(ds.SeriesInstanceUID)
    assert all(len(v) == 1 for v in series.values())
    uids = [next(iter(v)) for v in series.values()]
    assert len(set(uids)) == len(uids)
    studies = {ds.StudyInstanceUID for _, _, _, ds in all_files}
    assert not studies & set(uids)


def test_sop_instance_uids_unique_per_file(all_files):
    uids = [ds.SOPInstanceUID for _, _, _, ds in all_files]
    assert len(set(uids)) == len(uids)


def test_slice_count_and_matrix_in_clinical_range(all_files):
    counts = defaultdict(int)
    for row, seq, path, ds in all_files:
        counts[(row["patient_id"], seq)] += 1
        assert 224 <= ds.Rows <= 384 and 224 <= ds.Columns <= 384, path
        sp = [float(v) for v in ds.PixelSpacing]
        assert 0.7 <= sp[0] <= 1.5 and sp[0] == pytest.approx(sp[1])
        assert 2.5 <= float(ds.SliceThickness) <= 5.0
        assert float(ds.SpacingBetweenSlices) >= float(ds.SliceThickness)
    assert all(11 <= n <= 15 for n in counts.values()), counts


def test_sequence_timing_parameters_are_clinical(all_files):
    for _, seq, path, ds in all_files:
        tr, te = float(ds.RepetitionTime), float(ds.EchoTime)
        if seq == "T1":
            assert 400 <= tr <= 800 and 6 <= te <= 20, path
        elif seq == "T2":
            assert 2500 <= tr <= 6000 and 80 <= te <= 130, path
        else:
            assert 2500 <= tr <= 6000 and 30 <= te <= 80, path
        assert float(ds.MagneticFieldStrength) in (1.5, 3.0)


def test_instance_numbers_and_positions_are_consistent(all_files):
    by_series = defaultdict(list)
    for row, seq, _, ds in all_files:
        by_series[(row["patient_id"], seq)].append(ds)
    for dss in by_series.values():
        dss.sort(key=lambda d: int(d.InstanceNumber))
        assert [int(d.InstanceNumber) for d in dss] == list(range(1, len(dss) + 1))
        # Instance order runs along the slice normal (row cosine x column cosine).
        iop = np.asarray(dss[0].ImageOrientationPatient, float)
        normal = np.cross(iop[:3], iop[3:])
        xs = [float(np.dot(normal, np.asarray(d.ImagePositionPatient, float))) for d in dss]
        gaps = [b - a for a, b in zip(xs, xs[1:])]
        assert all(g == pytest.approx(float(dss[0].SpacingBetweenSlices), abs=1e-3)
                   for g in gaps)
