"""Rician noise in air and a site-specific receive-coil bias field.

Noise: the renderer adds complex Gaussian noise and stores the magnitude, so air (no
signal) must follow a Rayleigh law with the series' ``noise_sigma`` (real-world units).
Stored values are integers (x RescaleSlope): a uniform dither of one quantisation step
undoes the rounding before the continuous Kolmogorov-Smirnov test. Air voxels are taken
more than 20 mm from any tissue (beyond the PSF blur), in series without ghosts.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage, stats

from conftest import eroded, labels_on_series_grid, read_series, real_volume
from spinemet.common.cohort.tissues import Tissue as T

SEQS = ("T1", "T2", "STIR")
RAYLEIGH_MEAN_OVER_STD = np.sqrt(np.pi / 2) / np.sqrt(2 - np.pi / 2)   # 1.913


def _air(cohort, row, seq, margin_mm=20.0):
    """Real-world values of far air voxels, divided by the series' noise sigma."""
    gt = cohort.gt(row["patient_id"])
    if gt.meta["series"][seq]["ghost"] > 0:
        return None
    lab = labels_on_series_grid(gt, seq)
    px = gt.series_grid(seq).spacing[1]
    far = np.stack([ndimage.distance_transform_edt(sl == T.AIR) * px > margin_mm
                    for sl in lab])
    dss, vol = read_series(str(cohort.series_dir(row, seq)))
    slope = float(getattr(dss[0], "RescaleSlope", 1.0))
    rng = np.random.default_rng(abs(hash((row["patient_id"], seq))) % 2**32)
    values = vol[far]
    values = values + rng.uniform(-0.5, 0.5, values.shape) * slope   # undo quantisation
    return np.abs(values) / gt.meta["series"][seq]["noise_sigma"]


@pytest.fixture(scope="module")
def air(small_cohort):
    out = {}
    for row in small_cohort.labels:
        for seq in SEQS:
            a = _air(small_cohort, row, seq)
            if a is not None and a.size >= 2000:
                out[(row["patient_id"], row["site"], seq)] = a
    return out


def test_air_has_enough_ghost_free_samples(air):
    assert len(air) >= 30


@pytest.mark.parametrize("site", ["hospital-a", "hospital-b", "hospital-c"])
def test_air_noise_is_rayleigh_with_recorded_sigma(air, site):
    """KS test against Rayleigh(scale = noise_sigma) on 3000 air voxels pooled over the
    site's ghost-free series (each normalised by its own sigma): p > 0.01."""
    rng = np.random.default_rng(1)
    pooled = np.concatenate([v for (pid, s, seq), v in air.items() if s == site])
    sample = rng.choice(pooled, 3000, replace=False)
    res = stats.kstest(sample, stats.rayleigh(scale=1.0).cdf)
    assert res.pvalue > 0.01, (site, res, sample.mean(), sample.std())


def test_air_mean_over_std_is_rayleigh_ratio(air):
    """Rayleigh: mean/std = sqrt(pi/2)/sqrt(2-pi/2) = 1.913 (Gaussian magnitude noise with
    zero mean would give ~0 signed or 1.32 half-normal); within 10 % in every series."""
    bad = {k: round(v.mean() / v.std(), 3) for k, v in air.items()
           if abs(v.mean() / v.std() / RAYLEIGH_MEAN_OVER_STD - 1) > 0.10}
    assert not bad, bad


def test_air_noise_is_not_zero_mean_gaussian(air):
    """Magnitude noise has a positive floor: mean = sigma sqrt(pi/2) = 1.25 sigma, far from
    zero, and no negative values are stored."""
    for key, v in air.items():
        assert v.mean() == pytest.approx(np.sqrt(np.pi / 2), rel=0.1), key
        assert v.mean() > 10 * v.std() / np.sqrt(v.size), key
    half_normal_ratio = np.sqrt(2 / np.pi) / np.sqrt(1 - 2 / np.pi)   # 1.32
    ratios = np.array([v.mean() / v.std() for v in air.values()])
    assert np.all(np.abs(ratios - half_normal_ratio) > 0.3)


# ------------------------------------------------------------------------- bias field


def _cv(x):
    return float(x.std() / x.mean())


@pytest.mark.parametrize("tissue", [T.FAT, T.MUSCLE])
def test_bias_correction_lowers_variation_within_a_tissue(small_cohort, tissue):
    """In a homogeneous tissue of the T1 mid slab (3 middle slices, eroded masks), the
    coefficient of variation of raw/bias is lower than that of the raw intensity."""
    bad = []
    for row in small_cohort.labels:
        gt = small_cohort.gt(row["patient_id"])
        raw = real_volume(small_cohort, row, "T1")
        bias = gt.bias("T1")
        k0 = gt.tissue.shape[0] // 2
        ks = range(k0 - 1, k0 + 2)
        m = np.stack([eroded(gt.tissue[k] == tissue, 2) for k in ks])
        r, c = raw[list(ks)][m], (raw / bias)[list(ks)][m]
        if not _cv(c) < _cv(r):
            bad.append((row["patient_id"], round(_cv(r), 3), round(_cv(c), 3)))
    assert not bad, bad


def test_bias_field_range_inside_body_exceeds_1_2(small_cohort):
    bad = []
    for row in small_cohort.labels:
        gt = small_cohort.gt(row["patient_id"])
        for seq in SEQS:
            body = labels_on_series_grid(gt, seq) != T.AIR
            b = gt.bias(seq)[body]
            if not b.max() / b.min() > 1.2:
                bad.append((row["patient_id"], seq, round(float(b.max() / b.min()), 3)))
    assert not bad, bad


def _falloff_per_mm(gt, seq="T1"):
    """Slope of log(bias) per mm along +y (towards the posterior coil) on the row through
    the image centre of the mid slice, over the body in front of the coil."""
    g = gt.series_grid(seq)
    k, r = g.shape[0] // 2, g.shape[1] // 2
    b = gt.bias(seq)[k, r]
    body = labels_on_series_grid(gt, seq)[k, r] != T.AIR
    cols = np.flatnonzero(body)
    cols = cols[cols < cols.max() - 8]          # in front of the posterior coil
    y = g.y_of_columns()[cols]
    return float(np.polyfit(y, np.log(b[cols]), 1)[0])


def test_bias_fields_differ_between_sites(small_cohort):
    """Profiles differ in bias_strength, and the measured anterior fall-off of the field
    (slope of log bias per mm towards the coil) separates the sites: each pair's means differ by more than
    3x the pooled within-site spread."""
    per_site, strength = {}, {}
    for row in small_cohort.labels:
        gt = small_cohort.gt(row["patient_id"])
        per_site.setdefault(row["site"], []).append(_falloff_per_mm(gt))
        strength[row["site"]] = gt.meta["scanner"]["bias_strength"]
    assert len(set(strength.values())) == len(strength) >= 2, strength
    sites = sorted(per_site)
    for i, a in enumerate(sites):
        for b in sites[i + 1:]:
            xa, xb = np.array(per_site[a]), np.array(per_site[b])
            spread = max(xa.std(), xb.std(), 1e-5)
            assert abs(xa.mean() - xb.mean()) > 3 * spread, (a, b, xa, xb)
            # The fall-off follows the profile: exp(-strength * depth / 120 mm).
            for s, x in ((a, xa), (b, xb)):
                assert np.median(x) == pytest.approx(strength[s] / 120.0, rel=0.25)
