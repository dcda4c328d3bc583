"""A hospital's own patients, as the ClientApp sees them.

The SuperNode's node config says where they are (``spinemet-client`` writes it):
``site`` (the hospital's name), ``data-path`` (its DICOM folder) and ``cache-path`` (the
preprocessing cache ``spinemet-client`` filled before it joined). In simulation, the
partition's node config names the same keys. The parts (fit / validation / test) come from
the dataset's one split function with the run's split seed, so the coordinator never needs
to know who is in them.

A ClientApp process may serve many messages (or only one: Flower starts one per message
in subprocess isolation), so the loaded tensors are kept per (cache, split) in the process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..common.preprocess.pipeline import default_pipeline
from ..common.training.data import split_tensors
from ..common.training.loop import Tensors
from ..common.training.protocol import TrainConfig

_LOADED: dict[tuple, "SiteData"] = {}


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
    key = (str(cache.resolve()), pipeline.hash(), config.split_seed, config.test_fraction,
           config.val_fraction, node_config.get("cache-site"))
    if key not in _LOADED:
        fit, val, test = split_tensors(cache, pipeline.hash(), config,
                                       site=node_config.get("cache-site") or None)
        _LOADED[key] = SiteData(site, fit, val, test, pipeline.hash(),
                                tuple(pipeline.output_shape))
    return _LOADED[key]
