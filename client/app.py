"""The SpineMet ClientApp: what runs at a hospital for each message from the coordinator.

Every handler catches every error and answers with a fixed code and a template-built text
(:mod:`spinemet.common.federation`): Flower would otherwise forward the exception's text,
which can hold file names or patient identifiers, to the coordinator's log. The full
exception stays in the site's own log.
"""

from __future__ import annotations

import json
import logging

from flwr.app import ArrayRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from ..common.federation import (E_BAD_REQUEST, E_INTERNAL, E_MISMATCH, E_NO_DATA, SiteRefusal,
                                 fingerprint, fingerprint_mismatch)
from ..common.training.protocol import TrainConfig
from .local import evaluate_weights, train_round
from .site_data import load_site

log = logging.getLogger("spinemet.client")

app = ClientApp()


def _config(msg: Message) -> dict:
    try:
        return dict(msg.content["config"])
    except Exception:
        raise SiteRefusal(E_BAD_REQUEST, "no config record") from None


def _train_config(cfg: dict) -> TrainConfig:
    try:
        return TrainConfig(**json.loads(str(cfg["train-config"])))
    except Exception:
        raise SiteRefusal(E_BAD_REQUEST, "train-config is missing or not a training "
                          "configuration of this version") from None


def _site(context: Context, config: TrainConfig):
    try:
        data = load_site(dict(context.node_config), config)
    except KeyError:
        raise SiteRefusal(E_NO_DATA, "the SuperNode's node config names no site or cache "
                          "(start it with `spinemet-client`)") from None
    except (FileNotFoundError, ValueError):
        raise SiteRefusal(E_NO_DATA, "no preprocessed, labelled study (run `spinemet "
                          "validate` at the site)") from None
    if len(data.fit) == 0:
        raise SiteRefusal(E_NO_DATA, "no training patient after the split")
    return data


def _check_fingerprint(cfg: dict, data) -> None:
    expected = {k: cfg.get(k) for k in ("spinemet-version", "model", "input-shape",
                                        "preprocessing-hash")}
    local = fingerprint(str(cfg.get("model")), data.input_shape, data.pipeline_hash)
    problem = fingerprint_mismatch(expected, local)
    if problem:
        raise SiteRefusal(E_MISMATCH, problem)


def _guarded(handler):
    """Run ``handler``; any failure becomes a data-free error reply."""
    def wrapped(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context)
        except SiteRefusal as refusal:
            log.error("refused %s: %s", msg.metadata.message_type, refusal.reason)
            return Message(Error(code=refusal.code, reason=refusal.reason), reply_to=msg)
        except Exception:
            log.exception("%s failed", msg.metadata.message_type)
            return Message(Error(code=E_INTERNAL, reason=SiteRefusal(E_INTERNAL).reason),
                           reply_to=msg)
    wrapped.__name__ = handler.__name__
    return wrapped


@app.query("hello")
@_guarded
def hello(msg: Message, context: Context) -> Message:
    """Check the coordinator's fingerprint; answer with this site's class counts."""
    cfg = _config(msg)
    config = _train_config(cfg)
    data = _site(context, config)
    _check_fingerprint(cfg, data)
    counts = data.counts()
    metrics = {"num-examples": len(data.fit), "fit-counts": counts["fit"],
               "val-counts": counts["val"], "test-counts": counts["test"]}
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


@app.train()
@_guarded
def train(msg: Message, context: Context) -> Message:
    cfg = _config(msg)
    config = _train_config(cfg)
    data = _site(context, config)
    _check_fingerprint(cfg, data)
    try:
        state = msg.content["arrays"].to_torch_state_dict()
        server_round = int(cfg["server-round"])
        local_epochs = int(cfg["local-epochs"])
        counts = [int(c) for c in cfg["class-counts"]]
        seed, mu = int(cfg["seed"]), float(cfg.get("proximal-mu", 0.0))
    except Exception:
        raise SiteRefusal(E_BAD_REQUEST, "the train message lacks weights, round, "
                          "local-epochs, class-counts or seed") from None
    new_state, metrics = train_round(data, state, config, server_round, local_epochs,
                                     counts, seed, mu)
    return Message(RecordDict({"arrays": ArrayRecord(new_state),
                               "metrics": MetricRecord(metrics)}), reply_to=msg)


@app.evaluate()
@_guarded
def evaluate(msg: Message, context: Context) -> Message:
    cfg = _config(msg)
    config = _train_config(cfg)
    data = _site(context, config)
    _check_fingerprint(cfg, data)
    try:
        state = msg.content["arrays"].to_torch_state_dict()
        temperatures = [float(t) for t in cfg.get("temperatures", [])] or None
        temperature = float(cfg.get("temperature", 1.0))
    except Exception:
        raise SiteRefusal(E_BAD_REQUEST, "the evaluate message lacks weights") from None
    metrics = evaluate_weights(data, state, config, temperatures, temperature)
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)

