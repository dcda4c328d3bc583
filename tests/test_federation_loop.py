"""The coordinator's round loop with the real ClientApp, in one process (no network).

The small cohort's three sites are three nodes of :class:`fedgrid.InProcessGrid`; the
ServerApp's :func:`run_federation` drives them. The deployment tests
(``test_deployment.py``) run the same apps across real processes with TLS.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from fedgrid import InProcessGrid
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

from spinemet.common.federation import E_MISMATCH, E_NO_DATA, ERRORS
from spinemet.common.training.artifacts import load_model
from spinemet.server.app import run_federation
from spinemet.server.checkpoint import latest_checkpoint, load_checkpoint
from spinemet.server.outputs import read_rounds, read_status
from spinemet.server.rounds import FederationError
from spinemet.server.settings import Settings

SITES = ("hospital-a", "hospital-b", "hospital-c")


BIG = 2 ** 63   # Flower's node ids are uint64: most do not fit an int64 (or a float64)


def nodes(cache) -> dict[int, dict]:
    return {BIG + 101 + i: {"site": s, "cache-path": str(cache), "cache-site": s}
            for i, s in enumerate(SITES)}


def settings(out, **kw) -> Settings:
    base = dict(out_dir=str(out), num_rounds=2, local_epochs=1, min_sites=3,
                wait_for_sites=5, round_timeout=60, seed=3)
    return Settings(**{**base, **kw})


def no_wait():
    t = [0.0]

    def clock():
        return t[0]

    def sleep(s):
        t[0] += s
    return {"clock": clock, "sleep": sleep}


@pytest.fixture(scope="module")
def completed(small_cache, small_cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("fed") / "run"
    grid = InProcessGrid(nodes(small_cache))
    metrics = run_federation(grid, settings(out), **no_wait())
    return out, grid, metrics


def test_site_names_match_the_small_cohort(small_cohort):
    assert sorted({r["site"] for r in small_cohort.labels}) == list(SITES)


def test_run_writes_a_complete_folder(completed, small_cohort):
    out, _, metrics = completed
    assert read_status(out)["state"] == "completed"
    rows = read_rounds(out)
    assert [r["round"] for r in rows] == [1, 2, None]
    assert [r["evaluated_round"] for r in rows] == [0, 1, 2]
    assert all(r["aggregated"] == 3 and r["silent"] == 0 for r in rows[:2])
    for name in ("model.pt", "metrics.json", "report.md", "accuracy_per_round.png",
                 "confusion_matrix.png"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "metrics.json").read_text())
    for key in ("accuracy", "macro_f1", "auc_macro", "n_test", "confusion_matrix", "per_class",
                "ece", "brier", "accuracy_ci95"):
        assert key in saved, key
    cm = np.array(saved["confusion_matrix"])
    assert cm.shape == (3, 3) and cm.sum() == saved["n_test"]
    # every site's test patients, pooled: the union of the per-site splits
    from spinemet.common.dataset import split_patients
    n_test = sum(v == "test" for v in split_patients(small_cohort.labels).values())
    assert saved["n_test"] == n_test
    assert math.isclose(saved["accuracy"], np.trace(cm) / cm.sum())
    model, meta = load_model(out / "model.pt")
    assert meta["best_round"] in (0, 1, 2) and meta["federation"]["strategy"] == "fedavg"
    assert latest_checkpoint(out).name == "round-0002.pt"


def test_the_temperature_minimises_the_pooled_validation_nll(completed):
    from spinemet.common.federation import TEMPERATURE_GRID

    out, _, _ = completed
    metrics = json.loads((out / "metrics.json").read_text())
    best = load_checkpoint(latest_checkpoint(out))["best"]
    assert best["round"] == metrics["best_round"]
    nll = best["val_nll_by_t"]
    assert len(nll) == len(TEMPERATURE_GRID)
    assert metrics["temperature"] == TEMPERATURE_GRID[int(np.argmin(nll))]
    assert load_model(out / "model.pt")[1]["temperature"] == metrics["temperature"]


def test_replies_carry_only_weights_counts_and_sums(completed, small_cohort):
    _, grid, _ = completed
    allowed = re.compile(r"^(num-examples|train-loss-sum|train-seen|seconds-(eval|train)|"
                         r"(fit|val|test)-counts|(val|test)-(n|confusion|loss-sum|brier-sum|"
                         r"ece-(count|conf|correct)|auc-(pos|neg)-[0-2]|nll-by-t))$")
    ids = {r["patient_id"] for r in small_cohort.labels} | \
        {r["study_uid"] for r in small_cohort.labels}
    assert grid.replies
    names = set(next(m for m in grid.sent if m.metadata.message_type == "train")
                .content["arrays"].keys())
    for reply in grid.replies:
        assert not reply.has_error()
        assert set(reply.content.keys()) <= {"arrays", "metrics"}
        for key, value in reply.content["metrics"].items():
            assert allowed.match(key), key
            values = value if isinstance(value, list) else [value]
            assert all(isinstance(v, (int, float)) for v in values), key
        if "arrays" in reply.content:
            assert set(reply.content["arrays"].keys()) == names
        text = repr(reply.content)
        assert not any(i in text for i in ids)


def test_error_replies_are_fixed_texts_without_paths(small_cache, tmp_path):
    grid = InProcessGrid({**nodes(small_cache),
                          BIG + 104: {"site": "hospital-d", "cache-path": str(tmp_path / "nowhere"),
                                "cache-site": "hospital-d"}})
    run_federation(grid, settings(tmp_path / "run", num_rounds=1), **no_wait())
    errors = [r for r in grid.replies if r.has_error()]
    assert errors and all(r.error.code == E_NO_DATA for r in errors)
    for r in errors:
        assert r.error.reason.startswith(ERRORS[E_NO_DATA])
        assert str(tmp_path) not in r.error.reason and "nowhere" not in r.error.reason
    # the broken site never got a train message; the three others trained
    assert all(m.metadata.dst_node_id != BIG + 104 for m in grid.sent
               if m.metadata.message_type == "train")
    assert read_rounds(tmp_path / "run")[0]["aggregated"] == 3


def test_internal_failure_becomes_code_199_without_the_exception_text(small_cache, tmp_path,
                                                                       monkeypatch):
    import spinemet.client.handlers as handlers

    def boom(*a, **k):
        raise RuntimeError("secret /data/patient-0042/T1 exploded")
    monkeypatch.setattr(handlers, "train_round", boom)
    grid = InProcessGrid(nodes(small_cache))
    with pytest.raises(FederationError, match="usable replies"):
        run_federation(grid, settings(tmp_path / "run", num_rounds=1), **no_wait())
    errors = [r for r in grid.replies if r.has_error()]
    assert len(errors) == 3 and {r.error.code for r in errors} == {199}
    assert all("secret" not in r.error.reason and "0042" not in r.error.reason for r in errors)
    assert read_status(tmp_path / "run")["state"] == "failed"


def test_a_site_with_other_code_refuses(small_cache, tmp_path, monkeypatch):
    import spinemet.client.handlers as handlers

    real = handlers.fingerprint
    monkeypatch.setattr(handlers, "fingerprint",
                        lambda *a: {**real(*a), "spinemet-version": "9.9.9"})
    grid = InProcessGrid(nodes(small_cache))
    with pytest.raises(FederationError, match="installed SpineMet differs"):
        run_federation(grid, settings(tmp_path / "run", num_rounds=1), **no_wait())
    refusals = [r for r in grid.replies if r.has_error()]
    assert len(refusals) == 3 and all(r.error.code == E_MISMATCH for r in refusals)
    assert "9.9.9" in refusals[0].error.reason and "install the same" in refusals[0].error.reason


def _forge(kind):
    def rewrite(instruction: Message, reply: Message) -> Message:
        if reply.metadata.message_type != "train":
            return reply
        arrays = {k: a.numpy().copy() for k, a in reply.content["arrays"].items()}
        metrics = dict(reply.content["metrics"])
        first = sorted(arrays)[0]
        if kind == "nan":
            arrays[first].flat[0] = np.nan
        elif kind == "shape":
            arrays[first] = np.zeros((2, 2), np.float32)
        elif kind == "count":
            metrics["num-examples"] = 10 ** 9
        content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                              "metrics": MetricRecord(metrics)})
        return Message(content, reply_to=instruction)
    return rewrite


@pytest.mark.parametrize("kind", ["nan", "shape", "count"])
def test_bad_updates_are_excluded_or_capped(small_cache, tmp_path, kind, caplog):
    grid = InProcessGrid(nodes(small_cache))
    grid.rewrite[BIG + 102] = _forge(kind)
    run_federation(grid, settings(tmp_path / "run", num_rounds=1, min_sites=2), **no_wait())
    row = read_rounds(tmp_path / "run")[0]
    if kind == "count":
        assert row["aggregated"] == 3 and row["excluded"] == []
        assert "capped" in caplog.text
        declared = [r for r in grid.replies if r.metadata.message_type == "query.hello"
                    and r.metadata.src_node_id == BIG + 102][0].content["metrics"]["num-examples"]
        assert row["num_examples"] == sum(
            r.content["metrics"]["num-examples"] for r in grid.replies
            if r.metadata.message_type == "train" and r.metadata.src_node_id != BIG + 102) + declared
    else:
        assert row["aggregated"] == 2 and len(row["excluded"]) == 1
        assert ("NaN" in row["excluded"][0]) if kind == "nan" else ("shape" in row["excluded"][0])


def test_a_silent_site_does_not_stop_the_run(small_cache, tmp_path):
    grid = InProcessGrid(nodes(small_cache))
    grid.silent.add(BIG + 103)
    # the silent node never answers hello either; with min-sites 2 the run goes on
    run_federation(grid, settings(tmp_path / "run", num_rounds=1, min_sites=2), **no_wait())
    assert read_rounds(tmp_path / "run")[0]["aggregated"] == 2
    assert read_status(tmp_path / "run")["state"] == "completed"


def test_a_node_the_superlink_reports_unavailable_is_silent_not_excluded(small_cache,
                                                                       tmp_path):
    """A killed site's messages come back as the SuperLink's own "Node Unavailable" error
    (source: the SuperLink): the site counts as silent, nothing is reported as excluded."""
    grid = InProcessGrid(nodes(small_cache))
    original = grid.send_and_receive

    def kill_after_round_1(messages, **kw):
        if any(m.metadata.message_type == "train" and m.metadata.group_id == "2"
               for m in messages):
            grid.unavailable.add(BIG + 103)
        return original(messages, **kw)

    grid.send_and_receive = kill_after_round_1
    run_federation(grid, settings(tmp_path / "run", num_rounds=2, min_sites=2), **no_wait())
    rows = read_rounds(tmp_path / "run")
    assert rows[0]["aggregated"] == 3 and rows[0]["silent"] == 0
    assert rows[1]["aggregated"] == 2 and rows[1]["silent"] == 1, rows[1]
    assert rows[1]["excluded"] == [], rows[1]
    assert read_status(tmp_path / "run")["state"] == "completed"


def test_too_few_sites_fails_at_the_deadline_with_advice(small_cache, tmp_path):
    grid = InProcessGrid(dict(list(nodes(small_cache).items())[:1]))
    with pytest.raises(FederationError, match="only 1 of the 3 sites.*--min-sites"):
        run_federation(grid, settings(tmp_path / "run"), **no_wait())
    assert "only 1 of the 3" in read_status(tmp_path / "run")["message"]


class _Crash(Exception):
    pass


@pytest.mark.parametrize("strategy", ["fedavg", "fedadam", "fedprox", "fedavgm"])
def test_resume_after_a_crash_ends_with_the_same_weights(small_cache, tmp_path, strategy):
    kw = dict(num_rounds=3, strategy=strategy, server_lr=0.05)
    whole = tmp_path / "whole"
    run_federation(InProcessGrid(nodes(small_cache)), settings(whole, **kw), **no_wait())

    broken = tmp_path / "broken"
    grid = InProcessGrid(nodes(small_cache))
    real = grid.push_messages

    def dies_in_round_3(messages):
        messages = list(messages)
        if messages and messages[0].metadata.group_id == "3":
            raise _Crash()
        return real(messages)
    grid.push_messages = dies_in_round_3
    with pytest.raises(_Crash):
        run_federation(grid, settings(broken, **kw), **no_wait())
    assert latest_checkpoint(broken).name == "round-0002.pt"
    run_federation(InProcessGrid(nodes(small_cache)), settings(broken, resume=True, **kw),
                   **no_wait())
    a = load_checkpoint(latest_checkpoint(whole))
    b = load_checkpoint(latest_checkpoint(broken))
    assert a["round"] == b["round"] == 3
    for k in a["weights"]:
        assert torch.equal(a["weights"][k], b["weights"][k]), k
    assert json.loads((whole / "metrics.json").read_text())["confusion_matrix"] == \
        json.loads((broken / "metrics.json").read_text())["confusion_matrix"]
    assert [r["round"] for r in read_rounds(broken)] == [1, 2, 3, None]


@pytest.mark.parametrize("change", [{"num_rounds": 5}, {"batch_size": 4}])
def test_resume_refuses_other_settings(small_cache, tmp_path, completed, change):
    out, _, _ = completed
    with pytest.raises(FederationError, match=next(iter(change))):
        run_federation(InProcessGrid(nodes(small_cache)),
                       settings(out, resume=True, **change), **no_wait())


def test_a_run_folder_from_before_batch_size_resumes_at_the_models_batch(tmp_path):
    from spinemet.server.cli import _resume_options
    from spinemet.server.deployment import DeploymentOptions
    old = {"num-rounds": 20, "local-epochs": 5, "model": "paper", "seed": 0}
    DeploymentOptions(str(tmp_path), None, run_config=old).save(tmp_path / "deployment.json")
    resumed = _resume_options(tmp_path).run_config
    assert resumed == {**old, "batch-size": 0, "resume": True}
    assert Settings.from_run_config({**resumed, "out-dir": str(tmp_path)}).batch_size == 0
    new = {**old, "batch-size": 8}
    DeploymentOptions(str(tmp_path), None, run_config=new).save(tmp_path / "deployment.json")
    assert _resume_options(tmp_path).run_config["batch-size"] == 8


def test_round_time_is_split_into_exchange_coordinator_and_checkpoint(small_cache, tmp_path,
                                                                     monkeypatch):
    """rounds.jsonl attributes time to where it passed: while the messages are out (Flower's
    path and the sites' work), in the coordinator's own steps, and in the checkpoint."""
    from spinemet.server import rounds as rounds_module

    t = [0.0]

    class SlowGrid(InProcessGrid):
        def push_messages(self, messages):        # the messages take 1.5 s to come back
            messages = list(messages)
            if messages and messages[0].metadata.message_type == "train":
                t[0] += 1.5
            return super().push_messages(messages)

    saved = rounds_module.save_checkpoint

    def slow_checkpoint(*args, **kw):              # and writing a checkpoint 0.25 s
        t[0] += 0.25
        return saved(*args, **kw)

    monkeypatch.setattr(rounds_module, "save_checkpoint", slow_checkpoint)
    run_federation(SlowGrid(nodes(small_cache)), settings(tmp_path / "run"),
                   clock=lambda: t[0], sleep=lambda s: t.__setitem__(0, t[0] + s))
    rows = [r for r in read_rounds(tmp_path / "run") if r["round"]]
    assert len(rows) == 2
    for r in rows:
        assert r["seconds_exchange"] == pytest.approx(1.5)
        assert r["seconds_coordinator"] == pytest.approx(r["seconds"] - 1.5)
        assert r["seconds_coordinator"] == pytest.approx(0.0)   # the fake clock: only these
        assert r["seconds_checkpoint"] == pytest.approx(0.25)
