"""The shared training protocol, calibration, metrics and the model file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from spinemet.common.metrics import (classification_metrics, expected_calibration_error,
                                     metrics_from_confusion)
from spinemet.common.models import build_model
from spinemet.common.reporting import paper_inconsistencies
from spinemet.common.training.artifacts import ModelMismatch, load_model, save_model
from spinemet.common.training.augment import Augment
from spinemet.common.training.calibration import fit_temperature
from spinemet.common.training.fit import fit
from spinemet.common.training.loop import Tensors
from spinemet.common.training.protocol import (TrainConfig, class_weights, lr_at,
                                               validation_split)
from spinemet.common.dataset import split_patients

SHAPE = (5, 180, 52)


def test_learning_rate_follows_the_global_epoch():
    cfg = TrainConfig(epochs=20, lr=0.1, warmup_epochs=3, final_lr_fraction=0.02)
    rates = [lr_at(cfg, e) for e in range(20)]
    assert rates[0] < rates[1] < rates[2] < rates[3] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(rates[3:], rates[4:]))        # cosine decay
    assert rates[-1] == pytest.approx(0.002 + 0.5 * 0.098 * (1 + np.cos(np.pi * 16 / 17)))
    assert lr_at(cfg, 40) == pytest.approx(0.002)                     # past the end: the floor


def test_class_weights_come_from_global_counts():
    w = class_weights([100, 50, 50])
    assert w.tolist() == pytest.approx([200 / 300, 200 / 150, 200 / 150])
    assert class_weights([10, 0, 10]).tolist() == pytest.approx([20 / 30, 0.0, 20 / 30])


def _rows(n_per_site=40, sites=("a", "b", "c")):
    return [{"patient_id": f"{s}{i:03d}", "label": i % 3, "site": s}
            for s in sites for i in range(n_per_site)]


def test_validation_slice_is_taken_from_training_patients_per_site():
    rows = _rows()
    split = split_patients(rows, 0.2, seed=0)
    train = [r for r in rows if split[r["patient_id"]] == "train"]
    side = validation_split(train, 0.15, seed=0)
    assert set(side) == {r["patient_id"] for r in train}          # never a test patient
    val = [r for r in train if side[r["patient_id"]] == "val"]
    assert 0.1 * len(train) <= len(val) <= 0.2 * len(train)
    counts = np.bincount([r["label"] for r in val], minlength=3)
    assert counts.max() - counts.min() <= 2, counts                    # stratified per site
    # a site computes its own slice and gets the same answer as the pool
    site_a = validation_split([r for r in train if r["site"] == "a"], 0.15, seed=0)
    assert site_a == {p: s for p, s in side.items() if p.startswith("a")}
    assert validation_split(train, 0.15, seed=0) == side                 # deterministic
    assert validation_split(train, 0.15, seed=1) != side


def test_augmentation_keeps_shape_and_anatomy_order():
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(8, *SHAPE)
    x[:, :, 20:40, :] = 1.0          # a band near the head end
    out = Augment()(x, g)
    assert out.shape == x.shape
    # never flipped head to feet: the band stays in the upper part of every image
    profile = out.mean(dim=(1, 3))
    assert (profile[:, :90].sum(1) > 5 * profile[:, 90:].sum(1)).all()
    # no geometric or intensity change when every range is zero
    ident = Augment(shift_rows=0, shift_cols=0, rotate_deg=0, scale=0, gain=0, gamma=0,
                    noise=0)(x, torch.Generator().manual_seed(1))
    assert torch.allclose(ident, x, atol=1e-5)
    # shifts along the spine do move the band, by at most shift_rows pixels
    moved = Augment(shift_rows=10, shift_cols=0, rotate_deg=0, scale=0, gain=0, gamma=0,
                    noise=0)(x, torch.Generator().manual_seed(2))
    centre = (moved[:, 0].mean(2) * torch.arange(180)).sum(1) / moved[:, 0].mean(2).sum(1)
    assert (centre - 29.5).abs().max() <= 10.5 and (centre - 29.5).abs().max() > 1


def test_temperature_scaling_repairs_overconfidence_without_changing_predictions():
    rng = np.random.default_rng(0)
    y = torch.tensor(rng.integers(0, 3, 600))
    # logits pointing at the right class 70 % of the time, scaled to be overconfident
    noisy = torch.where(torch.tensor(rng.random(600) < 0.7), y, torch.tensor(rng.integers(0, 3, 600)))
    logits = torch.nn.functional.one_hot(noisy, 3).float() * 8.0
    t = fit_temperature(logits, y)
    assert t > 2.0
    nll = lambda T: float(torch.nn.functional.cross_entropy(logits / T, y))
    assert nll(t) < nll(1.0)
    p1 = torch.softmax(logits, 1).numpy()
    pt = torch.softmax(logits / t, 1).numpy()
    assert (p1.argmax(1) == pt.argmax(1)).all()
    assert expected_calibration_error(y.numpy(), pt) < expected_calibration_error(y.numpy(), p1)


def test_metrics_match_hand_counts():
    y = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    pred = np.array([0, 0, 1, 1, 1, 2, 2, 2, 2, 0])
    proba = np.full((10, 3), 0.1)
    proba[np.arange(10), pred] = 0.8
    m = classification_metrics(y, proba, bootstrap=500)
    assert m["accuracy"] == pytest.approx(0.7)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 2, 1], [1, 0, 3]]     # rows = true
    assert m["per_class"]["normal"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["apparent"]["recall"] == pytest.approx(0.75)
    assert m["per_class"]["mild"]["support"] == 3
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["brier"] == pytest.approx(np.mean(((proba - np.eye(3)[y]) ** 2).sum(1)))
    assert m["ece"] == pytest.approx(abs(0.7 - 0.8))       # one confidence bin
    lo, hi = m["accuracy_ci95"]
    assert 0.3 <= lo < 0.7 < hi <= 1.0
    assert 0.5 < m["auc_macro"] <= 1.0
    pooled = metrics_from_confusion(m["confusion_matrix"])
    assert pooled["accuracy"] == pytest.approx(0.7)
    assert pooled["per_class"] == m["per_class"]


def test_paper_inconsistencies_are_computed_from_its_numbers():
    notes = " ".join(paper_inconsistencies())
    assert "normal" in notes and "apparent" in notes and "class mild" not in notes
    assert "96.54%" in notes and "188" in notes and "189" in notes
    assert "0.9609" in notes     # 2PR/(P+R) for class 0


def _toy(n, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = torch.rand(n, *SHAPE, generator=g) * 0.2
    x[:, 3] += y[:, None, None] * 0.4        # a global class signal
    return Tensors(x, y, [f"p{i}" for i in range(n)], ["a"] * n)


def test_fit_is_deterministic_for_a_seed_and_selects_on_validation():
    cfg = TrainConfig(model="paper", epochs=3, batch_size=8, lr=0.05, seed=3)
    train, val = _toy(24, 0), _toy(9, 1)
    a, b = fit(cfg, train, val), fit(cfg, train, val)
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k])
    c = fit(cfg.replace(seed=4), train, val)
    assert not torch.equal(c.model.c1.weight, a.model.c1.weight)
    losses = [h["val_loss"] for h in a.history]
    assert a.best_epoch == int(np.argmin(losses)) + 1
    assert len(a.history) == 3 and a.temperature > 0


def test_model_file_round_trip_and_refusals(tmp_path):
    m = build_model("paper", SHAPE)
    path = save_model(tmp_path / "model.pt", m, {"model": "paper", "input_shape": list(SHAPE),
                                                 "temperature": 1.5,
                                                 "preprocessing": {"hash": "abc" * 20}})
    blob = torch.load(path, weights_only=True)        # no pickled code needed
    assert blob["meta"]["class_names"] == ["normal", "mild", "apparent"]
    loaded, meta = load_model(path, "abc" * 20, SHAPE)
    for k, v in m.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])
    with pytest.raises(ModelMismatch, match="preprocessing hash"):
        load_model(path, "def" * 20, SHAPE)
    with pytest.raises(ModelMismatch, match="input shape"):
        load_model(path, "abc" * 20, (3, 180, 52))
    blob["meta"]["spinemet_version"] = "0.0.1"
    torch.save(blob, tmp_path / "old.pt")
    with pytest.raises(ModelMismatch, match="trained with spinemet 0.0.1"):
        load_model(tmp_path / "old.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ModelMismatch, match="not a SpineMet model file"):
        load_model(tmp_path / "junk.pt")
