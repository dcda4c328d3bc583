"""``spinemet train`` and ``spinemet predict`` end to end on the small test cohort."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from spinemet.common.cli import app
from spinemet.common.dataset import split_patients
from spinemet.common.preprocess.pipeline import default_pipeline
from spinemet.common.training.protocol import TrainConfig, lr_at

EPOCHS = 2


@pytest.fixture(scope="module")
def run(small_cohort, tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    out = root / "run"
    res = CliRunner().invoke(app, ["train", "--data", str(small_cohort.path), "--out", str(out),
                                   "--cache", str(root / "cache"), "--epochs", str(EPOCHS),
                                   "--workers", "2"])
    assert res.exit_code == 0, res.output
    return out, root


def test_run_folder_holds_every_artifact(run):
    out, _ = run
    for name in ("model.pt", "metrics.json", "report.md", "confusion_matrix.png",
                 "learning_curve.png", "history.csv", "split.json"):
        assert (out / name).stat().st_size > 0, name


def test_split_is_the_shared_patient_split(run, small_cohort):
    out, _ = run
    split = json.loads((out / "split.json").read_text())
    train, test, val = set(split["train"]), set(split["test"]), set(split["validation"])
    assert not train & test and val <= train
    assert train | test == {r["patient_id"] for r in small_cohort.labels}
    expected = split_patients(small_cohort.labels, 0.2, seed=0)
    assert test == {p for p, s in expected.items() if s == "test"}


def test_metrics_are_consistent_with_the_confusion_matrix(run):
    out, _ = run
    m = json.loads((out / "metrics.json").read_text())
    cm = np.array(m["confusion_matrix"])
    assert cm.shape == (3, 3) and cm.sum() == m["n_test"]
    assert m["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    for i, name in enumerate(("normal", "mild", "apparent")):
        pc = m["per_class"][name]
        assert pc["support"] == cm[i].sum()
        if cm[:, i].sum():
            assert pc["precision"] == pytest.approx(cm[i, i] / cm[:, i].sum())
    lo, hi = m["accuracy_ci95"]
    assert lo <= m["accuracy"] <= hi
    assert 0 <= m["ece"] <= 1 and 0 <= m["brier"] <= 2 and m["temperature"] > 0
    for key in ("macro_f1", "auc_macro", "n_test", "per_class"):
        assert key in m


def test_history_follows_the_schedule(run):
    out, _ = run
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == list(range(1, EPOCHS + 1))
    cfg = TrainConfig.for_model("paper", epochs=EPOCHS)
    assert [float(r["lr"]) for r in rows] == pytest.approx([lr_at(cfg, e) for e in range(EPOCHS)])
    assert all(np.isfinite(float(r["val_loss"])) for r in rows)


def test_model_file_carries_what_prediction_checks(run):
    out, _ = run
    blob = torch.load(out / "model.pt", weights_only=True)
    meta = blob["meta"]
    assert meta["model"] == "paper" and meta["input_shape"] == [5, 180, 52]
    assert meta["preprocessing"]["hash"] == default_pipeline().hash()
    assert meta["config"]["epochs"] == EPOCHS and 1 <= meta["best_epoch"] <= EPOCHS
    assert meta["class_names"] == ["normal", "mild", "apparent"]


def test_report_puts_table1_beside_the_paper(run):
    text = (run[0] / "report.md").read_text()
    assert "## Table 1" in text and "0.9721" in text and "96.45 %" in text
    assert "| true \\ predicted | normal | mild | apparent |" in text
    assert "confusion_matrix.png" in text and "learning_curve.png" in text
    assert "0.9609" in text    # the paper's class-0 F1 recomputed from its P and R


def test_an_existing_run_is_not_overwritten(run, small_cohort):
    out, root = run
    before = (out / "model.pt").read_bytes()
    res = CliRunner().invoke(app, ["train", "--data", str(small_cohort.path), "--out", str(out),
                                   "--cache", str(root / "cache"), "--epochs", "1"])
    assert res.exit_code == 2 and "--overwrite" in res.output
    assert (out / "model.pt").read_bytes() == before


def test_predict_prints_classes_and_keeps_going_past_a_bad_study(run, small_cohort, tmp_path):
    out, _ = run
    rows = small_cohort.labels[:2]
    bad = tmp_path / "bad-study"
    bad.mkdir()
    (bad / "0001.dcm").write_bytes(b"\0" * 300)
    args = ["predict", "--model", str(out / "model.pt"), "--json",
            str(small_cohort.patient_dir(rows[0])), str(bad),
            str(small_cohort.patient_dir(rows[1])), "--saliency", str(tmp_path / "cam")]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1                         # one study could not be read
    preds = json.loads(res.stdout)
    assert [p["study_uid"] for p in preds if p["label"] is not None] == \
        [r["study_uid"] for r in rows]
    for p in preds:
        if p["label"] is None:
            assert p["source"] == str(bad) and "no readable DICOM" in p["error"]
            continue
        assert sum(p["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert p["label_name"] == max(p["probabilities"], key=p["probabilities"].get)
        cam = np.load(p["saliency"].replace(".png", ".npy"))
        assert cam.shape == (180, 52) and cam.min() >= 0 and cam.max() <= 1


def test_predict_refuses_a_model_from_another_pipeline(run, small_cohort, tmp_path):
    out, _ = run
    blob = torch.load(out / "model.pt", weights_only=True)
    blob["meta"]["preprocessing"]["hash"] = "0" * 64
    torch.save(blob, tmp_path / "other.pt")
    res = CliRunner().invoke(app, ["predict", "--model", str(tmp_path / "other.pt"),
                                   str(small_cohort.patient_dir(small_cohort.labels[0]))])
    assert res.exit_code == 2
    assert "preprocessing hash" in res.output and "retrain" in res.output
