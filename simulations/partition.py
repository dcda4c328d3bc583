"""Spread a cohort's training patients over N virtual hospitals, with controlled heterogeneity.

A simulation needs more hospitals, and other kinds of difference between them, than the
cohort's own scanner sites give (the cohort spreads every class over its sites in the same
proportions on purpose: ``common/cohort/spec.py``). The partition kinds:

* ``iid``: every hospital gets the cohort's class mix and the same size (the baseline);
* ``dirichlet:ALPHA``: label skew, the recipe of Hsu et al. 2019 (Flower Datasets'
  ``DirichletPartitioner``): per class, the shares over the hospitals are drawn from
  Dirichlet(ALPHA); small ALPHA = each class lives in few hospitals, large ALPHA = iid;
* ``size:W1,W2,...`` / ``size:SIGMA``: quantity skew, explicit relative sizes or
  lognormal(0, SIGMA) ones drawn from the seed; each hospital keeps the cohort's class mix;
* ``site``: the cohort's own sites (scanner differences, no designed skew).

Partitioning is by patient, deterministic for (patients, hospitals, spec, seed), and does not
depend on the order of the rows. Every kind first decides a count table (class x hospital),
then deals each class's shuffled patients out by it, so the counts are what the tests and the
plots check, and the patients only fill them in.

Minimum size: every hospital gets at least ``min_patients`` (a hospital with one patient
cannot train or validate). When a draw leaves a hospital short (Dirichlet with small ALPHA,
tiny lognormal or explicit weights), patients move one at a time to the smallest hospital
from the currently largest one, taking that donor's most numerous class (ties: the
lower-numbered hospital, the lower class). Taking from the largest hospital's majority class
changes the shares and the skew the least, and the rule has no randomness of its own.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.optimize import Bounds, LinearConstraint, milp  # noqa: E402

from ..common.cohort.spec import CLASS_NAMES, _largest_remainder  # noqa: E402

KINDS = ("iid", "dirichlet", "size", "site")
FORMS = ("iid", "dirichlet:ALPHA (ALPHA > 0)", "size:W1,W2,... (positive relative sizes, "
         "one per hospital)", "size:SIGMA (lognormal spread > 0)", "site")
#: Beyond this many hospitals the plot shows every k-th hospital number instead of names.
_MAX_NAMED_BARS = 30


@dataclass(frozen=True)
class PartitionSpec:
    """How to partition; :func:`parse_partition` builds it from the command-line text and
    :meth:`label` writes that text back (it is what ``partition.json`` records)."""

    kind: str
    alpha: float | None = None
    weights: tuple[float, ...] | None = None
    sigma: float | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown partition kind {self.kind!r}: choose one of "
                             f"{', '.join(KINDS)}")
        if self.kind == "dirichlet" and not (self.alpha is not None and self.alpha > 0):
            raise ValueError(f"dirichlet needs alpha > 0, not {self.alpha!r}")
        if self.kind == "size":
            if (self.weights is None) == (self.sigma is None):
                raise ValueError("size needs either weights or sigma (not both)")
            if self.weights is not None and (not self.weights or min(self.weights) <= 0):
                raise ValueError(f"size weights must be positive, not {self.weights!r}")
            if self.sigma is not None and not self.sigma > 0:
                raise ValueError(f"size sigma must be > 0, not {self.sigma!r}")

    def label(self) -> str:
        if self.kind == "dirichlet":
            return f"dirichlet:{self.alpha:g}"
        if self.kind == "size":
            if self.weights is not None:
                return "size:" + ",".join(f"{w:g}" for w in self.weights)
            return f"size:lognormal:{self.sigma:g}"
        return self.kind


def _bad(text: str, why: str = "") -> ValueError:
    return ValueError(f"bad partition {text!r}{': ' + why if why else ''}; accepted forms: "
                      + "; ".join(FORMS))


def _positive_floats(text: str, parts: list[str]) -> list[float]:
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise _bad(text, "not a number") from None
    if not all(np.isfinite(v) and v > 0 for v in values):
        raise _bad(text, "values must be finite and > 0")
    return values


def parse_partition(text: str) -> PartitionSpec:
    """The spec for "iid", "dirichlet:ALPHA", "size:W1,W2,...", "size:SIGMA" or "site".

    "size:" with one number is a lognormal spread, with several the relative sizes (one per
    hospital, checked by :func:`partition_patients`, which knows the count). "size:lognormal:S"
    (what :meth:`PartitionSpec.label` writes) is accepted too, so labels parse back.
    """
    kind, sep, arg = text.strip().partition(":")
    kind = kind.lower()
    if kind in ("iid", "site") and not sep:
        return PartitionSpec(kind)
    if kind == "dirichlet" and arg:
        values = _positive_floats(text, arg.split(","))
        if len(values) != 1:
            raise _bad(text, "dirichlet takes one ALPHA")
        return PartitionSpec("dirichlet", alpha=values[0])
    if kind == "size" and arg:
        if arg.lower().startswith("lognormal:"):
            arg = arg.split(":", 1)[1]
            if "," in arg:
                raise _bad(text, "lognormal takes one SIGMA")
        values = _positive_floats(text, arg.split(","))
        if len(values) == 1:
            return PartitionSpec("size", sigma=values[0])
        return PartitionSpec("size", weights=tuple(values))
    raise _bad(text)


def hospital_names(n_hospitals: int) -> list[str]:
    """"hospital-01" ... zero-padded to the width of the count (at least two digits), so the
    names sort in hospital order."""
    width = max(2, len(str(n_hospitals)))
    return [f"hospital-{i:0{width}d}" for i in range(1, n_hospitals + 1)]


def _by_class(rows: list[dict]) -> list[list[str]]:
    """Patient ids of each class, sorted: the order of the rows must not matter."""
    out: list[list[str]] = [[] for _ in CLASS_NAMES]
    seen: set[str] = set()
    for r in sorted(rows, key=lambda r: str(r["patient_id"])):
        pid, label = str(r["patient_id"]), int(r["label"])
        if pid in seen:
            raise ValueError(f"patient {pid!r} appears twice in the rows")
        if not 0 <= label < len(CLASS_NAMES):
            raise ValueError(f"patient {pid!r} has label {label}: partitioning needs labelled "
                             f"patients (0..{len(CLASS_NAMES) - 1})")
        seen.add(pid)
        out[label].append(pid)
    return out


def _stratified_counts(class_totals: np.ndarray, weights: np.ndarray,
                       rng: np.random.Generator) -> np.ndarray:
    """Class x hospital counts: the controlled rounding of the exact table
    class_total x weight / sum(weights).

    Every cell is the floor or the ceiling of its exact value, every class total is exact,
    and every hospital size is the floor or the ceiling of N x its weight, so each hospital
    keeps the cohort's class mix as closely as integers allow and, with equal weights (iid),
    sizes differ by one patient at most, per class and in total. Rounding each class on its
    own (largest remainder) cannot promise the last two: the spare patients of every class
    would pile up in the same hospitals. Such a rounding always exists (Bacharach 1966); it is
    found as a small integer programme (scipy's ``milp``, a transportation problem), which
    hands the spares to the largest remainders, ties broken in a seeded random order rather
    than by hospital number.
    """
    k, h = len(class_totals), len(weights)
    exact = np.outer(class_totals, np.asarray(weights, float) / np.sum(weights))
    base = np.floor(exact + 1e-9)
    frac = np.clip(exact - base, 0.0, None)
    sizes = exact.sum(0)
    size_lo = np.floor(sizes + 1e-9) - base.sum(0)
    size_hi = np.ceil(sizes - 1e-9) - base.sum(0)
    spare = class_totals - base.sum(1)
    a = np.vstack([np.kron(np.eye(k), np.ones(h)), np.kron(np.ones(k), np.eye(h))])
    res = milp(-(frac + 1e-6 * rng.random(frac.shape)).ravel(),
               constraints=LinearConstraint(a, np.r_[spare, size_lo], np.r_[spare, size_hi]),
               integrality=np.ones(k * h), bounds=Bounds(0, (frac > 1e-9).ravel()))
    if res.x is None:   # cannot happen (the rounding exists); say so loudly if it does
        raise RuntimeError(f"controlled rounding failed: {res.message}")
    return (base + np.round(res.x).reshape(k, h)).astype(int)


def _dirichlet_counts(class_totals: np.ndarray, n_hospitals: int, alpha: float,
                      rng: np.random.Generator) -> np.ndarray:
    """Per class, Dirichlet(alpha) shares over the hospitals, rounded by largest remainder."""
    counts = np.zeros((len(class_totals), n_hospitals), int)
    for c, total in enumerate(class_totals):
        p = rng.dirichlet(np.full(n_hospitals, alpha))
        if not np.all(np.isfinite(p)) or p.sum() <= 0:   # alpha so small it underflows
            p = np.eye(n_hospitals)[rng.integers(n_hospitals)]
        counts[c] = _largest_remainder(int(total), p)
    return counts


def _repair_min_size(counts: np.ndarray, min_patients: int) -> np.ndarray:
    """Move patients to hospitals under ``min_patients`` (the rule: module docstring)."""
    counts = counts.copy()
    sizes = counts.sum(0)
    while sizes.min() < min_patients:
        small, large = int(np.argmin(sizes)), int(np.argmax(sizes))
        c = int(np.argmax(counts[:, large]))
        counts[c, large] -= 1
        counts[c, small] += 1
        sizes[large] -= 1
        sizes[small] += 1
    return counts


def _site_partition(rows: list[dict], n_hospitals: int, min_patients: int
                    ) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for r in rows:
        groups.setdefault(str(r["site"]), []).append(str(r["patient_id"]))
    if n_hospitals != len(groups):
        raise ValueError(f"partition 'site' keeps the cohort's {len(groups)} sites "
                         f"({', '.join(sorted(groups))}), but {n_hospitals} hospitals were "
                         f"asked for: pass {len(groups)}")
    short = sorted(s for s, ids in groups.items() if len(ids) < min_patients)
    if short:
        raise ValueError(f"sites with fewer than {min_patients} training patients: "
                         f"{', '.join(short)}")
    return {site: sorted(ids) for site, ids in sorted(groups.items())}


def partition_patients(rows: list[dict], n_hospitals: int, spec: PartitionSpec,
                       seed: int = 0, min_patients: int = 2) -> dict[str, list[str]]:
    """{hospital name: sorted patient ids}; every patient of ``rows`` in exactly one hospital.

    For ``site`` the hospitals are the cohort's sites, named as in the rows; ``n_hospitals``
    is checked against their number (a run asked for 100 hospitals must not silently get 5),
    and a site with fewer than ``min_patients`` is an error (its patients cannot be moved: the
    point of this kind is the real grouping). For the other kinds the hospitals are
    "hospital-01" ... (:func:`hospital_names`).
    """
    by_class = _by_class(rows)
    if spec.kind == "site":
        return _site_partition(rows, n_hospitals, min_patients)
    n = sum(len(ids) for ids in by_class)
    if n_hospitals < 1:
        raise ValueError(f"n_hospitals must be at least 1, not {n_hospitals}")
    if n < n_hospitals * min_patients:
        raise ValueError(f"{n} patients cannot give {n_hospitals} hospitals at least "
                         f"{min_patients} each (that needs {n_hospitals * min_patients})")

    rng = np.random.default_rng(seed)
    totals = np.array([len(ids) for ids in by_class])
    if spec.kind == "iid":
        counts = _stratified_counts(totals, np.ones(n_hospitals), rng)
    elif spec.kind == "dirichlet":
        counts = _dirichlet_counts(totals, n_hospitals, float(spec.alpha), rng)
    else:
        if spec.weights is not None:
            if len(spec.weights) != n_hospitals:
                raise ValueError(f"partition {spec.label()!r} gives {len(spec.weights)} sizes "
                                 f"for {n_hospitals} hospitals")
            weights = np.asarray(spec.weights, float)
        else:
            weights = rng.lognormal(0.0, float(spec.sigma), n_hospitals)
        counts = _stratified_counts(totals, weights, rng)
    counts = _repair_min_size(counts, min_patients)

    names = hospital_names(n_hospitals)
    out: dict[str, list[str]] = {name: [] for name in names}
    for c, ids in enumerate(by_class):
        order = rng.permutation(len(ids))
        for name, part in zip(names, np.split(order, np.cumsum(counts[c])[:-1])):
            out[name].extend(ids[i] for i in part)
    return {name: sorted(ids) for name, ids in out.items()}


def partition_summary(partition: dict[str, list[str]], rows: list[dict]) -> dict:
    """Patients and class counts per hospital and in total (what the plot and the file show)."""
    label = {str(r["patient_id"]): int(r["label"]) for r in rows}
    k = len(CLASS_NAMES)
    hospitals = {}
    for name, ids in partition.items():
        cc = np.bincount([label[p] for p in ids], minlength=k)
        hospitals[name] = {"patients": len(ids), "class_counts": [int(v) for v in cc]}
    total = np.sum([h["class_counts"] for h in hospitals.values()], axis=0, dtype=int) \
        if hospitals else np.zeros(k, int)
    return {"hospitals": hospitals, "total": int(total.sum()),
            "class_counts": [int(v) for v in total]}


def write_partition(path: Path, partition: dict[str, list[str]], rows: list[dict],
                    spec: PartitionSpec, seed: int) -> None:
    """``partition.json``: the spec's label, the seed and every hospital's patients, written
    atomically so a crashed run never leaves half a partition for the next one to read."""
    path = Path(path)
    summary = partition_summary(partition, rows)
    doc = {"partition": spec.label(), "seed": int(seed), "n_hospitals": len(partition),
           "class_names": list(CLASS_NAMES),
           "hospitals": {name: {"patients": list(ids),
                                "class_counts": summary["hospitals"][name]["class_counts"]}
                         for name, ids in partition.items()},
           "class_counts": summary["class_counts"]}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)


def read_partition(path: Path) -> dict[str, list[str]]:
    """The {hospital: patient ids} of a :func:`write_partition` file, checked: every patient
    once, every id a string."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read partition file {path}: {e}") from None
    hospitals = doc.get("hospitals") if isinstance(doc, dict) else None
    if not isinstance(hospitals, dict) or not hospitals:
        raise ValueError(f"partition file {path} has no 'hospitals' mapping")
    out: dict[str, list[str]] = {}
    seen: set[str] = set()
    for name, entry in hospitals.items():
        ids = entry.get("patients") if isinstance(entry, dict) else None
        if not isinstance(ids, list) or not all(isinstance(p, str) for p in ids):
            raise ValueError(f"partition file {path}: hospital {name!r} has no list of "
                             f"patient ids")
        twice = seen.intersection(ids) or (len(set(ids)) < len(ids))
        if twice:
            raise ValueError(f"partition file {path}: patients assigned twice "
                             f"(at {name!r})")
        seen.update(ids)
        out[str(name)] = list(ids)
    if "n_hospitals" in doc and doc["n_hospitals"] != len(out):
        raise ValueError(f"partition file {path} says {doc['n_hospitals']} hospitals but "
                         f"lists {len(out)}")
    return out


def plot_partition(path: Path, partition: dict[str, list[str]], rows: list[dict],
                   title: str) -> None:
    """Stacked bars of each hospital's class counts (PNG). Names label the bars up to
    :data:`_MAX_NAMED_BARS` hospitals; beyond that the axis shows hospital numbers, thinned,
    and the figure widens only up to a readable page width."""
    summary = partition_summary(partition, rows)
    names = list(summary["hospitals"])
    counts = np.array([summary["hospitals"][n]["class_counts"] for n in names]).reshape(
        len(names), len(CLASS_NAMES))
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(min(4.0 + 0.32 * len(names), 14.0), 4.0), dpi=120)
    bottom = np.zeros(len(names))
    for c, cls in enumerate(CLASS_NAMES):
        ax.bar(x, counts[:, c], bottom=bottom, width=0.85 if len(names) <= _MAX_NAMED_BARS
               else 1.0, label=cls, color=plt.cm.tab10(c), linewidth=0)
        bottom += counts[:, c]
    if len(names) <= _MAX_NAMED_BARS:
        ax.set_xticks(x, names, fontsize=8)
        if len(names) > 6:
            plt.setp(ax.get_xticklabels(), rotation=60, ha="right", rotation_mode="anchor")
        ax.set_xlabel("hospital")
    else:
        step = int(np.ceil(len(names) / 20))
        ax.set_xticks(x[::step], [str(i + 1) for i in x[::step]], fontsize=8)
        ax.set_xlabel(f"hospital (number, {len(names)} in all)")
        ax.set_xlim(-0.5, len(names) - 0.5)
    ax.set_ylabel("patients")
    ax.set_title(title, fontsize=10)
    ax.legend(title="class", fontsize=8, title_fontsize=8, frameon=False, loc="upper left",
              bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
