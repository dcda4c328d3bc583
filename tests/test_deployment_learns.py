"""The deployment learns: three hospitals with TLS and enrolment, two rounds, and the pooled
held-out accuracy beats chance (a one-sided binomial test against 1/3).

The other deployment tests (``test_deployment.py``) use 24 patients: enough for every
protocol path, too few to learn from. Here the hospitals hold 29, 71 and 80 patients of a
180-patient cohort (seed 22; the cohort's sites differ in size): 122 fit patients in all,
36 held out. The sigmoid ``paper`` CNN stays at
chance on so few studies in two rounds (measured in process: 2 x 20, 2 x 60 local epochs at
batch 8 and 2 x 40 at batch 4, all at chance), so this run trains ``resnet-gn``, 20 local
epochs per round at batch 8; the same in-process loop reached 23/36 and 24/36 on two cohorts
of this size (seeds 21 and 22) and 13/29 on a 150-patient one, so 180 is the size used.
"""

from __future__ import annotations

import json

import pytest
from deployment import Procs, assert_completed, copy_cache, wait_for
from scipy.stats import binomtest

from spinemet.common.certs import init_pki
from spinemet.common.cohort.spec import CohortSpec
from spinemet.common.cohort.writer import read_labels, write_cohort
from spinemet.common.preprocess.runner import preprocess
from spinemet.common.processes import free_port

pytestmark = pytest.mark.deployment

PUBLIC = "127.0.0.2"
SPEC = CohortSpec(patients=180, sites=3, seed=22)
RUN_ARGS = ("--rounds", "2", "--local-epochs", "20", "--model", "resnet-gn",
            "--set", "batch-size=8", "--min-sites", "3", "--wait-for-sites", "300",
            "--round-timeout", "600", "--seed", "5")


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    root = tmp_path_factory.mktemp("learns")
    cohort = root / "cohort"
    write_cohort(SPEC, cohort, 2)
    sites = sorted({r["site"] for r in read_labels(cohort / "labels.csv")})
    assert len(sites) == 3
    init_pki(root / "pki", f"localhost,{PUBLIC}", sites)
    procs = Procs(root)
    port = free_port(PUBLIC)
    run = root / "run"
    try:
        caches = {}
        for site in sites:     # preprocessed with both cores first; each client reuses it
            caches[site] = root / f"cache-{site}"
            summary = preprocess(cohort / site, caches[site],
                                 read_labels(cohort / site / "labels.csv"), workers=2)
            assert not summary.failed
        server = procs.server(run, root / "pki" / "coordinator", PUBLIC, port, *RUN_ARGS)
        clients = [procs.client(site, cohort / site, f"{PUBLIC}:{port}",
                                root / "pki" / "sites" / site,
                                copy_cache(caches[site], root / f"client-cache-{site}"),
                                free_port())
                   for site in sites]
        wait_for(lambda: server.p.poll() is not None, 1200, "the run to finish",
                 [server, *clients])
        code = server.wait(120)
        result = {"run": run, "code": code, "log": server.text()}
    finally:
        procs.close()
    return result


def test_three_hospitals_beat_chance_in_two_rounds(learned):
    run = learned["run"]
    assert_completed(run, learned["code"], learned["log"])
    metrics = json.loads((run / "metrics.json").read_text())
    n = metrics["n_test"]
    cm = metrics["confusion_matrix"]
    correct = sum(cm[i][i] for i in range(3))
    assert n >= 30 and sum(map(sum, cm)) == n       # the three hospitals' held-out patients
    p = binomtest(correct, n, 1 / 3, alternative="greater").pvalue
    assert p < 0.01, (correct, n, p, cm)
    # more than one class is predicted: not a constant answer that happens to fit the mix
    assert sum(1 for j in range(3) if sum(cm[i][j] for i in range(3)) > 0) >= 2, cm
