"""``spinemet simulate``: the centralized baseline and the federated run at equal compute,
per seed, both scored by the coordinator on the same patients.

Equal compute: the centralized model trains ``rounds x local_epochs`` epochs over the
training patients; each of the ``sites`` virtual hospitals trains ``local_epochs`` epochs
per round over its share of the same patients, so with every hospital in every round the
federation sees each training study ``rounds x local_epochs`` times too. The protocol is the
shared one (learning-rate schedule by global epoch, class weights from the global counts,
selection on validation loss, temperature on validation NLL): the hospitals' fit and
validation patients are exactly the centralized run's, partitioned (:mod:`.partition`).

Per seed ``s`` (training seed, partition seed; the 80/20 split keeps ``split_seed``, so the
test patients are the same for every seed)::

    RUN/seed-s/partition.json, partition.png
    RUN/seed-s/central/      a `spinemet train` run folder
    RUN/seed-s/federated/    a `flower-server` run folder (rounds.jsonl, model.pt, ...)
    RUN/seed-s/scores.json   both models on the test split and the extra test cohort

then ``RUN/reproduction.json`` and ``RUN/report.md`` (:mod:`.reproduction_report`). A run
interrupted part-way keeps each finished side of each seed: re-running with the same plan
(``RUN/plan.json``) goes on where it stopped.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from ..common.cohort.spec import CohortSpec
from ..common.cohort.writer import write_cohort
from ..common.dataset import SpineDataset
from ..common.federation import CLIENT_MOMENTUM
from ..common.preprocess.pipeline import default_pipeline
from ..common.training.loop import load_tensors
from ..common.training.protocol import TrainConfig
from .centralized import prepare_data, train_centralized
from .engine import SimulationRun, ray_cpus, run_simulation
from .partition import parse_partition, partition_patients, plot_partition, write_partition
from .scoring import Scored, mean_sd, paired_gap, score_model

log = logging.getLogger("spinemet.simulations")

Progress = Callable[[str, int, int], None]


class PlanMismatch(ValueError):
    """RUN holds a reproduction made with other settings."""


@dataclass(frozen=True)
class Plan:
    data: str
    out: str
    cache: str
    labels: str | None = None
    sites: int = 5
    partition: str = "iid"
    rounds: int = 100
    local_epochs: int = 1
    strategy: str = "fedavg"
    server_momentum: float = 0.9     # fedavgm
    server_lr: float = 0.0           # fedavgm / fedadam (0: Flower's default)
    proximal_mu: float = 0.01        # fedprox
    client_momentum: str = "carry"   # the hospitals' SGD momentum: carry | restart
    model: str = "paper"
    seeds: tuple[int, ...] = (0,)
    split_seed: int = 0
    fraction: float = 1.0
    extra_patients: int = 600
    extra_seed: int = 1000
    extra_data: str = ""
    cpus_per_client: int = 1
    workers: int | None = None
    make_cohort: bool = True
    central_epochs_override: int = 0   # 0: rounds x local epochs (equal compute)
    local_batch: str = "8"             # N | scaled | central: the hospitals' batch size

    def __post_init__(self) -> None:
        if self.local_batch not in ("scaled", "central") and not (
                self.local_batch.isdigit() and int(self.local_batch) >= 1):
            raise ValueError(f"local batch size {self.local_batch!r} is not scaled, central or "
                             "a positive integer")
        if self.client_momentum not in CLIENT_MOMENTUM:
            raise ValueError(f"client momentum {self.client_momentum!r} is not one of "
                             f"{', '.join(CLIENT_MOMENTUM)}")

    @property
    def federated_epochs(self) -> int:
        """Times each training study is seen by its hospital over the run."""
        return self.rounds * self.local_epochs

    @property
    def central_epochs(self) -> int:
        return self.central_epochs_override or self.federated_epochs

    @property
    def equal_compute(self) -> bool:
        return self.central_epochs == self.federated_epochs and self.fraction >= 1

    def compute_text(self) -> str:
        """How the two sides' training maps onto each other (``reproduction.json``)."""
        federated = (f"{self.rounds} rounds x {self.local_epochs} local epochs at every "
                     "hospital")
        if self.central_epochs == self.federated_epochs:
            text = f"centralized {self.central_epochs} epochs = {federated}"
        else:
            ratio = self.federated_epochs / self.central_epochs
            text = (f"centralized {self.central_epochs} epochs; federated {federated} "
                    f"(each training study seen {self.federated_epochs} times: "
                    f"{ratio:.2g}x the centralized compute, NOT equal compute)")
        if self.fraction < 1:
            text += f" (x fraction {self.fraction}: NOT equal compute)"
        batch = TrainConfig.for_model(self.model).batch_size
        if self.local_batch == "scaled":
            text += (f"; hospitals' batch = the centralized {batch} / hospitals per round, so "
                     "one step across the federation consumes one centralized batch")
        elif self.local_batch != "central" and int(self.local_batch) != batch:
            text += f"; hospitals' batch {self.local_batch}, centralized {batch}"
        return text

    def local_batch_size(self, hospitals: int) -> int:
        """The hospitals' batch size: ``central`` the model's; ``scaled`` the model's divided
        by the hospitals per round (rounded, at least 1), so that the federation takes as
        many sequential steps per epoch as centralized training (with one local step,
        averaging K hospitals' steps on batches of B/K is one centralized step on a batch of
        B); or a number."""
        batch = TrainConfig.for_model(self.model).batch_size
        if self.local_batch == "central":
            return batch
        if self.local_batch == "scaled":
            return max(1, round(batch / self.hospitals_per_round(hospitals)))
        return int(self.local_batch)

    def hospitals_per_round(self, hospitals: int) -> int:
        return max(1, math.ceil(self.fraction * hospitals))

    def extra_paths(self) -> tuple[Path, Path]:
        data = Path(self.extra_data) if self.extra_data else (
            Path(self.data).resolve().parent / f"extra-{self.extra_patients}-s{self.extra_seed}")
        return data, data.parent / f"{data.name}-cache"

    def key(self) -> dict:
        """What a finished side depends on (not the seeds list, workers or paths to outputs)."""
        d = asdict(self)
        for k in ("seeds", "workers", "make_cohort", "out"):
            d.pop(k)
        if not d["central_epochs_override"]:   # equal compute: the key as it always was
            d.pop("central_epochs_override")
        if d["local_batch"] == "central":      # as before the option existed
            d.pop("local_batch")
        if d["client_momentum"] == "restart":  # as before the option existed
            d.pop("client_momentum")
        return d


@dataclass
class SeedResult:
    seed: int
    central_wall: float
    federated_wall: float
    central: dict = field(default_factory=dict)     # {"test": Scored, "extra": Scored}
    federated: dict = field(default_factory=dict)
    federated_rounds: list[dict] = field(default_factory=list)
    central_best_epoch: int = 0
    federated_best_round: int = 0
    # the pooled validation loss of each side's selected model (the same validation
    # patients on both sides): the report's diagnosis of a gap
    central_val_loss: float | None = None
    federated_val_loss: float | None = None


def check_plan(plan: Plan) -> None:
    out = Path(plan.out)
    saved = out / "plan.json"
    if saved.exists():
        old = json.loads(saved.read_text())
        if old != json.loads(json.dumps(plan.key())):
            changed = sorted(k for k in set(old) | set(plan.key())
                             if old.get(k) != json.loads(json.dumps(plan.key())).get(k))
            raise PlanMismatch(f"{out} holds a reproduction with other settings ({', '.join(changed)}"
                               "): choose another --out, or pass --overwrite to start over")
    out.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(plan.key(), indent=1) + "\n")


def ensure_cohort(path: Path, spec: CohortSpec, workers: int | None, progress: Progress | None,
                  what: str) -> None:
    """Write the cohort unless it is there (a finished one is kept as it is)."""
    manifest = path / "cohort.json"
    if manifest.exists() and json.loads(manifest.read_text()).get("complete") is True and \
            (path / "labels.csv").exists():
        return
    log.info("writing the %s (%d patients, seed %d) to %s", what, spec.patients, spec.seed, path)
    write_cohort(spec, path, workers, progress=progress and (
        lambda d, t: progress(f"{what}: patients", d, t)))


def _labels(plan: Plan) -> list[dict] | None:
    return _read_labels(Path(plan.labels) if plan.labels else Path(plan.data) / "labels.csv")


def _read_labels(path: Path) -> list[dict] | None:
    from ..common.cohort.writer import read_labels
    return read_labels(path) if path.exists() else None


def prepare(plan: Plan, progress: Progress | None = None):
    """Cohort (made when missing), extra cohort, preprocessing; the tensors to score on."""
    data = Path(plan.data)
    pipeline = default_pipeline()
    if not data.exists():
        if not plan.make_cohort:
            raise FileNotFoundError(f"--data {data} does not exist")
        ensure_cohort(data, CohortSpec(), plan.workers, progress, "default cohort")
    rows = _labels(plan)
    summary = prepare_data(data, Path(plan.cache), rows, plan.workers, pipeline, progress)
    config = TrainConfig.for_model(plan.model, split_seed=plan.split_seed)
    kw = dict(seed=plan.split_seed, test_fraction=config.test_fraction,
              pipeline_hash=summary.pipeline_hash)
    train_rows = [{"patient_id": e["patient_id"], "label": e["label"], "site": e["site"]}
                  for e in SpineDataset(Path(plan.cache), split="train", **kw).entries]
    test = load_tensors(SpineDataset(Path(plan.cache), split="test", **kw))
    extra = None
    if plan.extra_patients > 0:
        extra_data, extra_cache = plan.extra_paths()
        ensure_cohort(extra_data, CohortSpec(patients=plan.extra_patients, seed=plan.extra_seed),
                      plan.workers, progress, "extra test cohort")
        extra_summary = prepare_data(extra_data, extra_cache,
                                     _read_labels(extra_data / "labels.csv"), plan.workers,
                                     pipeline,
                                     progress and (lambda s, d, t: progress(f"extra: {s}", d, t)))
        extra = load_tensors(SpineDataset(extra_cache, split="all",
                                          pipeline_hash=extra_summary.pipeline_hash))
    return train_rows, test, extra, summary.pipeline_hash


def _done(folder: Path) -> bool:
    status = folder / "status.json"
    if status.exists():   # a federated run folder: completed, not merely started
        return json.loads(status.read_text()).get("state") == "completed" and \
            (folder / "model.pt").exists()
    return (folder / "model.pt").exists() and (folder / "metrics.json").exists()


def run_seed(plan: Plan, seed: int, train_rows: list[dict], progress: Progress | None
             ) -> tuple[float, float]:
    """Both sides of one seed (each skipped when already finished); their wall seconds."""
    root = Path(plan.out).resolve() / f"seed-{seed}"
    root.mkdir(parents=True, exist_ok=True)
    timing_path = root / "timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.exists() else {}
    spec = parse_partition(plan.partition)
    n = len({r["site"] for r in train_rows}) if spec.kind == "site" else plan.sites
    partition = partition_patients(train_rows, n, spec, seed=seed)
    write_partition(root / "partition.json", partition, train_rows, spec, seed)
    plot_partition(root / "partition.png", partition, train_rows,
                   f"{spec.label()}: training patients of {len(partition)} hospitals (seed {seed})")

    central = root / "central"
    if not _done(central) or "central" not in timing:
        config = TrainConfig.for_model(plan.model, epochs=plan.central_epochs, seed=seed,
                                       split_seed=plan.split_seed)
        result = train_centralized(Path(plan.data), Path(plan.cache), central, config,
                                   _labels(plan), plan.workers, progress and (
                                       lambda s, d, t: progress(f"seed {seed}: central {s}", d, t)))
        timing["central"] = result.seconds
        timing_path.write_text(json.dumps(timing, indent=1) + "\n")

    federated = root / "federated"
    if not _done(federated) or "federated" not in timing:
        run_config = {
            "num-rounds": plan.rounds, "local-epochs": plan.local_epochs, "model": plan.model,
            "strategy": plan.strategy, "seed": seed, "split-seed": plan.split_seed,
            "server-momentum": plan.server_momentum, "server-lr": plan.server_lr,
            "proximal-mu": plan.proximal_mu, "client-momentum": plan.client_momentum,
            "batch-size": plan.local_batch_size(len(partition)),
            "min-sites": plan.hospitals_per_round(len(partition)),
            "fraction-train": plan.fraction,
            "sim-partition": str((root / "partition.json").resolve()),
            "sim-cache": str(Path(plan.cache).resolve()),
            "test-cache": str(Path(plan.cache).resolve()), "test-split": "test"}
        on_round = progress and (lambda row: row.get("round") and progress(
            f"seed {seed}: federated rounds", int(row["round"]), plan.rounds))
        status = run_simulation(SimulationRun(
            out=federated.resolve(), run_config=run_config, hospitals=len(partition),
            cpus_per_client=plan.cpus_per_client,
            cpus=ray_cpus(plan.hospitals_per_round(len(partition)),
                          cpus_per_client=plan.cpus_per_client), on_round=on_round))
        timing["federated"] = status["wall_seconds"]
        timing_path.write_text(json.dumps(timing, indent=1) + "\n")
    return timing["central"], timing["federated"]


def score_seed(plan: Plan, seed: int, walls: tuple[float, float], test, extra,
               pipeline_hash: str) -> SeedResult:
    root = Path(plan.out).resolve() / f"seed-{seed}"
    result = SeedResult(seed, *walls)
    for side in ("central", "federated"):
        model = root / side / "model.pt"
        scores = {"test": score_model(model, test, pipeline_hash)}
        if extra is not None:
            scores["extra"] = score_model(model, extra, pipeline_hash)
        setattr(result, side, scores)
    result.central_best_epoch = int(json.loads((root / "central" / "metrics.json")
                                               .read_text())["best_epoch"])
    fed_metrics = json.loads((root / "federated" / "metrics.json").read_text())
    result.federated_best_round = int(fed_metrics["best_round"])
    rounds = root / "federated" / "rounds.jsonl"
    result.federated_rounds = [json.loads(x) for x in rounds.read_text().splitlines() if x]
    result.central_val_loss = _central_val_loss(root / "central" / "history.csv",
                                                result.central_best_epoch)
    result.federated_val_loss = next(
        (float(r["val_loss"]) for r in result.federated_rounds
         if r.get("evaluated_round") == result.federated_best_round and "val_loss" in r), None)
    (root / "scores.json").write_text(json.dumps(
        {side: {part: s.metrics for part, s in getattr(result, side).items()}
         for side in ("central", "federated")}, indent=1) + "\n")
    return result


def _central_val_loss(history: Path, epoch: int) -> float | None:
    """The validation loss of ``epoch`` in a ``spinemet train`` history.csv."""
    import csv
    try:
        with history.open(newline="") as f:
            for row in csv.DictReader(f):
                if int(row["epoch"]) == epoch and row.get("val_loss"):
                    return float(row["val_loss"])
    except (OSError, KeyError, ValueError):
        pass
    return None


def summarise(plan: Plan, results: list[SeedResult], n_partition: int) -> dict:
    """The ``reproduction.json`` content."""
    parts = ["test"] + (["extra"] if results and "extra" in results[0].central else [])
    out: dict = {
        "partition": plan.partition, "sites": n_partition, "rounds": plan.rounds,
        "local_epochs": plan.local_epochs, "central_epochs": plan.central_epochs,
        "strategy": plan.strategy, "client_momentum": plan.client_momentum,
        "model": plan.model, "fraction": plan.fraction,
        "batch_size": {"central": TrainConfig.for_model(plan.model).batch_size,
                       "local": plan.local_batch_size(n_partition), "rule": plan.local_batch},
        "seeds": [r.seed for r in results], "split_seed": plan.split_seed,
        "equal_compute": plan.compute_text(), "is_equal_compute": plan.equal_compute,
        "extra_cohort": ({"patients": plan.extra_patients, "seed": plan.extra_seed,
                          "path": str(plan.extra_paths()[0])} if "extra" in parts else None),
    }
    for side in ("central", "federated"):
        block: dict = {"per_seed": {}}
        for r in results:
            block["per_seed"][str(r.seed)] = {
                part: getattr(r, side)[part].metrics for part in parts}
            block["per_seed"][str(r.seed)]["wall_seconds"] = (r.central_wall if side == "central"
                                                              else r.federated_wall)
            if side == "central":
                block["per_seed"][str(r.seed)]["best_epoch"] = r.central_best_epoch
                block["per_seed"][str(r.seed)]["best_val_loss"] = r.central_val_loss
            else:
                block["per_seed"][str(r.seed)]["best_round"] = r.federated_best_round
                block["per_seed"][str(r.seed)]["best_val_loss"] = r.federated_val_loss
        for part in parts:
            block[part] = mean_sd([getattr(r, side)[part].metrics for r in results])
        walls = [r.central_wall if side == "central" else r.federated_wall for r in results]
        block["wall_seconds"] = {"mean": sum(walls) / len(walls), "per_seed": walls}
        out[side] = block
    out["gap_pp"], out["gap_ci_pp"] = {}, {}
    for part in parts:
        gap, ci = paired_gap([r.central[part] for r in results],
                             [r.federated[part] for r in results])
        out["gap_pp"][part], out["gap_ci_pp"][part] = gap, ci
    out["n_patients"] = {part: results[0].central[part].metrics["n_test"] for part in parts}
    out["wall_ratio"] = out["federated"]["wall_seconds"]["mean"] / \
        out["central"]["wall_seconds"]["mean"]
    return out


def run_reproduction(plan: Plan, progress: Progress | None = None) -> dict:
    t0 = time.monotonic()
    check_plan(plan)
    train_rows, test, extra, pipeline_hash = prepare(plan, progress)
    results = []
    n_partition = 0
    for seed in plan.seeds:
        walls = run_seed(plan, seed, train_rows, progress)
        results.append(score_seed(plan, seed, walls, test, extra, pipeline_hash))
        n_partition = len(json.loads((Path(plan.out) / f"seed-{seed}" / "partition.json")
                                     .read_text())["hospitals"])
    summary = summarise(plan, results, n_partition)
    summary["total_wall_seconds"] = time.monotonic() - t0
    out = Path(plan.out)
    (out / "reproduction.json").write_text(json.dumps(summary, indent=1) + "\n")
    from .reproduction_report import write_reproduction_report
    write_reproduction_report(out, summary, results)
    return summary
