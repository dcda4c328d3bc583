"""An independent reader (SimpleITK/GDCM) sees the geometry the ground truth was drawn on."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import read_series
from spinemet.common.cohort.grid import COLUMN_COSINE, ROW_COSINE, SLICE_COSINE

sitk = pytest.importorskip("SimpleITK")

SEQS = ("T1", "T2", "STIR")


def _one_per_site(cohort):
    seen, rows = set(), []
    for r in cohort.labels:
        if r["site"] not in seen:
            seen.add(r["site"])
            rows.append(r)
    return rows


def _read(folder):
    reader = sitk.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(str(folder))
    reader.SetFileNames(names)
    return reader.Execute(), names


def _slice_map(img, grid):
    """For each ground-truth slice k, the SimpleITK slice index holding the same plane."""
    out = []
    for k in range(grid.shape[0]):
        p = grid.voxel_to_patient(np.array([[k, 0, 0]]))[0]
        out.append(img.TransformPhysicalPointToIndex(tuple(float(v) for v in p))[2])
    return out


@pytest.mark.parametrize("seq", SEQS)
def test_simpleitk_sees_the_ground_truth_voxels_at_the_same_points(small_cohort, seq):
    """Physical geometry: every ground-truth voxel centre (origin, spacing incl. slice
    spacing = SpacingBetweenSlices, row/column cosines) is a SimpleITK voxel centre, to
    1e-3 mm, whatever order SimpleITK stacks the slices in."""
    for row in _one_per_site(small_cohort):
        gt = small_cohort.gt(row["patient_id"])
        grid = gt.series_grid(seq)
        img, names = _read(small_cohort.series_dir(row, seq))
        dss, _ = read_series(str(small_cohort.series_dir(row, seq)))
        assert len(names) == grid.shape[0]
        assert img.GetSize() == (grid.shape[2], grid.shape[1], grid.shape[0])
        np.testing.assert_allclose(img.GetSpacing(),
                                   (grid.spacing[2], grid.spacing[1], grid.spacing[0]),
                                   atol=1e-3)
        assert img.GetSpacing()[2] == pytest.approx(float(dss[0].SpacingBetweenSlices),
                                                    abs=1e-3)
        direction = np.array(img.GetDirection()).reshape(3, 3)   # columns = axis directions
        np.testing.assert_allclose(direction[:, 0], ROW_COSINE, atol=1e-6)
        np.testing.assert_allclose(direction[:, 1], COLUMN_COSINE, atol=1e-6)
        np.testing.assert_allclose(np.abs(direction[:, 2]), np.abs(SLICE_COSINE), atol=1e-6)
        kmap = _slice_map(img, grid)
        assert sorted(kmap) == list(range(grid.shape[0]))
        rng = np.random.default_rng(0)
        idx = np.column_stack([rng.integers(0, n, 50) for n in grid.shape])
        idx = np.vstack([idx, [[0, 0, 0], [n - 1 for n in grid.shape]]])
        err = max(np.abs(np.subtract(
            img.TransformIndexToPhysicalPoint((int(c), int(r), int(kmap[k]))),
            grid.voxel_to_patient(np.array([[k, r, c]]))[0])).max() for k, r, c in idx)
        assert err <= 1e-3, (f"{row['patient_id']} {seq}: voxel centres differ by up to "
                             f"{err:.2e} mm (PixelSpacing {dss[0].PixelSpacing} vs grid "
                             f"{grid.spacing[1]!r})")


@pytest.mark.parametrize("seq", SEQS)
def test_simpleitk_origin_and_slice_axis_match_ground_truth_grid(small_cohort, seq):
    """As specified: SimpleITK's origin is the ground truth's voxel (0,0,0) and its slice
    axis runs along +x (SLICE_COSINE), so ``GetArrayFromImage`` indexes like ``gt.tissue``.

    GDCM orders slices along the DICOM normal row x column = (-1, 0, 0); if the ground-truth
    grid stacks slices along +x the two arrays are left-right mirrored."""
    for row in _one_per_site(small_cohort):
        grid = small_cohort.gt(row["patient_id"]).series_grid(seq)
        img, _ = _read(small_cohort.series_dir(row, seq))
        direction = np.array(img.GetDirection()).reshape(3, 3)
        assert np.allclose(img.GetOrigin(), grid.origin, atol=1e-3) and \
            np.allclose(direction[:, 2], SLICE_COSINE, atol=1e-6), (
            f"SimpleITK origin {img.GetOrigin()} slice axis {direction[:, 2]} vs ground truth "
            f"origin {grid.origin} slice axis {SLICE_COSINE}; "
            f"normal row x column = {np.cross(ROW_COSINE, COLUMN_COSINE)}")


@pytest.mark.parametrize("seq", SEQS)
def test_simpleitk_pixel_values_equal_pydicom(small_cohort, seq):
    """Real-world values (RescaleSlope applied where a site sets it) agree voxel by voxel,
    slice matched by physical position."""
    for row in _one_per_site(small_cohort):
        grid = small_cohort.gt(row["patient_id"]).series_grid(seq)
        img, _ = _read(small_cohort.series_dir(row, seq))
        arr = sitk.GetArrayFromImage(img).astype(np.float64)   # (slices, rows, cols)
        _, vol = read_series(str(small_cohort.series_dir(row, seq)))
        assert arr.shape == vol.shape
        np.testing.assert_allclose(arr[_slice_map(img, grid)], vol, rtol=1e-5, atol=1e-3)
