"""Decontamination against every benchmark codediff ships.

The benchmark texts (prompts, reference solutions, tests) come from the judge's own task loaders
(`harness.tasks.contamination_texts`), so whatever codediff can evaluate is what it decontaminates
against. Texts and documents are split into lower-cased words (runs of `[a-z0-9_]`); a document
is dropped when it shares an `ngram`-word window (10 by default) with a benchmark text.

A benchmark window counts only if it holds at least `min_informative` distinct informative words
(two or more characters, at least one letter): windows of numbers and single letters such as
`0 1 2 3 4 5 6 7 8 9` or `a b c d e f g h i j` (test inputs) occur all over honest code and would
drop it for nothing. A text with no such window -- shorter than `ngram` words, or a terse solution
like `def find_volume(l, b, h): return ((l * b * h) / 2)` -- is matched whole instead: a document
containing all of its words in order is dropped. Texts under `min_words` words are too generic to
match at all and are counted as `texts_too_short`.

Matching is vectorised: words map to ids of the benchmark vocabulary (a document word outside it
can never be part of a match), windows are hashed with a rolling 64-bit mix, looked up with
binary search, and every hash hit is confirmed on the exact word ids.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

_WORD = re.compile(r"[a-z0-9_]+")
_MIX = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9,
                 0xD6E8FEB86659FD93, 0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53,
                 0x94D049BB133111EB, 0xBF58476D1CE4E5B9, 0x2545F4914F6CDD1D,
                 0x9FB21C651E98DF25, 0xA0761D6478BD642F, 0xE7037ED1A0B428DB],
                dtype=np.uint64)


@dataclass
class DecontamConfig:
    enabled: bool = True
    ngram: int = 10  # words in a shared window that makes a document contaminated
    min_words: int = 5  # benchmark texts with fewer words are not matched (too generic)
    min_informative: int = 4  # distinct words with a letter and >= 2 chars in a matching window
    data_dir: str | None = None  # task data folder; default $CODEDIFF_DATA

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("data_dir")  # a path of this machine; the datasets are identified by task below
        return d


def benchmark_texts(data_dir: str | None = None) -> tuple[list[tuple[str, str, str]], list[str]]:
    """(task, task_id, text) for every shipped task whose data is available, and all task names."""
    from codediff.harness.tasks import available_tasks, contamination_texts

    return list(contamination_texts(data_dir)), sorted(available_tasks())


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _window_hashes(ids: np.ndarray, length: int) -> np.ndarray:
    """Hash of every `length`-word window of `ids` (uint64, wrapping arithmetic)."""
    n = len(ids) - length + 1
    h = np.zeros(max(n, 0), dtype=np.uint64)
    if n <= 0:
        return h
    shifted = ids.astype(np.uint64) + np.uint64(1)
    for j in range(length):
        h = (h ^ (h >> np.uint64(29))) + shifted[j:j + n] * _MIX[j % len(_MIX)]
    return h


class Decontaminator:
    """Finds the benchmark problems a document shares a long word window with."""

    def __init__(self, texts: Iterable[tuple[str, str, str]], ngram: int = 10, min_words: int = 5,
                 min_informative: int = 4):
        if ngram < 1 or min_words < 1:
            raise ValueError("ngram and min_words must be positive")
        self.ngram, self.min_words, self.min_informative = ngram, min_words, min_informative
        self.vocab: dict[str, int] = {}
        self._informative: list[bool] = []  # by word id
        # window length -> {hash: [(window word ids, whole-text word ids or None, task, id)]}
        self._grams: dict[int, dict[int, list[tuple]]] = {}
        self.problems: dict[str, set[str]] = defaultdict(set)
        self.texts: dict[str, int] = defaultdict(int)
        self.unchecked: dict[str, int] = defaultdict(int)
        self.whole: dict[str, int] = defaultdict(int)
        for task, task_id, text in texts:
            self._add(task, task_id, text)
        self._sorted = {L: np.array(sorted(g), dtype=np.uint64) for L, g in self._grams.items()}

    def _add(self, task: str, task_id: str, text: str) -> None:
        self.problems[task].add(task_id)
        self.texts[task] += 1
        words = _words(text)
        if len(words) < self.min_words:
            self.unchecked[task] += 1
            return
        for w in words:
            if w not in self.vocab:
                self.vocab[w] = len(self.vocab)
                self._informative.append(len(w) >= 2 and not w.isdigit()
                                         and any(c.isalpha() for c in w))
        ids = np.array([self.vocab[w] for w in words], dtype=np.int64)
        informative = self._informative
        added = False
        if len(ids) >= self.ngram:
            table = self._grams.setdefault(self.ngram, {})
            for i, h in enumerate(_window_hashes(ids, self.ngram).tolist()):
                key = tuple(ids[i:i + self.ngram].tolist())
                if sum(1 for x in set(key) if informative[x]) >= self.min_informative:
                    self._put(table, h, (key, None, task, task_id))
                    added = True
        if not added:  # match the whole text, anchored on its first window
            length = min(self.ngram, len(ids))
            key = tuple(ids[:length].tolist())
            whole = tuple(ids.tolist()) if len(ids) > length else None
            h = int(_window_hashes(ids[:length], length)[0])
            self._put(self._grams.setdefault(length, {}), h, (key, whole, task, task_id))
            self.whole[task] += 1

    @staticmethod
    def _put(table: dict[int, list[tuple]], h: int, entry: tuple) -> None:
        entries = table.setdefault(h, [])
        if entry not in entries:
            entries.append(entry)

    def matches(self, text: str) -> list[tuple[str, str]]:
        """Sorted distinct (task, task_id) pairs whose texts share a window with `text`."""
        vocab = self.vocab
        ids = np.array([vocab.get(w, -1) for w in _words(text)], dtype=np.int64)
        if len(ids) == 0:
            return []
        # unknown[i] = number of out-of-vocabulary words among the first i words
        unknown = np.concatenate([[0], np.cumsum(ids < 0)])
        found: set[tuple[str, str]] = set()
        for length, table in self._grams.items():
            if len(ids) < length:
                continue
            h = _window_hashes(ids, length)
            table_hashes = self._sorted[length]
            pos = np.searchsorted(table_hashes, h)
            hit = table_hashes[np.minimum(pos, len(table_hashes) - 1)] == h
            hit &= (unknown[length:] - unknown[:-length]) == 0
            for i in np.flatnonzero(hit).tolist():
                key = tuple(ids[i:i + length].tolist())
                for k, whole, task, task_id in table.get(int(h[i]), ()):
                    if k == key and (whole is None
                                     or tuple(ids[i:i + len(whole)].tolist()) == whole):
                        found.add((task, task_id))
        return sorted(found)

    def summary(self) -> dict[str, Any]:
        return {task: {"problems": len(self.problems[task]), "texts": self.texts[task],
                       "texts_matched_whole": self.whole[task],
                       "texts_too_short": self.unchecked[task]}
                for task in sorted(self.problems)}
