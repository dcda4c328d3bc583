"""Grad-CAM maps of ``spinemet predict --saliency`` against the cohort's ground truth.

A ``paper`` model is trained on the training patients of the 240-patient test cohort
(the protocol's defaults, fewer epochs); for the test patients with metastases that it
calls mild or apparent, the map's peak must fall on a metastasis (within 5 mm of a lesion
voxel's projection) for most of them.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from spinemet.common.predict import Predictor, cam_peak
from spinemet.common.preprocess.pipeline import default_pipeline
from spinemet.common.training.protocol import TrainConfig
from spinemet.simulations.centralized import train_centralized

pytestmark = pytest.mark.shortcut    # shares the 240-patient cohort with the shortcut checks


def lesion_map(gt, img) -> np.ndarray:
    """The metastases' pixels in the 2-D image (projected over the STIR width)."""
    project = default_pipeline().steps[-1]
    out = np.zeros(img.image.shape[1:], bool)
    idx = np.argwhere(gt.lesions > 0)
    if idx.size:
        r, c, inside = project.image_coordinates(img, gt.grid.voxel_to_patient(idx))
        out[r[inside].astype(int), c[inside].astype(int)] = True
    return out


@pytest.fixture(scope="module")
def trained(large_cohort, tmp_path_factory):
    root = tmp_path_factory.mktemp("saliency")
    cfg = TrainConfig.for_model("paper")
    res = train_centralized(large_cohort.path, root / "cache", root / "run", cfg,
                            large_cohort.labels, workers=2)
    return res, root / "run" / "model.pt"


def test_gradcam_peaks_fall_on_metastases(trained, large_cohort):
    res, model_path = trained
    import json

    test_ids = set(json.loads((model_path.parent / "split.json").read_text())["test"])
    rows = [r for r in large_cohort.labels if r["patient_id"] in test_ids and int(r["label"]) > 0]
    predictor = Predictor(model_path)
    hits, judged = 0, 0
    for row in rows:
        (pred,) = predictor.predict_study_dirs([large_cohort.patient_dir(row)], keep=True)
        if pred.label in (None, 0):
            continue
        gt = large_cohort.gt(row["patient_id"])
        near = ndimage.binary_dilation(lesion_map(gt, pred.image), iterations=3)   # ~5 mm
        if not near.any():
            continue
        judged += 1
        hits += bool(near[cam_peak(pred.cam)])
    assert judged >= 10, judged
    assert hits > 0.5 * judged, (hits, judged, res.metrics["accuracy"])
