"""The SpineMet ClientApp: what runs at a hospital for each message from the coordinator.

This module imports Flower and numpy only: Flower starts a fresh process per message, so
the work is done either by the site's long-lived worker (:mod:`.worker`, when the node
config names its socket, as ``spinemet-client`` sets it) or, without a worker (simulation,
tests), by :mod:`.handlers` in this process.

Every failure becomes a fixed code with a template-built text
(:mod:`spinemet.common.federation`): Flower would otherwise forward the exception's text,
which can hold file names or patient identifiers, to the coordinator's log. The full
exception stays in the site's own log.
"""

from __future__ import annotations

import logging

from flwr.app import Array, ArrayRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from ..common.federation import E_BAD_REQUEST, E_INTERNAL, SiteRefusal

log = logging.getLogger("spinemet.client")

app = ClientApp()

WORKER_TIMEOUT = 24 * 3600.0   # a round's local training may be long; Flower's TTL bounds it


def _request(msg: Message) -> tuple[dict, dict | None]:
    try:
        config = dict(msg.content["config"])
    except Exception:
        raise SiteRefusal(E_BAD_REQUEST, "no config record") from None
    arrays = None
    if "arrays" in msg.content.array_records:
        arrays = {k: a.numpy() for k, a in msg.content["arrays"].items()}
    return config, arrays


def _work(kind: str, node_config: dict, config: dict, arrays):
    socket, key = node_config.get("worker-socket"), node_config.get("worker-key")
    if socket and key:
        from .worker import ask
        try:
            answer = ask(str(socket), str(key), (kind, node_config, config, arrays),
                         WORKER_TIMEOUT)
        except Exception as exc:
            log.error("the site worker is unreachable: %s", exc)
            raise SiteRefusal(E_INTERNAL, "the site worker is not running") from None
        if answer[0] == "refused":
            raise SiteRefusal(int(answer[1]), reason=str(answer[2]))
        return answer[1], answer[2]
    from .handlers import handle
    return handle(kind, node_config, config, arrays)


def node_config(context: Context) -> dict:
    """The site's node config; in simulation, the virtual hospital's.

    Flower's simulation engine gives each virtual SuperNode only ``partition-id`` and
    ``num-partitions``; the run config (set by ``spinemet simulate``) names the partition
    file and the pooled cache. A real site's node config always names its ``site`` (as
    ``spinemet-client`` writes it), so a run config can never redirect a real site's data.
    """
    node = dict(context.node_config)
    if node.get("site") or "partition-id" not in node:
        return node
    run = dict(context.run_config)
    partition, cache = str(run.get("sim-partition", "")), str(run.get("sim-cache", ""))
    if not partition or not cache:
        return node        # refused with E_NO_DATA by the handlers: no site, no cache
    import json
    from pathlib import Path
    try:
        names = sorted(json.loads(Path(partition).read_text())["hospitals"])
        site = names[int(node["partition-id"])]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return node
    return {**node, "site": site, "cache-path": cache, "partition-file": partition}


def _dispatch(msg: Message, context: Context) -> Message:
    kind = msg.metadata.message_type
    try:
        config, arrays = _request(msg)
        arrays_out, metrics = _work(kind, node_config(context), config, arrays)
    except SiteRefusal as refusal:
        log.error("refused %s: %s", kind, refusal.reason)
        return Message(Error(code=refusal.code, reason=refusal.reason), reply_to=msg)
    except Exception:
        log.exception("%s failed", kind)
        return Message(Error(code=E_INTERNAL, reason=SiteRefusal(E_INTERNAL).reason),
                       reply_to=msg)
    content = {"metrics": MetricRecord(metrics)}
    if arrays_out is not None:
        content["arrays"] = ArrayRecord({k: Array(v) for k, v in arrays_out.items()})
    return Message(RecordDict(content), reply_to=msg)


@app.query("hello")
def hello(msg: Message, context: Context) -> Message:
    """Check the coordinator's fingerprint; answer with this site's class counts."""
    return _dispatch(msg, context)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Score the received weights on the site's held-out patients, then train locally."""
    return _dispatch(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Score weights (validation NLL per temperature, test summary at a temperature)."""
    return _dispatch(msg, context)
