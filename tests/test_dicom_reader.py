"""spinemet.common.dicom: walking, grouping, slice order, geometry, sequences and pixels, on
real scanner files (shared/data/real-mri), pydicom's test files (bundled and pydicom-data),
enhanced multi-frame MR and the synthetic cohort against its ground truth."""

from __future__ import annotations

import random
import shutil
import uuid
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.pixels import apply_rescale

from spinemet.common.dicom import SequenceTags, classify_sequence, scan
from spinemet.common.dicom.header import MISSING_GEOMETRY, NO_PIXELS, NOT_MR, TRUNCATED

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real-mri"
DECUBITUS = ("decubitus-HFS-t1-sag", "decubitus-HFP-t1-sag")


def _need_real():
    if not (REAL / DECUBITUS[0]).is_dir():
        pytest.skip(f"shared/data/real-mri not found at {REAL}: the real-scanner tests need "
                    "the project's shared data folder beside the repository")


def _testdata(name: str) -> Path:
    p = get_testdata_file(name)
    if p is None:
        pytest.skip(f"{name} not available: install pydicom-data (pip install pydicom-data, "
                    "the project's [test] extra) for pydicom's larger test files")
    return Path(p)


def _ipp(path: Path) -> np.ndarray:
    return np.array([float(v) for v in pydicom.dcmread(path, stop_before_pixels=True)
                     .ImagePositionPatient])


# ----------------------------------------------------------------------------- real MRI


@pytest.fixture(scope="module")
def shuffled_real(tmp_path_factory):
    """Both decubitus series copied under random names without extension, all in one
    folder, in shuffled order: only the headers can group and order them."""
    _need_real()
    out = tmp_path_factory.mktemp("real_shuffled")
    files = [f for d in DECUBITUS for f in sorted((REAL / d).iterdir())]
    random.Random(5).shuffle(files)
    for f in files:
        shutil.copyfile(f, out / uuid.UUID(int=random.Random(str(f)).getrandbits(128)).hex)
    return scan([out], workers=2)


def test_real_decubitus_series_found_as_two_sagittal_t1_of_35_slices(shuffled_real):
    assert not shuffled_real.rejected
    series = shuffled_real.series
    assert len(series) == 2
    for s in series:
        assert (s.sequence, s.orientation, s.shape) == ("T1", "sagittal", (35, 256, 256))
        assert len(s.files) == 35 and not s.multiframe
        assert s.spacing[1:] == pytest.approx((1.015625, 1.015625))
    assert sorted(s.patient_position for s in series) == ["HFP", "HFS"]


def test_real_slices_ordered_along_the_normal_not_by_name(shuffled_real):
    for s in shuffled_real.series:
        d = np.array([_ipp(f) @ s.direction[2] for f in s.files])
        assert np.all(np.diff(d) > 0)
        np.testing.assert_allclose(np.diff(d), s.spacing[0], atol=1e-3)
        assert [f.name for f in s.files] != sorted(f.name for f in s.files)
        np.testing.assert_allclose(s.direction[2], np.cross(s.direction[0], s.direction[1]))


def test_real_affine_maps_each_slice_index_to_its_file_position(shuffled_real):
    for s in shuffled_real.series:
        a = s.affine
        np.testing.assert_allclose(s.origin, _ipp(s.files[0]), atol=1e-4)
        for k in (0, 17, 34):
            np.testing.assert_allclose((a @ [k, 0, 0, 1])[:3], _ipp(s.files[k]), atol=1e-3)
        ds = pydicom.dcmread(s.files[0], stop_before_pixels=True)
        row, col = np.array(ds.ImageOrientationPatient[:3]), np.array(
            ds.ImageOrientationPatient[3:])
        # one row down moves PixelSpacing[0] along the column cosine
        np.testing.assert_allclose((a @ [0, 1, 0, 1])[:3] - s.origin,
                                   col * float(ds.PixelSpacing[0]), atol=1e-6)
        np.testing.assert_allclose((a @ [0, 0, 1, 1])[:3] - s.origin,
                                   row * float(ds.PixelSpacing[1]), atol=1e-6)


def test_real_series_load_matches_pydicom_slice_by_slice(shuffled_real):
    s = shuffled_real.series[0]
    vol = s.load()
    assert vol.shape == (35, 256, 256) and vol.dtype == np.float32
    for k in (0, 20, 34):
        ds = pydicom.dcmread(s.files[k])
        np.testing.assert_array_equal(vol[k], apply_rescale(ds.pixel_array, ds))


@pytest.mark.parametrize("name,shape", [("cspine-t2-sag-siemens-1.5T-j2k-isoir13.dcm", 384),
                                        ("lspine-t2-sag-hitachi-0.3T-j2k.dcm", 256)])
def test_real_jpeg2000_slices_decode(tmp_path, name, shape):
    _need_real()
    shutil.copyfile(REAL / name, tmp_path / "slice")
    res = scan([tmp_path])
    (s,) = res.series
    assert (s.shape, s.orientation, s.sequence) == ((1, shape, shape), "sagittal", "T2")
    assert s.transfer_syntax == pydicom.uid.JPEG2000Lossless
    vol = s.load()
    ds = pydicom.dcmread(REAL / name)
    np.testing.assert_array_equal(vol[0], apply_rescale(ds.pixel_array, ds))
    assert vol.std() > 0


# ----------------------------------------------------------------------------- pydicom's files

MR_SMALL_VARIANTS = ["MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm",
                     "MR_small_jp2klossless.dcm", "MR_small_bigendian.dcm",
                     "MR_small_implicit.dcm", "MR_small_padded.dcm"]


@pytest.mark.parametrize("name", MR_SMALL_VARIANTS)
def test_mr_small_in_every_transfer_syntax_loads_the_same_values(name):
    res = scan([_testdata(name)])
    (s,) = res.series
    assert (s.shape, s.orientation, s.sequence) == ((1, 64, 64), "axial", "T2")
    ref = pydicom.dcmread(_testdata("MR_small.dcm")).pixel_array
    np.testing.assert_array_equal(s.load()[0], ref)


def test_jpeg_ls_decoded_by_charls_with_pylibjpegs_values(monkeypatch):
    """JPEG-LS goes to CharLS (pyjpegls, about 4x faster here); the values are those of
    pydicom's first choice, pylibjpeg-libjpeg, and of the uncompressed file."""
    from spinemet.common.dicom import volume

    path = _testdata("MR_small_jpeg_ls_lossless.dcm")
    used = []
    real = pydicom.Dataset.pixel_array_options
    monkeypatch.setattr(pydicom.Dataset, "pixel_array_options",
                        lambda self, **kw: (used.append(kw), real(self, **kw))[1])
    charls = volume._pixels(path)
    assert used == [{"decoding_plugin": "pyjpegls"}]
    ds = pydicom.dcmread(path)
    ds.pixel_array_options(decoding_plugin="pylibjpeg")
    np.testing.assert_array_equal(charls, ds.pixel_array)
    np.testing.assert_array_equal(charls, pydicom.dcmread(_testdata("MR_small.dcm")).pixel_array)
    used.clear()
    volume._pixels(_testdata("MR_small_RLE.dcm"))   # other syntaxes keep pydicom's order
    assert used == []


def test_the_same_instance_in_several_syntaxes_is_one_slice_and_duplicates():
    res = scan([_testdata(n) for n in MR_SMALL_VARIANTS])
    assert len(res.series) == 1 and res.series[0].shape[0] == 1
    assert [r.reason for r in res.rejected] == ["duplicate instance"] * 6


@pytest.mark.parametrize("name,reason", [("CT_small.dcm", NOT_MR), ("rtplan.dcm", NO_PIXELS),
                                         ("MR_truncated.dcm", TRUNCATED)])
def test_pydicom_files_rejected_with_reason(name, reason):
    res = scan([_testdata(name)])
    assert not res.studies
    assert [(r.path.name, r.reason) for r in res.rejected] == [(name, reason)]


def test_pydicom_data_large_j2k_mr_is_oblique_t1_and_lossless():
    res = scan([_testdata("MR2_J2KR.dcm")])
    (s,) = res.series
    assert (s.shape, s.orientation, s.sequence) == ((1, 1024, 1024), "oblique", "T1")
    ref = pydicom.dcmread(_testdata("MR2_UNCR.dcm"))
    np.testing.assert_allclose(s.load()[0], apply_rescale(ref.pixel_array, ref), rtol=1e-6)


def test_enhanced_mr_without_functional_groups_is_missing_geometry():
    res = scan([_testdata("emri_small.dcm")])
    assert [r.reason for r in res.rejected] == [MISSING_GEOMETRY]


def test_enhanced_mr_with_short_compressed_data_is_truncated():
    res = scan([_testdata("emri_small_jpeg_2k_lossless_too_short.dcm")])
    assert [r.reason for r in res.rejected] == [TRUNCATED]


# ----------------------------------------------------------------------------- enhanced MR

PERM = [3, 7, 0, 9, 1, 5, 2, 8, 6, 4]      # slice position of frame i along the normal


def _make_enhanced(src: Path, dst: Path) -> tuple[np.ndarray, np.ndarray]:
    """``src`` (10 frames, 64x64) with sagittal functional groups: frame i lies at slice
    PERM[i] and has RescaleSlope 1 + i/2. Returns (frame order along the normal, slopes)."""
    ds = pydicom.dcmread(src)
    shared = Dataset()
    po, pm = Dataset(), Dataset()
    po.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]          # normal (-1, 0, 0)
    pm.PixelSpacing, pm.SliceThickness, pm.SpacingBetweenSlices = [0.5, 0.75], 1.2, 1.2
    shared.PlaneOrientationSequence, shared.PixelMeasuresSequence = [po], [pm]
    ds.SharedFunctionalGroupsSequence = [shared]
    per, slopes = [], []
    for i, k in enumerate(PERM):
        it, pp, pvt = Dataset(), Dataset(), Dataset()
        pp.ImagePositionPatient = [10.0 - 1.2 * k, -20.0, 30.0]
        pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = f"{1 + i / 2:g}", "0", "US"
        it.PlanePositionSequence, it.PixelValueTransformationSequence = [pp], [pvt]
        per.append(it)
        slopes.append(1 + i / 2)
    ds.PerFrameFunctionalGroupsSequence = per
    ds.PatientPosition = "HFS"
    ds.save_as(dst)
    return np.argsort(PERM), np.array(slopes)


@pytest.mark.parametrize("name", ["emri_small.dcm", "emri_small_RLE.dcm",
                                  "emri_small_jpeg_ls_lossless.dcm",
                                  "emri_small_jpeg_2k_lossless.dcm",
                                  "emri_small_big_endian.dcm"])
def test_enhanced_multiframe_is_one_series_with_frames_along_the_normal(tmp_path, name):
    src = _testdata(name)
    order, slopes = _make_enhanced(src, tmp_path / "enhanced")
    res = scan([tmp_path])
    assert not res.rejected
    (s,) = res.series
    assert s.multiframe and s.files == [tmp_path / "enhanced"]
    assert (s.shape, s.orientation, s.sequence) == ((10, 64, 64), "sagittal", "T1")
    assert s.spacing == pytest.approx((1.2, 0.5, 0.75))
    np.testing.assert_allclose(s.origin, (10.0, -20.0, 30.0))
    assert [fr.index for _, fr in s.frames] == list(order)
    raw = pydicom.dcmread(_testdata("emri_small.dcm")).pixel_array.astype(np.float32)
    np.testing.assert_allclose(s.load(), raw[order] * slopes[order][:, None, None])


# ----------------------------------------------------------------------------- sequences


@pytest.mark.parametrize("tags,expected", [
    (SequenceTags(("SE",), 550, 10), "T1"),
    (SequenceTags(("SE",), 3500, 95), "T2"),
    (SequenceTags(("IR", "SE"), 4000, 55, 150, field_strength=1.5), "STIR"),
    (SequenceTags(("IR", "SE"), 4800, 42, 220, field_strength=3.0), "STIR"),
    (SequenceTags(("IR", "SE"), 9000, 120, 2500, field_strength=1.5), "other"),   # FLAIR
    (SequenceTags(("GR",), 300, 2.46), "T1"),                                     # fl2d
    (SequenceTags(("GR",), 600, 18), "other"),                                    # T2* GRE
    (SequenceTags(("SE",), 3000, 30), "other"),                                   # PD
    (SequenceTags(("SE",), 3000, 30, texts=("Sag T2 FSE",)), "T2"),
    (SequenceTags((), None, None, texts=("t2_tirm_sag_STIR",)), "STIR"),
    (SequenceTags((), None, None, texts=("sT1W_TSE",)), "T1"),
    (SequenceTags((), None, None, texts=("T2 FLAIR",)), "other"),
    (SequenceTags((), None, None, acquisition_contrast="T1"), "T1"),
])
def test_sequence_rules(tags, expected):
    assert classify_sequence(tags) == expected


# ----------------------------------------------------------------------------- cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from spinemet.common.cohort.spec import CohortSpec
    from spinemet.common.cohort.writer import read_labels, write_cohort

    out = tmp_path_factory.mktemp("reader_cohort") / "cohort"
    summary = write_cohort(CohortSpec(patients=6, sites=2, seed=3), out, workers=2)
    assert not summary.failed
    return out, read_labels(out / "labels.csv"), scan([out], workers=2)


def test_cohort_scans_to_one_study_per_patient_with_three_sagittal_series(cohort):
    out, labels, res = cohort
    assert not res.rejected
    assert sorted((s.patient_id, s.study_uid) for s in res.studies) == \
        sorted((r["patient_id"], r["study_uid"]) for r in labels)
    for st in res.studies:
        assert sorted(s.sequence for s in st.series) == ["STIR", "T1", "T2"]
        assert all(s.orientation == "sagittal" and s.patient_position == "HFS"
                   for s in st.series)
        assert not st.missing()


def _gt(out: Path, pid: str):
    from spinemet.common.cohort.ground_truth import load_ground_truth
    return load_ground_truth(out / "ground_truth" / f"{pid}.npz")


@pytest.mark.parametrize("seq", ["T1", "T2", "STIR"])
def test_cohort_voxel_centres_and_spacing_match_ground_truth(cohort, seq):
    """Whatever the slice order, every slice of the series lies on a ground-truth slice
    (1e-3 mm), with the same shape and spacing (1e-3 mm); far in-plane corners agree to
    the precision of the written PixelSpacing (6 significant digits: <= 2e-3 mm at 256 px)."""
    out, _, res = cohort
    for st in res.studies:
        grid = _gt(out, st.patient_id).series_grid(seq)
        s = st.series_for(seq)
        assert s.shape == tuple(grid.shape)
        np.testing.assert_allclose(s.spacing, grid.spacing, atol=1e-3)
        a = s.affine
        firsts = grid.voxel_to_patient(np.array([[j, 0, 0] for j in range(grid.shape[0])]))
        mine = np.array([(a @ [k, 0, 0, 1])[:3] for k in range(s.shape[0])])
        match = [int(np.argmin(np.linalg.norm(firsts - p, axis=1))) for p in mine]
        assert sorted(match) == list(range(grid.shape[0]))
        np.testing.assert_allclose(mine, firsts[match], atol=1e-3)
        for k, r, c in [(s.shape[0] - 1, 5, 7), (2, s.shape[1] - 1, s.shape[2] - 1)]:
            np.testing.assert_allclose((a @ [k, r, c, 1])[:3], grid.voxel_to_patient(
                np.array([[match[k], r, c]]))[0], atol=2e-3)


@pytest.mark.parametrize("seq", ["T1", "T2", "STIR"])
def test_cohort_origin_equals_ground_truth_origin(cohort, seq):
    out, _, res = cohort
    for st in res.studies:
        grid = _gt(out, st.patient_id).series_grid(seq)
        np.testing.assert_allclose(st.series_for(seq).origin, grid.origin, atol=1e-3)


def test_cohort_load_applies_rescale_slope_per_file(cohort):
    _, _, res = cohort
    for st in res.studies[:2]:
        s = st.series_for("T1")
        vol = s.load()
        for k in (0, s.shape[0] // 2):
            ds = pydicom.dcmread(s.files[k])
            np.testing.assert_allclose(vol[k], apply_rescale(ds.pixel_array, ds), rtol=1e-6)
