"""Shared fixtures of the synthetic-cohort test-suite.

Two cohorts are generated once per test session (generation is the expensive part):

* ``small_cohort``: 24 patients, 3 sites, seed 7 (about 15 s on 2 cores); used by every
  structural, DICOM, geometry and realism test;
* ``large_cohort``: 240 patients, 5 sites, seed 11 (about 75 s on 2 cores); used only by the
  shortcut checks (``@pytest.mark.shortcut``), so ``pytest -m "not shortcut"`` skips it.

Helpers shared by several test modules live here as plain functions; the test modules import
them with ``from conftest import ...`` (pytest puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from filelock import FileLock
from pydicom.pixels import apply_rescale
from scipy import ndimage

from spinemet.common.cohort.ground_truth import GroundTruth, load_ground_truth
from spinemet.common.cohort.patient import SERIES_FOLDERS
from spinemet.common.cohort.spec import CohortSpec
from spinemet.common.cohort.writer import CohortSummary, read_labels, write_cohort

SMALL_SPEC = CohortSpec(patients=24, sites=3, seed=7)
LARGE_SPEC = CohortSpec(patients=240, sites=5, seed=11)
WORKERS = 2


@dataclass
class Cohort:
    path: Path
    spec: CohortSpec
    summary: CohortSummary
    labels: list[dict]

    def patient_dir(self, row: dict) -> Path:
        return self.path / row["site"] / row["patient_id"]

    def series_dir(self, row: dict, seq: str) -> Path:
        return self.patient_dir(row) / SERIES_FOLDERS[seq]

    def gt(self, patient_id: str) -> GroundTruth:
        return _load_gt(str(self.path / "ground_truth" / f"{patient_id}.npz"))


@functools.lru_cache(maxsize=64)
def _load_gt(path: str) -> GroundTruth:
    return load_ground_truth(Path(path))


def shared_dir(tmp_path_factory, name: str) -> tuple[Path, FileLock]:
    """A folder for a session resource and the lock to hold while building it. Under
    pytest-xdist (``make test`` runs two workers, whole modules per worker) the folder is in
    the run's common base, so the first worker builds the resource and the other reuses it;
    the builders (``write_cohort``, ``preprocess``) keep what is already complete."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    return base / name, FileLock(str(base / f"{name}.lock"))


def _make(tmp_path_factory, name: str, spec: CohortSpec) -> Cohort:
    folder, lock = shared_dir(tmp_path_factory, name)
    out = folder / "cohort"
    with lock:
        summary = write_cohort(spec, out, workers=WORKERS)
    assert not summary.failed, summary.failed
    return Cohort(out, spec, summary, read_labels(out / "labels.csv"))


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory) -> Cohort:
    return _make(tmp_path_factory, "small", SMALL_SPEC)


@pytest.fixture(scope="session")
def large_cohort(tmp_path_factory) -> Cohort:
    return _make(tmp_path_factory, "large", LARGE_SPEC)


# ----------------------------------------------------------------------------- helpers


def series_files(folder: Path) -> list[Path]:
    return sorted(Path(folder).glob("*.dcm"))


@functools.lru_cache(maxsize=256)
def read_series(folder: str) -> tuple[list[pydicom.Dataset], np.ndarray]:
    """The datasets of a series in InstanceNumber order and its real-valued volume
    (modality LUT applied: stored value x RescaleSlope + RescaleIntercept)."""
    dss = [pydicom.dcmread(f) for f in series_files(Path(folder))]
    dss.sort(key=lambda d: int(d.InstanceNumber))
    vol = np.stack([apply_rescale(d.pixel_array, d).astype(np.float64) for d in dss])
    return dss, vol


def real_volume(cohort: Cohort, row: dict, seq: str) -> np.ndarray:
    return read_series(str(cohort.series_dir(row, seq)))[1]


def labels_on_series_grid(gt: GroundTruth, seq: str, volume: np.ndarray | None = None
                          ) -> np.ndarray:
    """The tissue (or another ground-truth) volume on the grid of series ``seq``.

    T1/T2 share the ground-truth grid; STIR may be coarser: nearest-neighbour zoom with
    the same pixel-centre convention the renderer uses (``grid_mode=True``)."""
    vol = gt.tissue if volume is None else volume
    shape = gt.series_grid(seq).shape
    if tuple(vol.shape) == tuple(shape):
        return vol
    return ndimage.zoom(vol, (1.0, shape[1] / vol.shape[1], shape[2] / vol.shape[2]),
                        order=0, grid_mode=True, mode="nearest")


def eroded(mask2d: np.ndarray, iterations: int = 1) -> np.ndarray:
    """Drop boundary pixels (partial volume with the neighbours after the PSF blur)."""
    if iterations <= 0:
        return mask2d
    return ndimage.binary_erosion(mask2d, iterations=iterations)


@pytest.fixture(scope="session")
def small_cache(small_cohort, tmp_path_factory) -> Path:
    """The small cohort preprocessed once (one cache for all its sites)."""
    from spinemet.common.preprocess.runner import preprocess

    folder, lock = shared_dir(tmp_path_factory, "small-cache")
    cache = folder / "cache"
    with lock:
        summary = preprocess(small_cohort.path, cache, small_cohort.labels, workers=WORKERS)
    assert not summary.failed, summary.failed
    return cache

