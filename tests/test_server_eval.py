"""The coordinator's own held-out scoring: each round's score of the weights the sites
train from runs in a background thread during the exchange; it must give the number the
synchronous scoring gives, for the right weights, without moving the run's random stream."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fedgrid import InProcessGrid
from test_federation_loop import BIG, nodes, no_wait, settings
from test_simulation import _partition

from spinemet.common.models import build_model
from spinemet.common.preprocess.pipeline import default_pipeline
from spinemet.server.app import run_federation
from spinemet.server.checkpoint import load_checkpoint
from spinemet.server.server_eval import HeldOutScorer, evaluate_on, load_held_out


@pytest.fixture(scope="module")
def held_out(small_cache):
    pipeline = default_pipeline()
    return load_held_out(str(small_cache), pipeline.hash()), tuple(pipeline.output_shape)


def _weights(seed: int, shape) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.detach().clone() for k, v in build_model("paper", shape).state_dict().items()}


def _answering(label: int, shape) -> dict[str, torch.Tensor]:
    """Weights whose output layer always answers ``label``."""
    weights = _weights(0, shape)
    weights["out.bias"] = torch.full_like(weights["out.bias"], -50.0)
    weights["out.bias"][label] = 50.0
    return weights


def test_background_score_equals_the_synchronous_one(held_out):
    data, shape = held_out
    # unequal class shares (all of class 0, half of class 1, none of class 2), so
    # constant answers score differently
    y = data.y.numpy()
    data = data.subset((y == 0) | ((y == 1) & (np.cumsum(y == 1) % 2 == 0)))
    assert len(data) >= 10
    scorer = HeldOutScorer(data, "paper", shape)
    try:
        scores = []
        for label in (0, 1, 2):
            weights = _answering(label, shape)
            expected = evaluate_on(data, "paper", shape, weights)["accuracy"]
            scores.append(scorer.submit(weights).result())
            assert scores[-1] == expected
            # a constant answer scores the share of its class
            assert scores[-1] == pytest.approx(float((data.y == label).float().mean()))
        assert len(set(scores)) > 1        # the weights, not a cached result, decide
    finally:
        scorer.close()


def test_scoring_does_not_move_the_random_stream(held_out):
    data, shape = held_out
    weights = _weights(0, shape)
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    scorer = HeldOutScorer(data, "paper", shape)
    scorer.submit(weights).result()
    scorer.close()
    assert torch.equal(torch.rand(4), expected)


def test_each_round_scores_the_weights_it_sent(small_cache, tmp_path, monkeypatch):
    """rounds.jsonl's server_test_accuracy of round r is the held-out accuracy of the
    weights round r sent to the sites (the model of round r - 1), scored in the
    background."""
    scored = []
    submit = HeldOutScorer.submit

    def recording(self, weights):
        scored.append({k: v.clone() for k, v in weights.items()})
        return submit(self, weights)
    monkeypatch.setattr(HeldOutScorer, "submit", recording)
    out = tmp_path / "run"
    grid = InProcessGrid(nodes(small_cache))
    run_federation(grid, settings(out, num_rounds=3, test_cache=str(small_cache)),
                   **no_wait())
    rows = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r.get("round")]
    assert [r["round"] for r in rows] == [1, 2, 3]
    pipeline = default_pipeline()
    data = load_held_out(str(small_cache), pipeline.hash())
    shape = tuple(pipeline.output_shape)
    sent = {}
    for m in grid.sent:
        if m.metadata.message_type == "train":
            arrays = {k: torch.from_numpy(a.numpy().copy())
                      for k, a in m.content["arrays"].items() if not k.startswith("momentum/")}
            sent.setdefault(int(m.metadata.group_id), arrays)
    assert sorted(sent) == [1, 2, 3]
    scores = [evaluate_on(data, "paper", shape, sent[r])["accuracy"] for r in (1, 2, 3)]
    assert [r["server_test_accuracy"] for r in rows] == scores
    # each round's starting weights, then the final evaluation's (round 3's model)
    assert len(scored) == 4
    final = load_checkpoint(out / "checkpoints" / "round-0003.pt")["weights"]
    assert all(torch.equal(scored[3][k], final[k]) for k in final)
    # these sites hold test patients: the selected model is scored on them too
    assert "calibrated" in {m.metadata.group_id for m in grid.sent}
    for r, weights in zip((1, 2, 3), scored):
        assert set(weights) == set(sent[r])
        assert all(torch.equal(weights[k], sent[r][k]) for k in weights)
    # the rounds trained: the model sent in round 3 is not round 1's
    assert any(not torch.equal(sent[1][k], sent[3][k]) for k in sent[1])


def test_without_site_test_patients_the_coordinator_scores_the_model_once(small_cache,
                                                                          tmp_path):
    """Virtual hospitals (simulation) hold no test patients and say so at hello: the
    selected model is not sent to them again, and the held-out set is scored once."""
    path, part, _ = _partition(small_cache, tmp_path)
    hospitals = {BIG + 1 + i: {"site": name, "cache-path": str(small_cache),
                               "partition-file": str(path)}
                 for i, name in enumerate(sorted(part))}
    out = tmp_path / "run"
    grid = InProcessGrid(hospitals)
    run_federation(grid, settings(out, num_rounds=2, test_cache=str(small_cache),
                                  test_split="test"), **no_wait())
    groups = [m.metadata.group_id for m in grid.sent]
    assert groups.count("final") == 3 and "calibrated" not in groups
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_source"] == "coordinator"
    pipeline = default_pipeline()
    test = load_held_out(str(small_cache), pipeline.hash(), "test")
    assert metrics["n_test"] == len(test) > 0
    # the coordinator's scoring of the selected model, the same numbers as the headline
    server = metrics["server_test"]
    assert {"accuracy", "accuracy_ci95", "confusion_matrix", "macro_f1"} <= set(server)
    assert all(metrics[k] == v for k, v in server.items())
