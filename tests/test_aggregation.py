"""The coordinator's aggregation maths through Flower's strategies: FedAvg is the
example-weighted mean, FedAvgM adds server momentum (Hsu et al. 2019) and carries it
through a checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from spinemet.server.aggregation import Aggregator, Screened


@pytest.fixture(autouse=True)
def _as_in_a_serverapp():
    """Flower's Message needs the run identity a ServerApp process has."""
    from flwr.supercore.task_identity import TaskIdentity  # noqa: PLC0415
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0


def _reply(node: int, weights: dict[str, np.ndarray], n: int) -> Screened:
    content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in weights.items()}),
                          "metrics": MetricRecord({"num-examples": n, "loss-sum": 1.0})})
    return Screened(node, content, n, str(node))


def _round(agg: Aggregator, rnd: int, current: dict[str, torch.Tensor], targets, counts):
    replies = [_reply(i + 1, {k: np.full(v.shape, t, np.float32) for k, v in current.items()},
                      n) for i, (t, n) in enumerate(zip(targets, counts))]
    new, metrics = agg.aggregate(rnd, current, replies)
    return new, metrics


def test_fedavg_is_the_example_weighted_mean_and_counts_are_summed():
    current = {"w": torch.zeros(2, 3), "b": torch.zeros(3)}
    new, metrics = _round(Aggregator("fedavg"), 1, current, [1.0, 4.0], [30, 10])
    assert torch.allclose(new["w"], torch.full((2, 3), (30 * 1 + 10 * 4) / 40))
    assert metrics["num-examples"] == 40 and metrics["loss-sum"] == 2.0   # summed


def test_fedavgm_applies_server_momentum_and_resumes_it():
    beta, lr = 0.9, 1.0
    agg = Aggregator("fedavgm", server_lr=0.0, server_momentum=beta)   # 0: Flower's 1.0
    w0 = {"w": torch.zeros(4)}
    # round 1: the average moves 0 -> 1; pseudo-gradient -1, momentum -1: w = 1
    w1, _ = _round(agg, 1, w0, [1.0, 1.0], [5, 5])
    assert torch.allclose(w1["w"], torch.ones(4))
    # round 2: the average moves 1 -> 2; momentum 0.9 * -1 + -1 = -1.9: w = 1 + 1.9
    state = agg.state()
    w2, _ = _round(agg, 2, w1, [2.0, 2.0], [5, 5])
    assert torch.allclose(w2["w"], torch.full((4,), 1 + lr * (beta + 1)))
    # plain FedAvg would stop at the average
    w2_avg, _ = _round(Aggregator("fedavg"), 2, w1, [2.0, 2.0], [5, 5])
    assert torch.allclose(w2_avg["w"], torch.full((4,), 2.0))
    # a fresh aggregator loaded from the round-1 state makes the same round-2 step
    again = Aggregator("fedavgm", server_momentum=beta)
    again.load_state(state)
    w2b, _ = _round(again, 2, w1, [2.0, 2.0], [5, 5])
    assert torch.equal(w2b["w"], w2["w"])
    with pytest.raises(ValueError, match="differs"):
        Aggregator("fedavg").load_state(state)
