"""What a cohort is: its settings, its classes, and which patient goes to which site.

Everything is derived from the cohort seed. Each patient has its own seed
(``SeedSequence([cohort_seed, patient_index])``) so any patient can be regenerated alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .scanners import site_name

CLASS_NAMES: tuple[str, str, str] = ("normal", "mild", "apparent")
#: Wang et al. 2023: 305 without, 320 with mild, 316 with apparent metastasis.
PAPER_CLASS_COUNTS: tuple[int, int, int] = (305, 320, 316)


# Tuned on cohorts of other seeds (100-102) so that the paper's CNN lands near the paper's
# accuracy, then frozen (README, "Calibrating the cohort"): 0 is the easiest end of the
# range and the paper's CNN reaches 92-93 % there.
DEFAULT_DIFFICULTY = 0.0


@dataclass(frozen=True)
class CohortSpec:
    """Settings that define a cohort. The same spec always yields the same files."""

    patients: int = 941
    sites: int = 5
    seed: int = 0
    difficulty: float = DEFAULT_DIFFICULTY

    def __post_init__(self) -> None:
        if self.patients < 3:
            raise ValueError(f"--patients must be at least 3 (one per class), got {self.patients}")
        if not 1 <= self.sites <= self.patients:
            raise ValueError(f"--sites must be between 1 and the number of patients, got {self.sites}")
        if not 0.0 <= self.difficulty <= 1.0:
            raise ValueError(f"difficulty must be within 0..1, got {self.difficulty}")

    def class_counts(self) -> tuple[int, int, int]:
        """Patients per class in the paper's proportions (exactly 305/320/316 for 941)."""
        return tuple(int(c) for c in _largest_remainder(
            self.patients, np.array(PAPER_CLASS_COUNTS, float)))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PatientPlan:
    index: int
    patient_id: str
    label: int
    site_index: int
    site: str

    @property
    def label_name(self) -> str:
        return CLASS_NAMES[self.label]


def patient_id(seed: int, index: int) -> str:
    return f"sm{seed}-{index + 1:04d}"


def patient_seed(seed: int, index: int, attempt: int = 0) -> np.random.SeedSequence:
    entropy = [seed, index] if attempt == 0 else [seed, index, attempt]
    return np.random.SeedSequence(entropy)


def _largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
    share = total * weights / weights.sum()
    counts = np.floor(share).astype(int)
    order = np.argsort(-(share - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


def plan_cohort(spec: CohortSpec) -> list[PatientPlan]:
    """Assign a class and a site to every patient.

    Sites differ in size (Dirichlet weights) but not in class mix: every class is spread over
    the sites in the same proportions, so the site says nothing about the label (label skew
    across hospitals is the simulation partitioner's job, where it can be controlled).
    """
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 0x5173]))
    weights = rng.dirichlet(np.full(spec.sites, 5.0)) if spec.sites > 1 else np.ones(1)
    weights = np.maximum(weights, 0.5 / spec.sites)
    pairs = []
    for label, n in enumerate(spec.class_counts()):
        per_site = _largest_remainder(n, weights)
        for site, m in enumerate(per_site):
            pairs += [(label, site)] * int(m)
    order = rng.permutation(len(pairs))
    return [PatientPlan(i, patient_id(spec.seed, i), pairs[j][0], pairs[j][1],
                        site_name(pairs[j][1]))
            for i, j in enumerate(order)]
