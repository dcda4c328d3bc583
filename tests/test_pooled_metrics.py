"""Metrics pooled from the sites' counts equal the metrics of the pooled patients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spinemet.common.metrics import classification_metrics
from spinemet.common.models import probabilities
from spinemet.common.pooled_metrics import add_summaries, evaluation_summary, metrics_from_summary


def _sites(seed=0, sizes=(40, 25, 60)):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in sizes:
        y = torch.randint(0, 3, (n,), generator=g)
        logits = torch.randn(n, 3, generator=g) * 2
        logits[torch.arange(n), y] += 1.5          # better than chance, not perfect
        out.append((logits, y))
    return out


@pytest.mark.parametrize("temperature", [1.0, 1.7])
def test_pooled_summaries_reproduce_the_centralized_metrics(temperature):
    sites = _sites()
    total = add_summaries([evaluation_summary(l, y, "test-", temperature=temperature)
                           for l, y in sites], "test-")
    pooled = metrics_from_summary(total, bootstrap=500)
    logits = torch.cat([l for l, _ in sites])
    y = torch.cat([y for _, y in sites])
    ref = classification_metrics(y.numpy(), probabilities(logits, temperature).numpy(),
                                 bootstrap=500)
    for key in ("n_test", "accuracy", "macro_f1", "confusion_matrix", "per_class"):
        assert pooled[key] == ref[key], key
    assert math.isclose(pooled["ece"], ref["ece"], abs_tol=1e-9)
    assert math.isclose(pooled["brier"], ref["brier"], rel_tol=1e-9)
    assert abs(pooled["auc_macro"] - ref["auc_macro"]) < 0.01
    # the bootstrap resamples the same correct/incorrect counts (in another order)
    lo, hi = pooled["accuracy_ci95"]
    assert lo < pooled["accuracy"] < hi
    assert pooled["accuracy_ci95"] == pytest.approx(ref["accuracy_ci95"], abs=0.02)
    nll = torch.nn.functional.cross_entropy(logits / temperature, y).item()
    assert math.isclose(pooled["loss"], nll, rel_tol=1e-6)


def test_nll_by_temperature_finds_the_pooled_optimum():
    sites = _sites(1)
    grid = [0.5, 1.0, 2.0, 4.0]
    total = add_summaries([evaluation_summary(l, y, "val-", grid) for l, y in sites], "val-")
    logits = torch.cat([l for l, _ in sites])
    y = torch.cat([y for _, y in sites])
    direct = [torch.nn.functional.cross_entropy(logits / t, y, reduction="sum").item()
              for t in grid]
    assert np.allclose(total["nll-by-t"], direct, rtol=1e-6)


def test_a_site_without_patients_adds_nothing():
    empty = evaluation_summary(torch.zeros((0, 3)), torch.zeros(0, dtype=torch.long), "val-",
                               [1.0, 2.0])
    assert empty["val-n"] == 0 and sum(empty["val-confusion"]) == 0
    one = _sites(2, (30,))[0]
    with_empty = add_summaries([empty, evaluation_summary(*one, "val-", [1.0, 2.0])], "val-")
    alone = add_summaries([evaluation_summary(*one, "val-", [1.0, 2.0])], "val-")
    assert with_empty == alone
    with pytest.raises(ValueError, match="no evaluated example"):
        metrics_from_summary(add_summaries([empty], "val-"))
