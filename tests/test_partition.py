"""The simulation partitioner: every patient once, deterministic, and each kind gives the
heterogeneity it promises (iid balanced, Dirichlet skewed by alpha, sizes as asked)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from spinemet.simulations.partition import (PartitionSpec, parse_partition, partition_patients,
                                            partition_summary, plot_partition, read_partition,
                                            write_partition)

SITES = ("hospital-a", "hospital-b", "hospital-c", "hospital-d", "hospital-e")
KINDS = ("iid", "dirichlet:0.5", "size:0.4,0.3,0.1,0.1,0.1", "size:1", "site")


def _rows(n: int = 750, seed: int = 3) -> list[dict]:
    """n training patients in the paper's 305/320/316 class proportions over five sites."""
    counts = np.round(n * np.array([305, 320, 316]) / 941).astype(int)
    counts[-1] = n - counts[:-1].sum()
    labels = np.repeat([0, 1, 2], counts)
    rng = np.random.default_rng(seed)
    sites = rng.choice(len(SITES), n, p=[0.3, 0.25, 0.2, 0.15, 0.1])
    return [{"patient_id": f"P{i:04d}", "label": int(y), "site": SITES[s]}
            for i, (y, s) in enumerate(zip(rng.permutation(labels), sites))]


ROWS = _rows()


def _mixes(partition: dict, rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(hospital x class proportions, global class proportions)."""
    s = partition_summary(partition, rows)
    cc = np.array([h["class_counts"] for h in s["hospitals"].values()], float)
    return cc / cc.sum(1, keepdims=True), np.array(s["class_counts"]) / s["total"]


def _mean_tv(partition: dict, rows: list[dict]) -> float:
    """Mean total-variation distance of the hospitals' class mix from the cohort's."""
    mix, overall = _mixes(partition, rows)
    return float(0.5 * np.abs(mix - overall).sum(1).mean())


@pytest.mark.parametrize("text", KINDS)
def test_every_patient_exactly_once(text):
    part = partition_patients(ROWS, 5, parse_partition(text), seed=1)
    ids = [p for hospital in part.values() for p in hospital]
    assert len(ids) == len(ROWS) == 750
    assert sorted(ids) == sorted(r["patient_id"] for r in ROWS)
    assert all(hospital == sorted(hospital) and len(hospital) >= 2 for hospital in part.values())
    if text != "site":
        assert list(part) == [f"hospital-0{i}" for i in range(1, 6)]


@pytest.mark.parametrize("text", KINDS)
def test_deterministic_and_independent_of_row_order(text):
    spec = parse_partition(text)
    shuffled = ROWS[:]
    random.Random(9).shuffle(shuffled)
    first = partition_patients(ROWS, 5, spec, seed=4)
    assert partition_patients(shuffled, 5, spec, seed=4) == first
    assert partition_patients(ROWS, 5, spec, seed=4) == first
    if text != "site":
        assert partition_patients(ROWS, 5, spec, seed=5) != first


def test_iid_is_stratified_and_balanced():
    for n in (5, 7, 100):
        part = partition_patients(ROWS, n, PartitionSpec("iid"), seed=2)
        cc = np.array([h["class_counts"]
                       for h in partition_summary(part, ROWS)["hospitals"].values()])
        assert (cc.max(0) - cc.min(0)).max() <= 1          # per class: floor or ceiling
        sizes = cc.sum(1)
        assert sizes.max() - sizes.min() <= 1
    mix, overall = _mixes(partition_patients(ROWS, 5, PartitionSpec("iid")), ROWS)
    assert np.abs(mix - overall).max() < 0.01              # 150 patients a hospital


def test_dirichlet_skews_labels_by_alpha():
    n = 10
    iid = np.mean([_mean_tv(partition_patients(ROWS, n, PartitionSpec("iid"), seed=s), ROWS)
                   for s in range(3)])
    skewed = np.mean([_mean_tv(partition_patients(ROWS, n, parse_partition("dirichlet:0.5"),
                                                  seed=s), ROWS) for s in range(3)])
    flat = np.mean([_mean_tv(partition_patients(ROWS, n, parse_partition("dirichlet:1000"),
                                                seed=s), ROWS) for s in range(3)])
    assert iid < 0.02
    assert skewed > iid + 0.2                                # typically about 0.35
    assert flat < 0.05


def test_min_patients_with_100_hospitals_and_strong_skew():
    part = partition_patients(ROWS, 100, parse_partition("dirichlet:0.1"), seed=0,
                              min_patients=3)
    sizes = [len(v) for v in part.values()]
    assert len(part) == 100 and min(sizes) >= 3 and sum(sizes) == 750
    assert list(part)[0] == "hospital-001" and list(part)[-1] == "hospital-100"
    assert _mean_tv(part, ROWS) > 0.4                       # still strongly skewed
    with pytest.raises(ValueError, match="cannot give 100 hospitals at least 8"):
        partition_patients(ROWS, 100, PartitionSpec("iid"), min_patients=8)


def test_size_weights_give_the_requested_shares():
    weights = (0.4, 0.3, 0.1, 0.1, 0.1)
    part = partition_patients(ROWS, 5, PartitionSpec("size", weights=weights), seed=0)
    sizes = np.array([len(v) for v in part.values()])
    assert np.all(np.abs(sizes - 750 * np.array(weights)) < 1)
    mix, overall = _mixes(part, ROWS)
    assert np.abs(mix - overall).max() < 0.02              # class mix kept (75-patient minimum)
    lognormal = partition_patients(ROWS, 20, parse_partition("size:1"), seed=0)
    sizes = [len(v) for v in lognormal.values()]
    assert max(sizes) > 3 * min(sizes) and min(sizes) >= 2
    with pytest.raises(ValueError, match="gives 5 sizes for 4 hospitals"):
        partition_patients(ROWS, 4, PartitionSpec("size", weights=weights))


def test_site_partition_is_the_grouping_by_site():
    part = partition_patients(ROWS, 5, PartitionSpec("site"))
    expected = {s: sorted(r["patient_id"] for r in ROWS if r["site"] == s) for s in SITES}
    assert part == expected
    with pytest.raises(ValueError, match="keeps the cohort's 5 sites"):
        partition_patients(ROWS, 10, PartitionSpec("site"))


def test_parse_and_labels():
    assert parse_partition("iid") == PartitionSpec("iid")
    assert parse_partition("dirichlet:0.5") == PartitionSpec("dirichlet", alpha=0.5)
    assert parse_partition("size:0.4,0.3,0.3").weights == (0.4, 0.3, 0.3)
    assert parse_partition("size:1").sigma == 1.0
    for text in ("iid", "dirichlet:0.5", "size:0.4,0.3,0.3", "size:lognormal:1", "site"):
        assert parse_partition(text).label() == text
    for bad in ("dirichlet", "dirichlet:0", "dirichlet:-1", "dirichlet:x", "size:", "size:1,-2",
                "iid:3", "pathological:2", ""):
        with pytest.raises(ValueError) as err:
            parse_partition(bad)
        assert repr(bad) in str(err.value) and "dirichlet:ALPHA" in str(err.value)


def test_write_read_round_trip(tmp_path):
    spec = parse_partition("dirichlet:0.5")
    part = partition_patients(ROWS, 5, spec, seed=7)
    path = tmp_path / "run" / "partition.json"
    write_partition(path, part, ROWS, spec, seed=7)
    assert read_partition(path) == part
    text = path.read_text()
    doc = json.loads(text)
    assert text.endswith("}\n") and doc["partition"] == "dirichlet:0.5" and doc["seed"] == 7
    assert doc["n_hospitals"] == 5 and sum(doc["class_counts"]) == 750
    assert doc["hospitals"]["hospital-01"]["class_counts"] == \
        partition_summary(part, ROWS)["hospitals"]["hospital-01"]["class_counts"]
    assert list(path.parent.iterdir()) == [path]              # no temporary file left
    path.write_text('{"hospitals": {"hospital-01": {"patients": [1, 2]}}}')
    with pytest.raises(ValueError, match="partition.json"):
        read_partition(path)
    path.write_text("not json")
    with pytest.raises(ValueError, match="partition.json"):
        read_partition(path)


@pytest.mark.parametrize("n", [5, 100])
def test_plot_writes_png(tmp_path, n):
    part = partition_patients(ROWS, n, parse_partition("dirichlet:0.5"), seed=0)
    path = tmp_path / f"partition_{n}.png"
    plot_partition(path, part, ROWS, f"dirichlet 0.5, {n} hospitals")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
