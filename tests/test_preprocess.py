"""The preprocessing pipeline, its steps against the cohort's ground truth, and its cache."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest

from spinemet.common.cohort.grid import COLUMN_COSINE, ROW_COSINE, SLICE_COSINE
from spinemet.common.cohort.tissues import Tissue
from spinemet.common.dicom.scan import scan
from spinemet.common.preprocess.filters import CorrectBias, Smooth
from spinemet.common.preprocess.mapping import ProjectTo2D
from spinemet.common.preprocess.pipeline import Pipeline, default_pipeline
from spinemet.common.preprocess.runner import preprocess, study_image
from spinemet.common.preprocess.volume import Box, Volume, resample

N_STUDIES = 10   # of the small cohort, for the ground-truth checks


def gt_volume(gt, array: np.ndarray) -> Volume:
    """A ground-truth array (on the T1/T2 grid) as a Volume in patient coordinates."""
    g = gt.grid
    return Volume(array.astype(np.float32), np.asarray(g.origin, float),
                  np.array([SLICE_COSINE, COLUMN_COSINE, ROW_COSINE], float),
                  np.asarray(g.spacing, float))


def on_box(gt, array: np.ndarray, box: Box) -> np.ndarray:
    return np.rint(resample(gt_volume(gt, array), box, order=0)).astype(int)


@pytest.fixture(scope="module")
def studies(small_cohort):
    """(row, ground truth, scanned study) for the first studies of the small cohort."""
    res = scan([small_cohort.path], workers=2)
    by_uid = {s.study_uid: s for s in res.studies}
    rows = small_cohort.labels[:N_STUDIES]
    return [(r, small_cohort.gt(r["patient_id"]), by_uid[r["study_uid"]]) for r in rows]


@pytest.fixture(scope="module")
def processed(studies):
    """Each study run through the default pipeline, keeping the intermediate crops."""
    pipe = default_pipeline()
    out = []
    for row, gt, st in studies:
        img = study_image(st)
        before_bias = None
        for step in pipe.steps:
            if isinstance(step, CorrectBias):
                before_bias = {k: v.copy() for k, v in img.crop.items()}
            img = step(img)
            if isinstance(step, CorrectBias):
                after_bias = {k: v.copy() for k, v in img.crop.items()}
        out.append((row, gt, img, before_bias, after_bias))
    return out


def test_pipeline_parameters_are_written_out_and_hashed():
    pipe = default_pipeline()
    params = pipe.params()
    names = [s["step"] for s in params["steps"]]
    assert names == ["LocateSpine", "CropToSpine", "ResampleAligned", "Denoise", "CorrectBias",
                     "NormaliseIntensity", "Smooth", "ProjectTo2D"]
    assert default_pipeline().hash() == pipe.hash()
    changed = Pipeline([replace(s, sigma_mm=1.2) if isinstance(s, Smooth) else s
                        for s in pipe.steps])
    assert changed.hash() != pipe.hash()
    json.dumps(params, default=list)   # serialisable as written to pipeline.json


def test_output_is_a_fixed_size_float_tensor(processed):
    shapes = {img.image.shape for _, _, img, _, _ in processed}
    assert shapes == {default_pipeline().output_shape}
    for _, _, img, _, _ in processed:
        assert img.image.dtype == np.float32 and np.isfinite(img.image).all()
        assert img.image.std() > 0.05   # not empty


def test_bias_correction_halves_marrow_variation_across_levels(processed):
    """Marrow is one tissue in every vertebra, so the spread of the per-level mean marrow
    intensity (coefficient of variation, T1 mid-sagittal slab) comes from the bias field and
    from what no bias correction removes (texture, partial volume, lesions' neighbours). The
    second part is measured by dividing the same crop by the known (ground-truth) bias field;
    the correction must remove at least half of the rest."""
    before, after, ideal = [], [], []
    for _, gt, img, pre, post in processed:
        box = img.crop_box("T1")
        marrow = on_box(gt, gt.tissue == Tissue.MARROW, box) > 0
        levels = on_box(gt, gt.vertebra, box)
        true_bias = resample(gt_volume(gt, gt.bias("T1")), box, order=1)
        unbiased = pre["T1"] / np.maximum(true_bias, 1e-3)
        means = {"pre": [], "post": [], "ideal": []}
        for lvl in np.unique(levels[marrow]):
            m = marrow & (levels == lvl)
            if m.sum() >= 80:
                for key, arr in (("pre", pre["T1"]), ("post", post["T1"]), ("ideal", unbiased)):
                    means[key].append(arr[m].mean())
        if len(means["pre"]) >= 4:
            for key, out in (("pre", before), ("post", after), ("ideal", ideal)):
                out.append(np.std(means[key]) / np.mean(means[key]))
    assert len(before) >= 5
    b, a, i = np.mean(before), np.mean(after), np.mean(ideal)
    assert b > i + 0.02, "the bias field should add visible variation"
    assert a - i <= 0.5 * (b - i), (b, a, i)


def _footprint_dice(gt, img) -> float:
    """Dice, in the mid-sagittal slab, between the 2-D image's footprint (its rows, and per
    row the columns from ``anterior_mm`` in front of the canal to ``posterior_mm`` behind)
    and the true spine within those rows: vertebral bone, discs, canal and the interspinous
    ligaments, as each row's interval from its most anterior to its most posterior voxel."""
    project: ProjectTo2D = default_pipeline().steps[-1]
    box = img.crop_box("T1")
    spine = (gt.vertebra > 0) | gt.canal | np.isin(gt.tissue, [
        Tissue.ANNULUS, Tissue.NUCLEUS, Tissue.NUCLEUS_DEGENERATED,
        Tissue.CORTEX])   # cortex outside the vertebrae: the interspinous ligaments
    truth = on_box(gt, spine, box).max(axis=0) > 0            # (rows, cols) of the box
    rows, cols = project.straight_coordinates(img)
    # Rows beyond the series' field of view hold no image: the crop is not judged there.
    ref = img.volumes["T1"]
    z = box.origin[2] - np.arange(truth.shape[0]) * box.spacing[1]
    z_idx = ref.index_to_patient(np.array([[0, 0, 0], [0, ref.data.shape[1] - 1, 0]], float))[:, 2]
    in_fov = (z <= z_idx.max()) & (z >= z_idx.min())
    footprint = np.zeros_like(truth)
    for r in range(footprint.shape[0]):
        lo, hi = int(np.floor(cols[r].min())), int(np.ceil(cols[r].max()))
        footprint[r, max(lo, 0):max(hi + 1, 0)] = True
    # The true spine's extent per row: its bounding interval (the spinous processes leave gaps).
    band = np.zeros_like(truth)
    for r in np.flatnonzero(truth.any(axis=1)):
        c = np.flatnonzero(truth[r])
        band[r, c.min():c.max() + 1] = True
    # Judged along the canal's extent in the field of view: the crop follows the canal, and
    # rows past the canal's end (the sacral tip) or beyond the field of view have no canal
    # to place it by; the tensor's fixed height runs on there regardless.
    judged = in_fov & (on_box(gt, gt.canal, box).max(axis=0) > 0).any(axis=1)
    footprint[~judged] = False
    band[~judged] = False
    inter = (footprint & band).sum()
    return 2.0 * inter / (footprint.sum() + band.sum())


def test_spine_crop_overlaps_the_true_spine(processed):
    dice = [_footprint_dice(gt, img) for _, gt, img, _, _ in processed]
    assert min(dice) >= 0.8, dice


def test_ground_truth_lesions_project_into_the_2d_image(processed):
    """A metastasis projects when most of its voxels fall inside the 2-D image: within its
    rows, within the per-row column band, and within the slab the STIR projection covers.
    The projected pixels must also be brighter than the image on the STIR projection."""
    project: ProjectTo2D = default_pipeline().steps[-1]
    total, projected, visible = 0, 0, 0
    for _, gt, img, _, _ in processed:
        for lesion in gt.meta["lesions"]:
            idx = np.argwhere(gt.lesions == lesion["id"])
            if not idx.size:   # painted over by a larger lesion in the same bone
                continue
            total += 1
            r, c, inside = project.image_coordinates(img, gt.grid.voxel_to_patient(idx))
            if inside.mean() >= 0.5:
                projected += 1
                ri, ci = r[inside].astype(int), c[inside].astype(int)
                if img.image[3][ri, ci].mean() > np.median(img.image[3]):
                    visible += 1
    assert total >= 10
    assert projected >= 0.95 * total, (projected, total)
    assert visible >= 0.9 * projected, (visible, projected)


def _copy_patients(cohort, rows, dest: Path) -> Path:
    for r in rows:
        shutil.copytree(cohort.patient_dir(r), dest / r["site"] / r["patient_id"])
    return dest


def test_cache_reuses_unchanged_studies_and_recomputes_changed_ones(small_cohort, tmp_path):
    data = _copy_patients(small_cohort, small_cohort.labels[:4], tmp_path / "data")
    cache = tmp_path / "cache"
    first = preprocess(data, cache, small_cohort.labels, workers=2)
    assert (first.computed, first.cached, first.failed) == (4, 0, [])
    again = preprocess(data, cache, small_cohort.labels, workers=2)
    assert (again.computed, again.cached) == (0, 4)
    # A changed file: only its study is recomputed.
    f = sorted((data / small_cohort.labels[0]["site"] / small_cohort.labels[0]["patient_id"]
                / "t1_sag").glob("*.dcm"))[0]
    ds = pydicom.dcmread(f)
    ds.WindowCenter = str(float(ds.WindowCenter) + 1)
    ds.save_as(f)
    third = preprocess(data, cache, small_cohort.labels, workers=2)
    assert (third.computed, third.cached) == (1, 3)
    # A changed parameter: everything is recomputed, into the new pipeline's folder.
    pipe = Pipeline([replace(s, sigma_mm=1.1) if isinstance(s, Smooth) else s
                     for s in default_pipeline().steps])
    fourth = preprocess(data, cache, small_cohort.labels, pipeline=pipe, workers=2)
    assert (fourth.computed, fourth.cached) == (4, 0)
    params = json.loads((cache / pipe.hash()[:16] / "pipeline.json").read_text())
    assert params["hash"] == pipe.hash()


def test_unchanged_inputs_reuse_the_last_index_without_reading_headers(small_cohort, tmp_path,
                                                                       monkeypatch):
    from spinemet.common.preprocess import runner

    data = _copy_patients(small_cohort, small_cohort.labels[:2], tmp_path / "data")
    cache = tmp_path / "cache"
    first = preprocess(data, cache, small_cohort.labels, workers=1)
    assert (first.computed, first.cached) == (2, 0)
    loads = []
    real_load = runner.FileMemo.load
    monkeypatch.setattr(runner.FileMemo, "load",
                        classmethod(lambda cls, c: loads.append(c) or real_load(c)))
    again = preprocess(data, cache, small_cohort.labels, workers=1)
    assert (again.computed, again.cached, again.studies) == (0, 2, 2)
    assert again.index == first.index and loads == []          # the fast path
    # Other labels, or a file touched: the inputs are scanned again (from the header memo).
    relabelled = [dict(r, label=(int(r["label"]) + 1) % 3) for r in small_cohort.labels]
    third = preprocess(data, cache, relabelled, workers=1)
    assert (third.computed, third.cached) == (0, 2) and len(loads) == 1
    f = next((data / small_cohort.labels[0]["site"]).rglob("*.dcm"))
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    fourth = preprocess(data, cache, relabelled, workers=1)
    assert (fourth.computed, fourth.cached) == (0, 2) and len(loads) == 2


def test_a_study_that_fails_to_decode_does_not_stop_the_run(small_cohort, tmp_path):
    rows = small_cohort.labels[:3]
    data = _copy_patients(small_cohort, rows, tmp_path / "data")
    bad = rows[1]
    for f in (data / bad["site"] / bad["patient_id"] / "stir_sag").glob("*.dcm"):
        ds = pydicom.dcmread(f)
        frame = bytearray(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1)
                          .__next__())
        frame[20:] = bytes(len(frame) - 20)          # a valid container, a corrupt codestream
        ds.PixelData = pydicom.encaps.encapsulate([bytes(frame)])
        ds.save_as(f)
    summary = preprocess(data, tmp_path / "cache", small_cohort.labels, workers=2)
    assert summary.computed == 2
    assert [uid for uid, _ in summary.failed] == [bad["study_uid"]]
    index = json.loads(summary.index.read_text())
    assert {e["study_uid"] for e in index["studies"]} == {r["study_uid"] for r in rows} - \
        {bad["study_uid"]}


def test_split_is_by_patient_stratified_and_computable_by_each_site():
    from spinemet.common.cohort.spec import CohortSpec, plan_cohort
    from spinemet.common.dataset import split_patients

    rows = [{"patient_id": p.patient_id, "label": p.label, "site": p.site}
            for p in plan_cohort(CohortSpec())]
    split = split_patients(rows, seed=0)
    assert set(split) == {r["patient_id"] for r in rows}
    test = [r for r in rows if split[r["patient_id"]] == "test"]
    assert abs(len(test) - 0.2 * len(rows)) <= 5
    for label in range(3):      # stratified: each class keeps its share in the test set
        share = sum(r["label"] == label for r in test) / len(test)
        overall = sum(r["label"] == label for r in rows) / len(rows)
        assert abs(share - overall) < 0.02
    # A site alone computes the same split for its patients as the pooled call.
    site = rows[0]["site"]
    alone = split_patients([r for r in rows if r["site"] == site], seed=0)
    assert alone == {p: s for p, s in split.items() if p in alone}
    assert split_patients(rows, seed=1) != split


def test_dataset_views_share_one_split_and_never_mix_sides(small_cohort, tmp_path):
    from spinemet.common.dataset import SpineDataset

    data = _copy_patients(small_cohort, small_cohort.labels[:12], tmp_path / "data")
    preprocess(data, tmp_path / "cache", small_cohort.labels, workers=2)
    train = SpineDataset(tmp_path / "cache", split="train")
    test = SpineDataset(tmp_path / "cache", split="test")
    assert not set(train.patient_ids) & set(test.patient_ids)
    assert len(train) + len(test) == 12
    image, label = train[0]
    assert tuple(image.shape) == default_pipeline().output_shape and label in (0, 1, 2)
    per_site = [SpineDataset(tmp_path / "cache", site=s, split="train") for s in train.sites]
    assert sorted(p for d in per_site for p in d.patient_ids) == sorted(train.patient_ids)
