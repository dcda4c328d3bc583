"""The dataset over the preprocessing cache: one split function, a pooled view and site views.

As in FLamby's ``Fed<X>(center, train, pooled)``, one class serves the centralized (pooled)
view and each hospital's view, and one function decides who is in the test set, so
centralized, federated and simulated runs see exactly the same patients:

* :func:`split_patients` splits each site's patients 80/20, stratified by label, by patient,
  with a fixed seed. A site can run it on its own patients alone (it needs nothing from other
  sites), and the pooled split is the union of the site splits.
* :class:`SpineDataset` reads the cache index; ``site=None`` is the pooled view.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset

from .preprocess.cache import TensorCache, read_index

SPLITS = ("train", "test", "all")


def _site_seed(seed: int, site: str) -> int:
    digest = hashlib.sha256(f"{seed}:{site}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def split_patients(rows: Iterable[dict], test_fraction: float = 0.2, seed: int = 0
                   ) -> dict[str, str]:
    """{patient_id: 'train' | 'test'} for labelled rows (patient_id, label, site).

    Each site is split on its own, stratified by label where every class has at least two
    patients there (otherwise a plain random split), so a hospital computes its own split.
    """
    by_site: dict[str, dict[str, int]] = {}
    for r in rows:
        if int(r["label"]) < 0:
            continue
        by_site.setdefault(str(r.get("site", "")), {})[str(r["patient_id"])] = int(r["label"])
    out: dict[str, str] = {}
    for site, patients in sorted(by_site.items()):
        ids = sorted(patients)
        labels = [patients[p] for p in ids]
        if len(ids) < 2:
            out.update({p: "train" for p in ids})
            continue
        n_test = max(1, int(round(test_fraction * len(ids))))
        counts = np.bincount(labels)
        stratify = labels if (counts[counts > 0].min() >= 2 and
                              n_test >= len(counts[counts > 0])) else None
        train, test = train_test_split(ids, test_size=n_test, stratify=stratify,
                                       random_state=_site_seed(seed, site))
        out.update({p: "train" for p in train})
        out.update({p: "test" for p in test})
    return out


class SpineDataset(Dataset):
    """Preprocessed studies: (image tensor (C, H, W), label) pairs.

    Parameters
    ----------
    cache : the ``--cache`` folder of ``spinemet preprocess``.
    site : a hospital's name, or None for the pooled (centralized) view.
    split : 'train', 'test' or 'all'.
    seed, test_fraction : of :func:`split_patients`.
    pipeline_hash : which pipeline's results (default: the most recent run).
    """

    def __init__(self, cache: Path, site: str | None = None, split: str = "train",
                 seed: int = 0, test_fraction: float = 0.2, pipeline_hash: str | None = None,
                 require_all_sequences: bool = True):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
        root, index = read_index(Path(cache), pipeline_hash)
        self.cache = TensorCache(root.parent, index["pipeline_hash"])
        entries = [e for e in index["studies"] if e["label"] >= 0 and
                   (not require_all_sequences or not e["missing"])]
        self.assignment = split_patients(entries, test_fraction, seed)
        self.entries = [e for e in entries
                        if (site is None or e["site"] == site)
                        and (split == "all" or self.assignment[e["patient_id"]] == split)]
        self.entries.sort(key=lambda e: e["patient_id"])
        self.site, self.split = site, split

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        e = self.entries[i]
        image, _ = self.cache.load(e["key"])
        return torch.from_numpy(image), int(e["label"])

    @property
    def labels(self) -> np.ndarray:
        return np.array([e["label"] for e in self.entries], int)

    @property
    def patient_ids(self) -> list[str]:
        return [e["patient_id"] for e in self.entries]

    @property
    def sites(self) -> list[str]:
        return sorted({e["site"] for e in self.entries})
