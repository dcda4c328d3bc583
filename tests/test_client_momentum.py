"""Carried client momentum (``client-momentum = carry``): the sites' SGD momentum buffers
travel with the weights, the coordinator averages them with Flower's FedAvg, and a site
starts its optimiser from the average instead of from zero."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fedgrid import InProcessGrid
from test_aggregation import _reply
from test_federation_loop import BIG, SITES, no_wait, nodes, settings

from spinemet.client.local import MomentumMismatch, load_momentum, train_round
from spinemet.client.site_data import load_site
from spinemet.common.federation import (E_BAD_REQUEST, MOMENTUM_PREFIX, SiteRefusal,
                                        join_momentum, split_momentum)
from spinemet.common.models import build_model
from spinemet.common.training.artifacts import load_model
from spinemet.common.training.loop import make_optimizer
from spinemet.server.aggregation import Aggregator
from spinemet.server.app import run_federation
from spinemet.server.checkpoint import latest_checkpoint, load_checkpoint
from spinemet.server.rounds import FederationError


@pytest.fixture(scope="module")
def site(small_cache):
    config = settings("/unused").train_config()
    data = load_site({"site": SITES[0], "cache-path": str(small_cache),
                      "cache-site": SITES[0]}, config)
    torch.manual_seed(0)
    model = build_model(config.model, data.input_shape)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    zeros = {k: torch.zeros_like(p) for k, p in model.named_parameters()}
    return data, config, state, zeros


def _train(site, momentum):
    data, config, state, _ = site
    return train_round(data, state, config, 1, 1, data.fit.class_counts(), 7,
                       momentum=momentum)


def test_zero_buffers_train_exactly_like_a_fresh_optimiser(site):
    fresh, fresh_metrics, none = _train(site, None)
    carried, metrics, buffers = _train(site, site[3])
    assert none is None
    assert all(torch.equal(fresh[k], carried[k]) for k in fresh)
    assert metrics["train-loss-sum"] == fresh_metrics["train-loss-sum"]
    # the returned buffers are the optimiser's: one per parameter, not zero after training
    assert set(buffers) == set(site[3])
    assert all(buffers[k].shape == site[3][k].shape for k in buffers)
    assert sum(float(b.abs().sum()) for b in buffers.values()) > 0


def test_carried_buffers_change_the_local_steps(site):
    _, _, buffers = _train(site, site[3])
    fresh, _, _ = _train(site, None)
    carried, _, _ = _train(site, buffers)
    moved = max(float((carried[k] - fresh[k]).abs().max()) for k in fresh)
    assert moved > 1e-4


def test_buffers_that_do_not_fit_the_model_are_refused(site):
    data, config, _, zeros = site
    model = build_model(config.model, data.input_shape)
    optimizer = make_optimizer(model, config)
    with pytest.raises(MomentumMismatch, match="parameters"):
        load_momentum(model, optimizer, {k: v for k, v in list(zeros.items())[1:]})
    first = next(iter(zeros))
    with pytest.raises(MomentumMismatch, match="shape"):
        load_momentum(model, optimizer, {**zeros, first: torch.zeros(2, 2)})


def test_a_site_answers_bad_buffers_with_a_fixed_error(small_cache):
    from spinemet.client import handlers
    from spinemet.server.rounds import Coordinator

    grid = InProcessGrid(nodes(small_cache))
    coordinator = Coordinator(grid, settings("/unused"))
    state = coordinator.initial_state()
    first = next(iter(state.momentum))
    arrays = join_momentum({k: v.numpy() for k, v in state.weights.items()},
                           {**{k: v.numpy() for k, v in state.momentum.items()},
                            first: np.zeros((2, 2), np.float32)})
    cfg = {**coordinator._base_config(), "server-round": 1, "local-epochs": 1,
           "class-counts": [10, 10, 10]}
    node = nodes(small_cache)[BIG + 101]
    with pytest.raises(SiteRefusal) as refused:
        handlers.train(node, cfg, arrays)
    assert refused.value.code == E_BAD_REQUEST and "momentum" in refused.value.reason


def test_momentum_is_a_plain_weighted_mean_whatever_the_strategy():
    from flwr.supercore.task_identity import TaskIdentity
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
    current = {"w": torch.zeros(3)}
    momentum = {"w": torch.zeros(3)}
    for name in ("fedavg", "fedadam"):
        agg = Aggregator(name)
        replies = [_reply(i + 1, join_momentum({"w": np.full(3, w, np.float32)},
                                               {"w": np.full(3, m, np.float32)}), n)
                   for i, (w, m, n) in enumerate([(1.0, 2.0, 30), (4.0, 6.0, 10)])]
        new, _ = agg.aggregate(1, current, replies)
        averaged = agg.average_momentum(1, momentum, replies)
        assert set(new) == {"w"} and set(averaged) == {"w"}
        assert torch.allclose(averaged["w"], torch.full((3,), (30 * 2 + 10 * 6) / 40))
        if name == "fedavg":
            assert torch.allclose(new["w"], torch.full((3,), (30 * 1 + 10 * 4) / 40))
        else:   # FedAdam's server step on the weights, untouched by the buffers
            assert not torch.allclose(new["w"], torch.full((3,), 1.75))


def _buffers(message) -> dict[str, np.ndarray]:
    arrays = {k: a.numpy() for k, a in message.content["arrays"].items()}
    return split_momentum(arrays)[1]


@pytest.fixture(scope="module")
def carried(small_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("momentum") / "run"
    grid = InProcessGrid(nodes(small_cache))
    run_federation(grid, settings(out), **no_wait())
    return out, grid


def test_the_coordinator_averages_the_buffers_and_sends_them_on(carried):
    out, grid = carried
    sent = [m for m in grid.sent if m.metadata.message_type == "train"]
    by_round = {g: [m for m in sent if m.metadata.group_id == g] for g in ("1", "2")}
    assert len(by_round["1"]) == len(by_round["2"]) == 3
    first = _buffers(by_round["1"][0])
    assert first and all(not v.any() for v in first.values())     # round 1: zeros
    replies = {g: [r for r in grid.replies if r.metadata.message_type == "train"
                   and r.metadata.group_id == g] for g in ("1", "2")}

    def mean(rs):
        n = np.array([float(r.content["metrics"]["num-examples"]) for r in rs])
        return {k: sum(w * _buffers(r)[k] for w, r in zip(n / n.sum(), rs)) for k in first}
    expected = mean(replies["1"])
    second = _buffers(by_round["2"][0])
    assert all(np.allclose(second[k], expected[k], atol=1e-6) for k in first)
    assert any(np.abs(second[k]).max() > 0 for k in first)
    # every site gets the same buffers; the checkpoint holds round 2's average
    assert all(all(np.array_equal(_buffers(m)[k], second[k]) for k in first)
               for m in by_round["2"])
    saved = load_checkpoint(latest_checkpoint(out))
    last = mean(replies["2"])
    assert saved["settings"]["client_momentum"] == "carry"
    assert all(np.allclose(saved["momentum"][k].numpy(), last[k], atol=1e-6) for k in first)
    # the model file holds the model only
    model, _ = load_model(out / "model.pt")
    assert not any(k.startswith(MOMENTUM_PREFIX) for k in model.state_dict())


def test_restart_sends_weights_only(small_cache, tmp_path):
    grid = InProcessGrid(nodes(small_cache))
    run_federation(grid, settings(tmp_path / "run", num_rounds=1, client_momentum="restart"),
                   **no_wait())
    sent = [m for m in grid.sent if m.metadata.message_type == "train"]
    assert sent and all(not _buffers(m) for m in sent)
    assert all(not _buffers(r) for r in grid.replies if r.metadata.message_type == "train")
    assert load_checkpoint(latest_checkpoint(tmp_path / "run"))["momentum"] == {}


def test_resume_refuses_another_momentum_rule(carried, small_cache, tmp_path):
    import shutil
    out = tmp_path / "run"
    shutil.copytree(carried[0], out)
    grid = InProcessGrid(nodes(small_cache))
    with pytest.raises(FederationError, match="client_momentum was 'carry'"):
        run_federation(grid, settings(out, client_momentum="restart", resume=True),
                       **no_wait())


def test_the_rule_is_checked_where_it_is_set(tmp_path):
    from spinemet.server.settings import Settings
    from spinemet.simulations.reproduction import Plan

    with pytest.raises(ValueError, match="client-momentum 'sometimes'"):
        Settings(out_dir=str(tmp_path), client_momentum="sometimes").check()
    with pytest.raises(ValueError, match="client momentum 'sometimes'"):
        Plan(data="d", out="o", cache="c", client_momentum="sometimes")
    # a run folder made before the option existed (momentum restarted) keeps its key
    old = Plan(data="d", out="o", cache="c", client_momentum="restart").key()
    assert "client_momentum" not in old
    assert Plan(data="d", out="o", cache="c").key()["client_momentum"] == "carry"
