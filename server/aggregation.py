"""Aggregating the sites' replies: checked, ordered, then Flower's strategy does the maths.

* :func:`screen_replies` drops a reply whose weights hold NaN/Inf, have the wrong names or
  shapes, or whose example count is implausible; a count above what the site declared at
  hello is capped to it. Each exclusion is logged with its reason.
* The kept replies are ordered by (example count, digest of the weights) so the floating
  point sums, and so the run, do not depend on the order replies arrived in or on the
  node ids Flower assigned.
* :class:`Aggregator` hands them to Flower's ``FedAvg`` / ``FedProx`` / ``FedAvgM`` /
  ``FedAdam`` (``aggregate_train``), with a metrics hook that SUMS the sites' counts
  (Flower's default averages them). FedAdam's moments and FedAvgM's momentum live on the
  strategy object: :meth:`Aggregator.state` and :meth:`Aggregator.load_state` carry them
  through checkpoints.
* The sites' carried SGD momentum buffers (``client-momentum = carry``: arrays named
  ``momentum/<parameter>`` beside the weights) are split off before the strategy sees the
  weights and averaged by Flower's ``FedAvg`` with the same example counts
  (:meth:`Aggregator.average_momentum`), whatever the strategy: they are the sites'
  optimiser state, not a model to apply a server optimiser to.

Why FedAvgM is offered: with FedAvg, K hospitals training from the same weights and then
averaged advance the model about as far as ONE of them would have: at equal compute the
federation takes about 1/K of the centralized run's sequential SGD steps. The sigmoid
``paper`` CNN needs many steps (it sits on a plateau for the first epochs), so plain FedAvg
lags at equal compute. Server momentum (Hsu et al. 2019, arXiv:1909.06335) accumulates the
rounds' average updates (steady-state step x 1/(1 - beta)) at no extra compute or traffic.
Measured on the paper CNN (README, "Federated vs centralized"): it overshoots and ends at
chance, as FedAdam does; FedAvg stays the default.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedProx

from ..common.federation import check_update, split_momentum
from ..common.pooled_metrics import add_summaries

log = logging.getLogger("spinemet.server")

STRATEGIES = ("fedavg", "fedprox", "fedavgm", "fedadam")
#: server learning rate when the run config says 0 (Flower's defaults)
SERVER_LR_DEFAULTS = {"fedadam": 0.1, "fedavgm": 1.0}


def sum_metrics(records: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """Flower metrics hook: element-wise SUM of every numeric metric (counts stay counts)."""
    summaries = [dict(next(iter(r.metric_records.values()))) for r in records]
    total = add_summaries(summaries)
    return MetricRecord({k: v for k, v in total.items()})


@dataclass
class Screened:
    node_id: int
    content: RecordDict
    num_examples: int
    digest: str


def _digest(state: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(np.ascontiguousarray(state[name]).tobytes())
    return h.hexdigest()


def screen_replies(replies, reference: dict[str, np.ndarray], declared: dict[int, int]
                   ) -> tuple[list[Screened], list[dict]]:
    """(replies fit to aggregate in a fixed order, [{'node', 'reason'}] of those left out)."""
    kept, dropped = [], []
    for msg in replies:
        node = int(msg.metadata.src_node_id)
        if msg.has_error():
            dropped.append({"node": node, "reason": f"site error {msg.error.code}: "
                                                    f"{msg.error.reason}"})
            continue
        try:
            arrays = msg.content["arrays"]
            metrics = dict(msg.content["metrics"])
            state = {k: a.numpy() for k, a in arrays.items()}
        except Exception:
            dropped.append({"node": node, "reason": "reply lacks arrays or metrics"})
            continue
        reason, n = check_update(state, reference, metrics.get("num-examples"),
                                 declared.get(node, 0))
        if reason is None and declared.get(node, 0) <= 0:
            reason = "the node did not take part in hello"
        if reason:
            dropped.append({"node": node, "reason": reason})
            continue
        if n < metrics["num-examples"]:
            log.warning("node %d claimed %s examples, declared %d at hello: capped", node,
                        metrics["num-examples"], n)
        metrics["num-examples"] = n
        content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in state.items()}),
                              "metrics": MetricRecord(metrics)})
        kept.append(Screened(node, content, n, _digest(state)))
    for d in dropped:
        log.warning("reply from node %d excluded: %s", d["node"], d["reason"])
    kept.sort(key=lambda s: (s.num_examples, s.digest))
    return kept, dropped


def _part(kept: list[Screened], which: int) -> list[Message]:
    """The replies as Flower messages holding only their weights (0) or momentum (1)."""
    out = []
    for s in kept:
        arrays = split_momentum(dict(s.content["arrays"].items()))[which]
        content = RecordDict({"arrays": ArrayRecord(arrays),
                              "metrics": MetricRecord(dict(s.content["metrics"]))})
        out.append(Message(content, dst_node_id=s.node_id, message_type="train"))
    return out


class Aggregator:
    """One of Flower's strategies, used for its aggregation only (the loop is ours)."""

    def __init__(self, name: str, proximal_mu: float = 0.0, server_lr: float = 0.0,
                 server_momentum: float = 0.9):
        if name not in STRATEGIES:
            raise ValueError(f"strategy {name!r}: choose one of {', '.join(STRATEGIES)}")
        common = dict(min_available_nodes=1, min_train_nodes=1, min_evaluate_nodes=1,
                      train_metrics_aggr_fn=sum_metrics, evaluate_metrics_aggr_fn=sum_metrics)
        self.name = name
        server_lr = server_lr if server_lr > 0 else SERVER_LR_DEFAULTS.get(name, 1.0)
        if name == "fedprox":
            self.strategy = FedProx(proximal_mu=proximal_mu, **common)
        elif name == "fedadam":
            self.strategy = FedAdam(eta=server_lr, **common)
        elif name == "fedavgm":
            self.strategy = FedAvgM(server_learning_rate=server_lr,
                                    server_momentum=server_momentum, **common)
        else:
            self.strategy = FedAvg(**common)
        self._mean = FedAvg(**common)    # the carried momentum buffers: a plain weighted mean

    @property
    def proximal_mu(self) -> float:
        return float(getattr(self.strategy, "proximal_mu", 0.0))

    def aggregate(self, server_round: int, current: dict[str, torch.Tensor],
                  kept: list[Screened]) -> tuple[dict[str, torch.Tensor], dict]:
        """New global weights (dtypes of ``current``) and the summed metrics."""
        if isinstance(self.strategy, FedAdam):
            self.strategy.current_arrays = {k: v.numpy().copy() for k, v in current.items()}
        elif isinstance(self.strategy, FedAvgM):   # its pseudo-gradient is old - average
            self.strategy.current_arrays = ArrayRecord(
                {k: Array(v.numpy().copy()) for k, v in current.items()})
        arrays, metrics = self.strategy.aggregate_train(server_round, _part(kept, 0))
        if arrays is None:
            raise RuntimeError("no reply to aggregate")
        new = {k: torch.from_numpy(np.asarray(a.numpy())).to(current[k].dtype)
               for k, a in arrays.items()}
        return {k: new[k] for k in current}, dict(metrics or {})

    def average_momentum(self, server_round: int, current: dict[str, torch.Tensor],
                         kept: list[Screened]) -> dict[str, torch.Tensor]:
        """The sites' momentum buffers averaged, weighted by their example counts."""
        arrays, _ = self._mean.aggregate_train(server_round, _part(kept, 1))
        if arrays is None:
            raise RuntimeError("no reply to aggregate")
        return {k: torch.from_numpy(np.asarray(arrays[k].numpy())).to(v.dtype)
                for k, v in current.items()}

    def state(self) -> dict:
        out: dict = {"name": self.name}
        if isinstance(self.strategy, FedAdam):
            for key in ("m_t", "v_t"):
                moments = getattr(self.strategy, key) or {}
                out[key] = {k: torch.from_numpy(np.asarray(v).copy()) for k, v in moments.items()}
        elif isinstance(self.strategy, FedAvgM) and self.strategy.momentum_vector is not None:
            out["momentum"] = [torch.from_numpy(np.asarray(v).copy())
                               for v in self.strategy.momentum_vector]
        return out

    def load_state(self, state: dict) -> None:
        if state.get("name") != self.name:
            raise ValueError(f"checkpoint strategy {state.get('name')!r} differs from "
                             f"{self.name!r}")
        if isinstance(self.strategy, FedAdam):
            for key in ("m_t", "v_t"):
                moments = state.get(key) or {}
                setattr(self.strategy, key, {k: v.numpy().copy() for k, v in moments.items()}
                        or None)
        elif isinstance(self.strategy, FedAvgM):
            momentum = state.get("momentum")
            self.strategy.momentum_vector = ([v.numpy().copy() for v in momentum]
                                             if momentum else None)
