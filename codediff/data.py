"""Corpus reading for training: memory-mapped token files cut into packed sequences, visited in a
new seeded order every epoch.

The training stream is a pure function of (seed, global sequence index): sequence g belongs to epoch
g // n and is the `perm_epoch[g % n]`-th packed window, where `perm_epoch` is a permutation drawn
from (seed, epoch). So the only data position a resumed run needs is the number of sequences
consumed, and every rank of a multi-GPU run can compute its share without talking to the others.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from codediff.errors import UserError
from codediff.formats import file_sha256, schema_major

DTYPES = {"uint16": np.uint16, "uint32": np.uint32}


@dataclass
class Corpus:
    path: Path
    manifest: dict
    manifest_sha256: str
    train: np.ndarray  # memory-mapped token ids
    val: np.ndarray
    vocab_size: int
    eot_id: int
    mask_id: int | None
    pad_id: int | None

    @property
    def tokenizer_path(self) -> Path:
        return self.path / "tokenizer.json"

    @property
    def unique_tokens(self) -> int:
        return int(self.train.shape[0])


def _open_tokens(path: Path, dtype: np.dtype, expected: int | None, what: str) -> np.ndarray:
    if not path.exists():
        raise UserError(f"corpus {what} file {path} is missing; rebuild the corpus with "
                        "`codediff corpus`")
    size = path.stat().st_size
    itemsize = np.dtype(dtype).itemsize
    if size % itemsize:
        raise UserError(f"{path}: size {size} is not a multiple of {itemsize} bytes; the file is "
                        "truncated or not a codediff token file")
    n = size // itemsize
    if expected is not None and n != expected:
        raise UserError(f"{path}: holds {n} tokens but manifest.json says {expected}; the corpus is "
                        "incomplete, rebuild it")
    if n == 0:
        raise UserError(f"{path}: no tokens; build a corpus with some documents")
    return np.memmap(path, dtype=dtype, mode="r", shape=(n,))


def open_corpus(path: str | os.PathLike) -> Corpus:
    """Open and check a corpus dir (docs/formats.md); raises UserError naming what is wrong."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"--corpus {path}: no such folder; build one with `codediff corpus`")
    mpath = path / "manifest.json"
    if not mpath.exists():
        raise UserError(f"--corpus {path}: no manifest.json; not a codediff corpus dir "
                        "(build one with `codediff corpus`)")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{mpath}: not valid JSON ({e}); rebuild the corpus") from None
    schema_major(manifest, "corpus", f"--corpus {path}", "build one with `codediff corpus`")
    dtype_name = manifest.get("dtype", "uint16")
    if dtype_name not in DTYPES:
        raise UserError(f"{mpath}: dtype {dtype_name!r} is not one of {', '.join(DTYPES)}")
    tok = manifest.get("tokenizer") or {}
    for key in ("vocab_size", "eot_id"):
        if not isinstance(tok.get(key), int):
            raise UserError(f"{mpath}: tokenizer.{key} is missing; rebuild the corpus")
    if not (path / "tokenizer.json").exists():
        raise UserError(f"--corpus {path}: tokenizer.json is missing; rebuild the corpus")
    dtype = DTYPES[dtype_name]
    train_info = manifest.get("train") or {}
    val_info = manifest.get("val") or {}
    train = _open_tokens(path / train_info.get("file", "train.bin"), dtype,
                         train_info.get("tokens", manifest.get("unique_tokens")), "train")
    val = _open_tokens(path / val_info.get("file", "val.bin"), dtype,
                       val_info.get("tokens", manifest.get("val_tokens")), "validation")
    return Corpus(path=path, manifest=manifest, manifest_sha256=file_sha256(mpath), train=train,
                  val=val, vocab_size=int(tok["vocab_size"]), eot_id=int(tok["eot_id"]),
                  mask_id=tok.get("mask_id"), pad_id=tok.get("pad_id"))


class PackedSequences:
    """Fixed windows of `seq_len + 1` tokens over a flat token array (documents packed across
    window boundaries, separated by end-of-text). Window i starts at i * seq_len, so consecutive
    windows share one token: the AR target of the last position."""

    def __init__(self, tokens: np.ndarray, seq_len: int):
        self.tokens = tokens
        self.seq_len = seq_len
        self.n = (len(tokens) - 1) // seq_len
        if self.n < 1:
            raise UserError(f"the corpus holds {len(tokens)} tokens, fewer than one sequence of "
                            f"{seq_len + 1}; use a larger corpus or a smaller --seq-len")

    def __len__(self) -> int:
        return self.n

    def window(self, i: int) -> np.ndarray:
        s = i * self.seq_len
        return self.tokens[s:s + self.seq_len + 1]

    def gather(self, indices) -> np.ndarray:
        """int64 [len(indices), seq_len + 1]."""
        starts = np.asarray(indices, dtype=np.int64) * self.seq_len
        return self.tokens[starts[:, None] + np.arange(self.seq_len + 1)].astype(np.int64)


class EpochOrder:
    """Global sequence index -> window index; a fresh permutation per epoch from (seed, epoch)."""

    def __init__(self, n: int, seed: int):
        self.n = n
        self.seed = seed
        self._cache: dict[int, np.ndarray] = {}

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._cache:
            if len(self._cache) > 2:  # keep memory flat on long runs
                self._cache.pop(min(self._cache))
            rng = np.random.default_rng([self.seed, epoch])
            self._cache[epoch] = rng.permutation(self.n)
        return self._cache[epoch]

    def __call__(self, g: int) -> int:
        epoch, pos = divmod(int(g), self.n)
        return int(self.permutation(epoch)[pos])

    def indices(self, start: int, count: int) -> np.ndarray:
        out = np.empty(count, dtype=np.int64)
        done = 0
        while done < count:  # one slice per epoch touched
            epoch, pos = divmod(start + done, self.n)
            take = min(count - done, self.n - pos)
            out[done:done + take] = self.permutation(epoch)[pos:pos + take]
            done += take
        return out


class TrainStream:
    """The packed training sequences in seeded per-epoch order, addressed by global index.
    `transform(windows, global_indices)` (e.g. codediff.fim.FimTransform) rewrites each batch;
    it must be a pure function of its arguments, so the stream stays one of (seed, index)."""

    def __init__(self, tokens: np.ndarray, seq_len: int, seed: int,
                 transform: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None):
        self.packed = PackedSequences(tokens, seq_len)
        self.order = EpochOrder(len(self.packed), seed)
        self.transform = transform

    @property
    def sequences_per_epoch(self) -> int:
        return len(self.packed)

    def batch(self, start: int, count: int) -> np.ndarray:
        """Sequences start .. start+count-1 of the global stream: int64 [count, seq_len + 1]."""
        x = self.packed.gather(self.order.indices(start, count))
        if self.transform is not None:
            x = self.transform(x, np.arange(start, start + count, dtype=np.int64))
        return x


def val_windows(tokens: np.ndarray, seq_len: int, max_tokens: int) -> np.ndarray:
    """The first validation windows (fixed, no shuffling), at most `max_tokens` target tokens."""
    packed = PackedSequences(tokens, seq_len)
    n = max(1, min(len(packed), max_tokens // seq_len))
    return packed.gather(range(n))
