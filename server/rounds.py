"""The coordinator's own round loop (Flower's ``Strategy.start`` cannot resume).

1. Wait for ``min-sites`` nodes, with a deadline (Flower's sampling waits forever).
2. ``query.hello`` to each new node: the site checks the version / model / preprocessing
   fingerprint and answers with its class counts; the fit counts are summed into the
   global counts the loss weights come from.
3. Each round: a seeded sample of the accepted nodes gets one ``train`` message with the
   global weights; replies are awaited up to ``round-timeout``; :func:`.aggregation.screen_replies`
   drops bad ones; Flower's strategy aggregates the rest (and, with ``client-momentum =
   carry``, Flower's FedAvg averages the sites' SGD momentum buffers, which go out again
   with the next round's weights). The same replies carry the sites'
   scores of the weights they received (the previous round's model), so the validation
   loss that selects the model and the pooled test metrics arrive without another message.
4. After each round: a line in ``RUN/rounds.jsonl`` and a checkpoint.
5. At the end: the final weights are scored (with a temperature grid), the round of lowest
   pooled validation loss is selected, its temperature fitted on the pooled validation
   NLL, and its test metrics read at that temperature. :mod:`.outputs` writes the run folder.
"""

from __future__ import annotations

import json
import logging
import math
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid

from ..common import __version__
from ..common.federation import (EVALUATE, HELLO, TEMPERATURE_GRID, TRAIN, fingerprint,
                                 join_momentum)
from ..common.models import build_model
from ..common.pooled_metrics import add_summaries, metrics_from_summary
from ..common.preprocess.pipeline import default_pipeline
from ..common.training.protocol import seed_everything
from .aggregation import Aggregator, screen_replies, sum_metrics
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .settings import Settings

log = logging.getLogger("spinemet.server")

POLL = 0.2   # seconds between pulls of replies


class FederationError(RuntimeError):
    """The run cannot go on; the message says why and what to do."""


@dataclass
class RunState:
    round: int
    weights: dict[str, torch.Tensor]
    best: dict = field(default_factory=dict)     # {"round", "val_loss", "weights"}
    history: list[dict] = field(default_factory=list)
    global_counts: list[int] = field(default_factory=list)
    momentum: dict[str, torch.Tensor] = field(default_factory=dict)  # carried SGD buffers


class Coordinator:
    def __init__(self, grid: Grid, settings: Settings, clock=time.monotonic,
                 sleep=time.sleep):
        self.grid, self.settings = grid, settings
        self.clock, self.sleep = clock, sleep
        self.out = Path(settings.out_dir)
        self.config = settings.train_config()
        pipeline = default_pipeline()
        self.input_shape = tuple(pipeline.output_shape)
        self.pipeline_hash = pipeline.hash()
        self.fingerprint = fingerprint(settings.model, self.input_shape, self.pipeline_hash)
        self.pipeline_params = pipeline.params()
        self.aggregator = Aggregator(settings.strategy, settings.proximal_mu, settings.server_lr,
                                     settings.server_momentum)
        self.declared: dict[int, int] = {}      # node id -> fit examples declared at hello
        self.refused: dict[int, str] = {}
        self._counts: dict[int, list[int]] = {}   # node id -> fit class counts
        self._test_counts: dict[int, int] = {}    # node id -> test patients declared
        self.responsive: set[int] = set()          # nodes whose reply was aggregated last
        self.server_test = None        # Tensors of the coordinator's held-out set, if any
        self._scorer = None

    # -- messages ------------------------------------------------------------------------
    def _base_config(self) -> dict:
        return {**self.fingerprint, "train-config": json.dumps(self.config.to_dict()),
                "seed": self.settings.seed}

    def _send(self, node_ids, message_type: str, config: dict,
              weights: dict[str, torch.Tensor] | None, timeout: float, group: str):
        content = {"config": ConfigRecord(config)}
        if weights is not None:
            content["arrays"] = ArrayRecord(weights)
        messages = [Message(RecordDict(content), dst_node_id=int(n),
                            message_type=message_type, group_id=group)
                    for n in sorted(node_ids)]
        replies = self._exchange(messages, timeout)
        answered = {int(r.metadata.src_node_id) for r in replies}
        silent = sorted(set(int(n) for n in node_ids) - answered)
        for n in silent:
            log.warning("node %d did not reply to %s within %.0f s", n, message_type, timeout)
        return replies, silent

    def _exchange(self, messages: list[Message], timeout: float) -> list[Message]:
        """``Grid.send_and_receive`` with a short poll: Flower's polls every 3 s, which
        would add up to 3 s to every round; this asks every ``POLL`` seconds."""
        ids = list(self.grid.push_messages(messages))
        destination = {i: int(m.metadata.dst_node_id) for i, m in zip(ids, messages)}
        pending = set(ids)
        pending.discard("")
        replies: list[Message] = []
        deadline = self.clock() + timeout
        while pending:
            got = list(self.grid.pull_messages(list(pending)))
            for m in got:
                if int(m.metadata.src_node_id) == SUPERLINK_NODE_ID and m.has_error():
                    # the SuperLink's own answer for a node that stopped sending heartbeats
                    # (or a message that expired): the node is silent, not a site error
                    log.warning("SuperLink: node %s: %s (code %d)",
                                destination.get(m.metadata.reply_to_message_id, "?"),
                                m.error.reason, m.error.code)
                else:
                    replies.append(m)
            pending -= {m.metadata.reply_to_message_id for m in got}
            if not pending or self.clock() >= deadline:
                break
            self.sleep(POLL)
        return replies

    # -- enrolment into the run ----------------------------------------------------------
    def _hello(self, node_ids) -> None:
        replies, _ = self._send(node_ids, HELLO, self._base_config(), None,
                                min(self.settings.round_timeout, 300.0), "hello")
        for msg in replies:
            node = int(msg.metadata.src_node_id)
            if msg.has_error():
                self.refused[node] = f"error {msg.error.code}: {msg.error.reason}"
                log.error("node %d refused to join: %s", node, self.refused[node])
                continue
            metrics = dict(msg.content["metrics"])
            self.declared[node] = int(metrics["num-examples"])
            self._counts[node] = [int(c) for c in metrics["fit-counts"]]
            self._test_counts[node] = int(sum(metrics["test-counts"]))
            log.info("node %d joined: %d studies to fit, %d to validate, %d to test", node,
                     sum(metrics["fit-counts"]), sum(metrics["val-counts"]),
                     sum(metrics["test-counts"]))

    def _new_nodes(self) -> list[int]:
        known = set(self.declared) | set(self.refused)
        return sorted(int(n) for n in self.grid.get_node_ids() if int(n) not in known)

    def wait_for_sites(self) -> None:
        """Hello every node that connects until ``min-sites`` accepted or the deadline."""
        deadline = self.clock() + self.settings.wait_for_sites
        last_note = -math.inf
        while True:
            new = self._new_nodes()
            if new:
                self._hello(new)
            live = set(int(n) for n in self.grid.get_node_ids())
            accepted = [n for n in self.declared if n in live]
            if len(accepted) >= self.settings.min_sites:
                return
            if self.clock() >= deadline:
                raise FederationError(
                    f"only {len(accepted)} of the {self.settings.min_sites} sites needed joined "
                    f"within {self.settings.wait_for_sites:.0f} s ({len(self.refused)} refused: "
                    f"{'; '.join(self.refused.values()) or 'none'}); start more sites with "
                    "`spinemet-client`, or lower --min-sites")
            if self.clock() - last_note >= 30:
                log.info("waiting for sites: %d of %d joined", len(accepted),
                         self.settings.min_sites)
                last_note = self.clock()
            self.sleep(1.0)

    def _sample(self, server_round: int) -> list[int]:
        new = self._new_nodes()
        if new:
            self._hello(new)
        live = set(int(n) for n in self.grid.get_node_ids())
        nodes = sorted(n for n in self.declared if n in live)
        if len(nodes) < self.settings.min_sites:
            self.wait_for_sites()
            return self._sample(server_round)
        k = max(self.settings.min_sites, math.ceil(self.settings.fraction_train * len(nodes)))
        rng = np.random.default_rng([self.settings.seed, server_round])
        # indices, not ids: node ids are uint64 and numpy would turn a list of them into
        # float64 (and Flower would reject the rounded ids)
        picked = rng.choice(len(nodes), size=min(k, len(nodes)), replace=False)
        return sorted(nodes[int(i)] for i in picked)

    # -- evaluation ------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the background scoring thread (the run is over)."""
        if self._scorer is not None:
            self._scorer.close()
            self._scorer = None

    def _held_out_scorer(self):
        if self._scorer is None:
            from .server_eval import HeldOutScorer
            self._scorer = HeldOutScorer(self.server_test, self.config.model, self.input_shape)
        return self._scorer

    def _scores(self, summed: dict, weights: dict[str, torch.Tensor],
                held_out: Future | None = None) -> dict:
        """The pooled scores the sites sent for ``weights``, and the coordinator's own
        held-out accuracy of them (``held_out``: already being computed)."""
        row: dict = {}
        val = add_summaries([summed], "val-")
        if val.get("n", 0) > 0:
            row["val_loss"] = val["loss-sum"] / val["n"]
            row["val_accuracy"] = metrics_from_summary(val, bootstrap=0)["accuracy"]
        if val.get("nll-by-t"):
            row["val_nll_by_t"] = [float(x) for x in val["nll-by-t"]]
        test = add_summaries([summed], "test-")
        if test.get("n", 0) > 0:
            m = metrics_from_summary(test, bootstrap=0)
            row.update(test_accuracy=m["accuracy"], test_macro_f1=m["macro_f1"],
                       test_loss=m["loss"], test_ece=m["ece"], n_test=m["n_test"])
        if held_out is None and self.server_test is not None:
            held_out = self._held_out_scorer().submit(weights)
        if held_out is not None:
            row["server_test_accuracy"] = held_out.result()
        return row

    def _consider(self, state: RunState, evaluated_round: int, row: dict,
                  weights: dict[str, torch.Tensor]) -> None:
        loss = row.get("val_loss")
        if loss is None:   # no validation patients anywhere: the last round is kept
            loss = -evaluated_round
        if not state.best or loss < state.best["val_loss"]:
            state.best = {"round": evaluated_round, "val_loss": float(loss),
                          "val_nll_by_t": list(row.get("val_nll_by_t", [])),
                          "ece_uncalibrated": row.get("test_ece"),
                          "weights": {k: v.clone() for k, v in weights.items()}}

    def global_counts(self) -> list[int]:
        """Fit-patient counts per class summed over the sites that joined."""
        live = set(int(n) for n in self.grid.get_node_ids())
        counts = [self._counts[n] for n in sorted(self._counts) if n in live]
        return np.sum(counts, axis=0).astype(int).tolist() if counts else [0, 0, 0]

    # -- the run ---------------------------------------------------------------------------
    def initial_state(self) -> RunState:
        if self.settings.resume:
            path = latest_checkpoint(self.out)
            if path is not None:
                blob = load_checkpoint(path)
                # checkpoints from before client-momentum existed restarted it every round
                saved = {"client_momentum": "restart", **blob.get("settings", {})}
                for key in ("model", "strategy", "num_rounds", "local_epochs", "seed",
                            "split_seed", "client_momentum", "batch_size"):
                    if saved.get(key) != getattr(self.settings, key):
                        raise FederationError(
                            f"{path}: {key} was {saved.get(key)!r}, this run asks "
                            f"{getattr(self.settings, key)!r}; resume with the same settings")
                self.aggregator.load_state(blob["strategy"])
                log.info("resuming after round %d from %s", blob["round"], path.name)
                return RunState(int(blob["round"]), blob["weights"], blob.get("best") or {},
                                list(blob.get("history", [])),
                                list(blob.get("global_counts", [])),
                                dict(blob.get("momentum") or {}))
            log.warning("--resume: no checkpoint in %s; starting from round 1", self.out)
        seed_everything(self.settings.seed)
        model = build_model(self.config.model, self.input_shape)
        # zero buffers: a site's first SGD step from them is a fresh optimiser's
        momentum = ({k: torch.zeros_like(p.detach()) for k, p in model.named_parameters()}
                    if self.settings.client_momentum == "carry" else {})
        return RunState(0, {k: v.detach().clone() for k, v in model.state_dict().items()},
                        momentum=momentum)

    def checkpoint(self, state: RunState) -> None:
        save_checkpoint(self.out, {
            "round": state.round, "weights": state.weights, "best": state.best,
            "strategy": self.aggregator.state(), "rng": {"seed": self.settings.seed},
            "settings": self.settings.to_dict(), "global_counts": state.global_counts,
            "momentum": state.momentum,
            "history": state.history, "spinemet_version": __version__})

    def train_round(self, state: RunState, server_round: int) -> dict:
        t0 = self.clock()
        nodes = self._sample(server_round)
        config = {**self._base_config(), "server-round": server_round,
                  "temperatures": TEMPERATURE_GRID,
                  "local-epochs": self.settings.local_epochs,
                  "class-counts": [int(c) for c in state.global_counts],
                  "proximal-mu": self.aggregator.proximal_mu}
        t_send = self.clock()
        # the coordinator's score of the weights the sites now train from, meanwhile
        held_out = self._held_out_scorer().submit(state.weights) \
            if self.server_test is not None else None
        outgoing = join_momentum(state.weights, state.momentum)
        replies, silent = self._send(nodes, TRAIN, config, outgoing,
                                     self.settings.round_timeout, str(server_round))
        t_replies = self.clock()
        reference = {k: v.numpy() for k, v in outgoing.items()}
        kept, dropped = screen_replies(replies, reference, self.declared)
        self.responsive = {s.node_id for s in kept}
        if len(kept) < self.settings.min_sites:
            raise FederationError(
                f"round {server_round}: {len(kept)} usable replies, fewer than min-sites "
                f"{self.settings.min_sites} ({len(silent)} silent, {len(dropped)} excluded); "
                "the last checkpoint is kept: fix the sites and resume with --resume")
        new_weights, summed = self.aggregator.aggregate(server_round, state.weights, kept)
        new_momentum = (self.aggregator.average_momentum(server_round, state.momentum, kept)
                        if state.momentum else {})
        down = ArrayRecord(outgoing).count_bytes() + len(ConfigRecord(config).deflate())
        up = [s.content["arrays"].count_bytes() + len(s.content["metrics"].deflate())
              for s in kept]
        row = {"round": server_round, "sampled": len(nodes), "aggregated": len(kept),
               "silent": len(silent), "excluded": [d["reason"] for d in dropped],
               "num_examples": sum(s.num_examples for s in kept),
               "train_loss": summed.get("train-loss-sum", 0.0) / max(summed.get("train-seen", 1), 1),
               "evaluated_round": server_round - 1,
               "seconds_site_train_max": max(float(dict(s.content["metrics"]).get(
                   "seconds-train", 0.0)) for s in kept),
               "seconds_site_work_max": max(
                   float(dict(s.content["metrics"]).get("seconds-train", 0.0))
                   + float(dict(s.content["metrics"]).get("seconds-eval", 0.0)) for s in kept),
               # message payload as Flower counts it (arrays + records), per site
               "bytes_down_per_site": down, "bytes_up_per_site": float(np.mean(up))}
        row.update(self._scores(summed, state.weights, held_out))
        self._consider(state, server_round - 1, row, state.weights)
        row.pop("val_nll_by_t", None)     # kept with the best round, not in rounds.jsonl
        row["seconds"] = self.clock() - t0
        # where the round's time went: push -> every reply in (Flower's message path + the
        # sites' work), and the coordinator's own work before and after (sampling,
        # screening, aggregation, scoring); the checkpoint is timed by the caller
        row["seconds_exchange"] = t_replies - t_send
        row["seconds_coordinator"] = row["seconds"] - row["seconds_exchange"]
        state.weights, state.momentum, state.round = new_weights, new_momentum, server_round
        return row

    def final_evaluation(self, state: RunState) -> tuple[dict, float]:
        """Score the last weights, select the best round, fit T, read the test metrics."""
        nodes = self._sample(state.round + 1)
        if self.responsive & set(nodes):   # a site silent in the last round is not waited for
            nodes = sorted(self.responsive & set(nodes))
        cfg = {**self._base_config(), "temperatures": TEMPERATURE_GRID}
        replies, _ = self._send(nodes, EVALUATE, cfg, state.weights,
                                self.settings.round_timeout, "final")
        summed = self._sum_replies(replies)
        row = {"round": None, "evaluated_round": state.round, **self._scores(summed, state.weights)}
        self._consider(state, state.round, row, state.weights)
        row.pop("val_nll_by_t", None)
        state.history.append(row)
        best = state.best
        # temperature scaling: the grid point of lowest pooled validation NLL of the
        # selected weights (every round's replies carry it, so no extra message)
        nll = np.asarray(best.get("val_nll_by_t") or [], float)
        temperature = float(TEMPERATURE_GRID[int(nll.argmin())]) if nll.size and nll.any() \
            else 1.0
        # the sites' test patients at that temperature; a simulation's virtual hospitals
        # hold none (they said so at hello), so the coordinator's held-out set is used
        # without asking them
        if self.server_test is None or any(self._test_counts.get(n, 1) for n in nodes):
            replies, _ = self._send(nodes, EVALUATE, {**self._base_config(),
                                                      "temperature": temperature},
                                    best["weights"], self.settings.round_timeout, "calibrated")
            test = add_summaries([self._sum_replies(replies)], "test-")
        else:
            test = {}
        # the coordinator's own held-out set, scored once: the headline when the sites
        # hold no test patients (simulation), and metrics.json's server_test either way
        server = None
        if self.server_test is not None:
            from .server_eval import evaluate_on
            server = evaluate_on(self.server_test, self.config.model, self.input_shape,
                                 best["weights"], temperature, 2000)
        if test.get("n", 0) > 0:
            metrics = {**metrics_from_summary(test), "test_source": "sites (pooled)"}
        elif server is not None:
            metrics = {**server, "test_source": "coordinator"}
        else:
            raise FederationError("no site has test patients and the coordinator has no "
                                  "held-out set (--test-data): nothing to score the model on")
        if server is not None:
            metrics["server_test"] = server
        metrics["ece_uncalibrated"] = best.get("ece_uncalibrated")
        return metrics, temperature

    def _sum_replies(self, replies) -> dict:
        ok = [m.content for m in replies if not m.has_error()]
        for m in replies:
            if m.has_error():
                log.warning("node %d failed evaluation: %s", m.metadata.src_node_id,
                            m.error.reason)
        if not ok:
            raise FederationError("no site answered the evaluation")
        return dict(sum_metrics(ok, "num-examples"))
