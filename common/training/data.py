"""Who is fitted on, validated on and tested on: the same answer for every party.

:func:`split_tensors` loads a cache's studies into memory in three parts: the fit slice and
the validation slice of the training patients, and the test patients. ``site=None`` is the
pooled cohort (the centralized baseline); ``site="A"`` is hospital A's own view, which a
Flower client computes from its own patients alone. Because both splits are taken per site
(:func:`~spinemet.common.dataset.split_patients`, :func:`.protocol.validation_split`), the
pooled parts are exactly the union of the site parts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from ..dataset import SpineDataset
from .loop import Tensors, load_tensors
from .protocol import TrainConfig, validation_split

Progress = Callable[[str, int, int], None]


def split_tensors(cache: Path, pipeline_hash: str | None, config: TrainConfig,
                  progress: Progress | None = None, site: str | None = None
                  ) -> tuple[Tensors, Tensors, Tensors]:
    """(fit, validation, test) tensors of the pooled cohort or of one site."""
    kw = dict(seed=config.split_seed, test_fraction=config.test_fraction,
              pipeline_hash=pipeline_hash, site=site)
    train_ds = SpineDataset(cache, split="train", **kw)
    test_ds = SpineDataset(cache, split="test", **kw)
    n = len(train_ds) + len(test_ds)
    train = load_tensors(train_ds, progress and (lambda d, t: progress("loading tensors", d, n)))
    test = load_tensors(test_ds, progress and (lambda d, t: progress(
        "loading tensors", len(train_ds) + d, n))) if len(test_ds) else train.subset([])
    rows = [{"patient_id": e["patient_id"], "label": e["label"], "site": e["site"]}
            for e in train_ds.entries]
    side = validation_split(rows, config.val_fraction, config.split_seed)
    is_fit = np.array([side[p] == "fit" for p in train.patient_ids])
    return train.subset(is_fit), train.subset(~is_fit), test
