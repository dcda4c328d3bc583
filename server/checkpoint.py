"""Checkpoints: everything a run needs to continue after the coordinator dies.

``RUN/checkpoints/round-NNNN.pt`` after every round, written to a temporary file and renamed
(a kill mid-write leaves the previous checkpoint whole). It holds only tensors and plain
values, so it loads with ``torch.load(weights_only=True)``::

    {"round": r, "weights": {...}, "best": {"round": b, "val_loss": x, "weights": {...}},
     "strategy": {"name": "fedadam", "m_t": {...}, "v_t": {...}},
     "rng": {"seed": s}, "settings": {...}, "global_counts": [..3], "pending_eval": {...},
     "history": [...rounds.jsonl rows...]}

Node sampling draws from a generator seeded by (seed, round), so the seed is the whole RNG
state; clients are stateless between rounds (a fresh optimiser and a seed derived from
(seed, site, round)), so weights + round + strategy moments determine the rest of the run.
"""

from __future__ import annotations

from pathlib import Path

import torch

KEEP = 3   # the newest checkpoints kept (resume needs the last one)


def checkpoint_dir(run: Path) -> Path:
    return Path(run) / "checkpoints"


def save_checkpoint(run: Path, blob: dict) -> Path:
    folder = checkpoint_dir(run)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"round-{int(blob['round']):04d}.pt"
    tmp = path.with_suffix(".partial")
    torch.save(blob, tmp)
    tmp.replace(path)
    for old in sorted(folder.glob("round-*.pt"))[:-KEEP]:
        old.unlink(missing_ok=True)
    return path


def latest_checkpoint(run: Path) -> Path | None:
    found = sorted(checkpoint_dir(run).glob("round-*.pt"))
    return found[-1] if found else None


def load_checkpoint(path: Path) -> dict:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable SpineMet checkpoint ({type(exc).__name__}); "
                         "delete it to resume from the one before") from None
    if not isinstance(blob, dict) or "round" not in blob or "weights" not in blob:
        raise ValueError(f"{path}: not a SpineMet checkpoint (no round/weights)")
    return blob
