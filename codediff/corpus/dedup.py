"""Exact and near deduplication.

Exact: a document whose normalised text (trailing spaces stripped, blank lines dropped) hashes
like an earlier one is dropped. Near: the BigCode recipe -- MinHash signatures over word 5-gram
shingles (words split on non-alphanumerics), an LSH index to find candidates, and a document is
dropped when its estimated Jaccard similarity with an earlier *kept* document reaches the
threshold (0.7 by default). Documents are visited in a fixed order, so the first of a cluster is
the one kept and the result is reproducible.

Hashes are our own deterministic ones (crc32 of words, mixed into 64-bit shingle hashes), never
Python's `hash`, which changes from process to process.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

_WORD = re.compile(r"[A-Za-z0-9_]+")
_MIX = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9,
                 0xD6E8FEB86659FD93, 0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53,
                 0x94D049BB133111EB, 0xBF58476D1CE4E5B9], dtype=np.uint64)
_CHUNK = 16384  # shingles per MinHash update (bounds the n x num_perm temporary)


@dataclass
class DedupConfig:
    exact: bool = True
    near: bool = True
    threshold: float = 0.7  # estimated Jaccard similarity at which a document is a near-duplicate
    num_perm: int = 128  # MinHash permutations
    shingle: int = 5  # words per shingle
    minhash_seed: int = 1  # fixed: signatures do not depend on the corpus seed

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def exact_key(text: str) -> bytes:
    """Hash of the text with trailing whitespace and blank lines removed."""
    norm = "\n".join(s for s in (ln.rstrip() for ln in text.split("\n")) if s)
    return hashlib.blake2b(norm.encode("utf-8"), digest_size=16).digest()


class MinHasher:
    """MinHash signatures (uint32[num_perm]) of word-shingle sets; cheap to build per process."""

    def __init__(self, cfg: DedupConfig):
        from datasketch import MinHash

        self.cfg = cfg
        self._minhash_cls = MinHash
        self.permutations = MinHash(num_perm=cfg.num_perm, seed=cfg.minhash_seed).permutations
        self._word_hash: dict[str, int] = {}

    def shingle_hashes(self, text: str) -> np.ndarray:
        """uint32 hashes of the word k-gram shingles of `text` (one shingle if it is shorter)."""
        cache = self._word_hash
        if len(cache) > 2_000_000:  # identifiers are unbounded; keep the cache bounded
            cache.clear()
        hw = []
        for w in _WORD.findall(text):
            h = cache.get(w)
            if h is None:
                h = cache[w] = zlib.crc32(w.encode("utf-8")) + 1
            hw.append(h)
        words = np.array(hw, dtype=np.uint64)
        k = min(self.cfg.shingle, len(words))
        if k == 0:
            return np.zeros(0, dtype=np.uint32)
        n = len(words) - k + 1
        h = np.zeros(n, dtype=np.uint64)
        for j in range(k):  # position-dependent mixing: order inside the shingle matters
            h += words[j:j + n] * _MIX[j % len(_MIX)]
        return np.unique(((h >> np.uint64(32)) ^ h).astype(np.uint32))

    def signature(self, text: str) -> np.ndarray:
        m = self._minhash_cls(num_perm=self.cfg.num_perm, hashfunc=int, scheme="affine32",
                              permutations=self.permutations)
        hashes = self.shingle_hashes(text)
        for i in range(0, len(hashes), _CHUNK):
            m.update_batch(hashes[i:i + _CHUNK].tolist())
        return m.hashvalues


class NearDedup:
    """Greedy near-duplicate removal over documents visited in a fixed order."""

    def __init__(self, cfg: DedupConfig):
        from datasketch import MinHash, MinHashLSH

        if not 0.0 < cfg.threshold <= 1.0:
            raise ValueError("near-dedup threshold must be in (0, 1]")
        self.cfg = cfg
        self._minhash_cls = MinHash
        self._lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm)
        self._sigs: dict[int, np.ndarray] = {}

    def is_duplicate(self, doc_id: int, sig: np.ndarray) -> int | None:
        """The id of an earlier kept document this signature nearly matches, else None; a kept
        document is added to the index."""
        m = self._minhash_cls(hashvalues=sig, scheme="affine32", hashfunc=int)
        need = self.cfg.threshold * self.cfg.num_perm
        for other in sorted(self._lsh.query(m)):
            if np.count_nonzero(self._sigs[other] == sig) >= need:
                return other
        self._lsh.insert(doc_id, m, check_duplication=False)
        self._sigs[doc_id] = sig
        return None
