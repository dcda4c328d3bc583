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


@pytest.mark.parametrize("seq", SEQS)
def test_simpleitk_geometry_matches_ground_truth_grid(small_cohort, seq):
    """origin = centre of voxel (0,0,0); spacing = (column, row, SpacingBetweenSlices);
    axes: columns along +y, rows along -z, slices along +x (LPS), all to 1e-3 mm."""
    for row in _one_per_site(small_cohort):
        gt = small_cohort.gt(row["patient_id"])
        grid = gt.series_grid(seq)
        img, names = _read(small_cohort.series_dir(row, seq))
        assert len(names) == grid.shape[0]
        assert img.GetSize() == (grid.shape[2], grid.shape[1], grid.shape[0])
        np.testing.assert_allclose(img.GetOrigin(), grid.origin, atol=1e-3)
        expected_spacing = (grid.spacing[2], grid.spacing[1], grid.spacing[0])
        np.testing.assert_allclose(img.GetSpacing(), expected_spacing, atol=1e-3)
        dss, _ = read_series(str(small_cohort.series_dir(row, seq)))
        assert img.GetSpacing()[2] == pytest.approx(float(dss[0].SpacingBetweenSlices),
                                                    abs=1e-3)
        direction = np.array(img.GetDirection()).reshape(3, 3)   # columns = axis directions
        expected = np.column_stack([ROW_COSINE, COLUMN_COSINE, SLICE_COSINE])
        np.testing.assert_allclose(direction, expected, atol=1e-6)
        # A voxel index maps to the same patient point in both descriptions.
        k, r, c = grid.shape[0] - 1, grid.shape[1] // 3, grid.shape[2] - 5
        p_sitk = img.TransformIndexToPhysicalPoint((c, r, k))
        p_gt = grid.voxel_to_patient(np.array([[k, r, c]]))[0]
        np.testing.assert_allclose(p_sitk, p_gt, atol=1e-3)


@pytest.mark.parametrize("seq", SEQS)
def test_simpleitk_pixel_values_equal_pydicom(small_cohort, seq):
    """Real-world values (RescaleSlope applied where a site sets it) agree voxel by voxel."""
    for row in _one_per_site(small_cohort):
        img, _ = _read(small_cohort.series_dir(row, seq))
        arr = sitk.GetArrayFromImage(img).astype(np.float64)   # (slices, rows, cols)
        _, vol = read_series(str(small_cohort.series_dir(row, seq)))
        assert arr.shape == vol.shape
        np.testing.assert_allclose(arr, vol, rtol=1e-5, atol=1e-3)
