"""A hospital's own patients, as the ClientApp sees them.

The SuperNode's node config says where they are (``spinemet-client`` writes it):
``site`` (the hospital's name), ``data-path`` (its DICOM folder) and ``cache-path`` (the
preprocessing cache ``spinemet-client`` filled before it joined). The parts (fit /
validation / test) come from the dataset's one split function with the run's split seed, so
the coordinator never needs to know who is in them.

In simulation (:mod:`spinemet.simulations`) a virtual hospital is one entry of a
``partition.json`` over the pooled cohort's TRAINING patients: the node config also names
``partition-file``, and the hospital's fit and validation parts are its patients' share of
the pooled fit and validation parts (so the federation fits and selects on exactly the
centralized baseline's patients); it holds no test patient (the coordinator scores the
common test split).

A ClientApp process may serve many messages (or only one: Flower starts one per message
in subprocess isolation), so the loaded tensors are kept per (cache, split) in the process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..common.preprocess.pipeline import default_pipeline
from ..common.training.data import split_tensors
from ..common.training.loop import Tensors
from ..common.training.protocol import TrainConfig

_LOADED: dict[tuple, object] = {}   # SiteData, or pooled (fit, val) tensors


@dataclass
class SiteData:
    site: str
    fit: Tensors
    val: Tensors
    test: Tensors
    pipeline_hash: str
    input_shape: tuple[int, int, int]

    def counts(self) -> dict[str, list[int]]:
        return {"fit": self.fit.class_counts(), "val": self.val.class_counts(),
                "test": self.test.class_counts()}


def node_paths(node_config: dict) -> tuple[str, Path]:
    """(site name, cache folder) from a node config; KeyError names what is missing."""
    missing = [k for k in ("site", "cache-path") if not str(node_config.get(k, "")).strip()]
    if missing:
        raise KeyError(f"node config lacks {', '.join(missing)} (start the site with "
                       "`spinemet-client`, which sets them)")
    return str(node_config["site"]), Path(str(node_config["cache-path"]))


def load_site(node_config: dict, config: TrainConfig) -> SiteData:
    site, cache = node_paths(node_config)
    pipeline = default_pipeline()
    if node_config.get("partition-file"):
        return _load_partition(site, cache, Path(str(node_config["partition-file"])), config,
                               pipeline)
    key = (str(cache.resolve()), pipeline.hash(), config.split_seed, config.test_fraction,
           config.val_fraction, node_config.get("cache-site"))
    if key not in _LOADED:
        fit, val, test = split_tensors(cache, pipeline.hash(), config,
                                       site=node_config.get("cache-site") or None)
        _LOADED[key] = SiteData(site, fit, val, test, pipeline.hash(),
                                tuple(pipeline.output_shape))
    return _LOADED[key]


def _pooled(cache: Path, pipeline_hash: str, config: TrainConfig) -> tuple[Tensors, Tensors]:
    key = (str(cache.resolve()), pipeline_hash, config.split_seed, config.test_fraction,
           config.val_fraction, "pooled")
    if key not in _LOADED:
        fit, val, _ = split_tensors(cache, pipeline_hash, config)
        _LOADED[key] = (fit, val)
    return _LOADED[key]


def _load_partition(site: str, cache: Path, partition_file: Path, config: TrainConfig,
                    pipeline) -> SiteData:
    """A virtual hospital: its share of the pooled fit and validation patients."""
    key = (str(cache.resolve()), pipeline.hash(), config.split_seed, config.test_fraction,
           config.val_fraction, str(partition_file.resolve()), site)
    if key in _LOADED:
        return _LOADED[key]
    try:
        patients = set(json.loads(partition_file.read_text())["hospitals"][site]["patients"])
    except (OSError, ValueError, KeyError, TypeError):
        raise ValueError(f"{partition_file} does not list hospital {site!r}") from None
    fit, val = _pooled(cache, pipeline.hash(), config)
    mine = lambda t: t.subset(np.array([p in patients for p in t.patient_ids], bool))
    fit_part, val_part = mine(fit), mine(val)
    _LOADED[key] = SiteData(site, fit_part, val_part,
                            fit_part.subset(np.zeros(len(fit_part), bool)), pipeline.hash(),
                            tuple(pipeline.output_shape))
    return _LOADED[key]
