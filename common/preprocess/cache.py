"""The preprocessing cache: tensors keyed by the input files' content and the pipeline's hash.

Layout::

    CACHE/files.pkl                       per input file: (size, mtime_ns) -> header, sha256
    CACHE/<pipeline hash[:16]>/pipeline.json
    CACHE/<pipeline hash[:16]>/studies/<key>.npz   image (C, H, W) float32 + meta JSON
    CACHE/<pipeline hash[:16]>/index.json          one entry per study of the last run
    CACHE/<pipeline hash[:16]>/last-run.json       what the last run saw (tree signature)

A study's key is the SHA-256 of the pipeline hash and the content hashes of the files of the
series it uses, so changing a parameter or a file recomputes it and changing nothing reuses
it. File content hashes and headers are remembered by (size, mtime) so a run on unchanged
data reads no DICOM at all; and when nothing under the data folder changed since the last
run (same files, sizes and modification times, same labels), the last run's index is
reused without even loading the header memo.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class FileMemo:
    """Headers and content hashes of input files, valid while size and mtime are unchanged."""

    path: Path
    entries: dict

    @classmethod
    def load(cls, cache: Path) -> "FileMemo":
        path = cache / "files.pkl"
        try:
            with path.open("rb") as fh:
                return cls(path, pickle.load(fh))
        except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError):
            return cls(path, {})     # no memo yet, or one from another version: rebuild

    def get(self, f: Path, st: os.stat_result):
        e = self.entries.get(str(f))
        if e and e[0] == st.st_size and e[1] == st.st_mtime_ns:
            return e[2], e[3]
        return None

    def put(self, f: Path, st: os.stat_result, header, sha: str) -> None:
        self.entries[str(f)] = (st.st_size, st.st_mtime_ns, header, sha)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".partial")
        with tmp.open("wb") as fh:
            pickle.dump(self.entries, fh, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, self.path)


class TensorCache:
    """The folder of one pipeline's results."""

    def __init__(self, cache: Path, pipeline_hash: str, params: dict | None = None):
        self.root = Path(cache) / pipeline_hash[:16]
        self.pipeline_hash = pipeline_hash
        (self.root / "studies").mkdir(parents=True, exist_ok=True)
        if params is not None:
            (self.root / "pipeline.json").write_text(
                json.dumps({"hash": pipeline_hash, **params}, indent=2, default=list) + "\n")

    def key(self, file_hashes: list[str]) -> str:
        h = hashlib.sha256(self.pipeline_hash.encode())
        for s in file_hashes:
            h.update(s.encode())
        return h.hexdigest()[:32]

    def path(self, key: str) -> Path:
        return self.root / "studies" / f"{key}.npz"

    def has(self, key: str) -> bool:
        return self.path(key).exists()

    def save(self, key: str, image: np.ndarray, meta: dict) -> None:
        tmp = self.path(key).with_suffix(".partial")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
            for name, arr in (("image", image.astype(np.float32)),
                              ("meta", np.array(json.dumps(meta)))):
                with zf.open(f"{name}.npy", "w") as fh:
                    np.lib.format.write_array(fh, arr, allow_pickle=False)
        os.replace(tmp, self.path(key))

    def load(self, key: str) -> tuple[np.ndarray, dict]:
        with np.load(self.path(key)) as z:
            return z["image"], json.loads(str(z["meta"]))

    def write_index(self, entries: list[dict]) -> Path:
        path = self.root / "index.json"
        tmp = path.with_suffix(".partial")
        tmp.write_text(json.dumps({"pipeline_hash": self.pipeline_hash,
                                   "studies": entries}, indent=1) + "\n")
        os.replace(tmp, path)
        return path


def tree_signature(data: Path, labels: list[dict] | None) -> str:
    """SHA-256 over every file under ``data`` (relative path, size, mtime in ns) and the
    labels: equal signatures mean the same inputs as far as the file system can tell."""
    h = hashlib.sha256()
    root = Path(data)
    for base, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(base, name)
            st = os.stat(full)
            h.update(f"{os.path.relpath(full, root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    h.update(json.dumps(labels or [], sort_keys=True).encode())
    return h.hexdigest()


def read_last_run(tensors: TensorCache, data: Path, signature: str) -> dict | None:
    """The last run's summary and index entries, if it saw exactly these inputs and every
    tensor it listed is still in the cache."""
    try:
        last = json.loads((tensors.root / "last-run.json").read_text())
        index = json.loads((tensors.root / "index.json").read_text())
    except (OSError, ValueError):
        return None
    if last.get("data") != str(Path(data).resolve()) or last.get("signature") != signature:
        return None
    if not all(tensors.has(e["key"]) for e in index["studies"]):
        return None
    return {**last, "studies": index["studies"]}


def write_last_run(tensors: TensorCache, data: Path, signature: str, counts: dict) -> None:
    path = tensors.root / "last-run.json"
    tmp = path.with_suffix(".partial")
    tmp.write_text(json.dumps({"data": str(Path(data).resolve()), "signature": signature,
                               **counts}, indent=1) + "\n")
    os.replace(tmp, path)


def read_index(cache: Path, pipeline_hash: str | None = None) -> tuple[Path, dict]:
    """The index of a cache folder (the given pipeline, or the only/newest one)."""
    cache = Path(cache)
    if pipeline_hash:
        path = cache / pipeline_hash[:16] / "index.json"
    else:
        found = sorted(cache.glob("*/index.json"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise FileNotFoundError(f"no preprocessed studies in {cache}: run "
                                    "`spinemet preprocess --data DIR --cache "
                                    f"{cache}` first")
        path = found[-1]
    return path.parent, json.loads(path.read_text())
