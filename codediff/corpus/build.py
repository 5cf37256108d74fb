"""Build a corpus dir: read -> clean -> dedup -> decontaminate -> order -> tokenise -> cap -> write.

Everything is validated before any output exists (sources, tokenizer, task data), the tokens are
produced in memory, and the corpus dir is written into a temporary sibling folder that is renamed
into place at the very end, so a failed or interrupted build leaves nothing half written.

Order and capping. Each source's kept documents are shuffled with a seeded RNG, then the sources
are interleaved by characters taken so far divided by weight (the source furthest below its share
goes next). The validation documents come first in that order until exactly `val_tokens` ids are
filled, then training documents until exactly `unique_tokens`; the last document of each is cut
(its end-of-text id kept). Because the order and the tokenizer do not depend on U, a corpus with a
smaller U is a prefix of one with a larger U, and every U shares the same validation set.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import os
import random
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from codediff import __version__
from codediff.corpus.decontam import DecontamConfig, Decontaminator, benchmark_texts
from codediff.corpus.dedup import DedupConfig, MinHasher, NearDedup, exact_key
from codediff.corpus.filters import REASONS, FilterConfig, normalise, reject_reason
from codediff.corpus.sources import Source, open_source, parse_source
from codediff.corpus.tokenizer import (
    EOT,
    MASK,
    MIN_VOCAB,
    PAD,
    TokenizerInfo,
    encode_batch,
    load_tokenizer,
    prepare_for_corpus,
    special_info,
    train_bpe,
)
from codediff.errors import UserError
from codediff.formats import CORPUS_SCHEMA, make_temp_dir

# A hub source is streamed until this many raw bytes per wanted token (times its weight share)
# have been read: cleaning keeps roughly half of GitHub-like data and a code BPE token is ~3-4
# bytes, so 12 leaves a margin. --stream-bytes overrides it.
STREAM_BYTES_PER_TOKEN = 12
_ENCODE_BATCH = 256
_MAX_LISTED_DROPS = 1000  # decontaminated documents listed by name in the manifest


@dataclass
class CorpusConfig:
    out: str
    unique_tokens: int
    val_tokens: int = 1_000_000
    sources: list[str] = field(default_factory=lambda: ["stdlib"])
    seed: int = 0
    text_column: str = "content"
    vocab_size: int = 8192
    tokenizer: str | None = None  # an existing tokenizer.json / HF folder instead of training
    eot_token: str | None = None
    mask_token: str | None = None
    pad_token: str | None = None
    tokenizer_train_chars: int = 300_000_000  # cap on the text the BPE is trained on
    stream_bytes: int | None = None  # per hub source; None = automatic
    max_docs: int | None = None  # per source, first N in the source's order (quick tries)
    filters: FilterConfig = field(default_factory=FilterConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    decontam: DecontamConfig = field(default_factory=DecontamConfig)
    workers: int = 0  # processes for cleaning; 0 = all cores
    overwrite: bool = False
    progress: bool = True


@dataclass
class _Doc:
    source: int
    key: str
    text: str


# ----------------------------------------------------------------------------- per-document work

@dataclass
class _Analyser:
    """Everything computed for one document independently of the others (runs in workers)."""

    filters: FilterConfig
    dedup: DedupConfig
    decontam: Decontaminator | None
    _hasher: MinHasher | None = None

    def __call__(self, item: tuple[str, bytes | str | None]) -> tuple:
        """(key, drop reason or None, text, exact-dedup key, benchmark matches, MinHash)."""
        key, content = item
        text, reason = normalise(content)
        if reason is None:
            reason = reject_reason(text, self.filters)
        if reason is not None:
            return key, reason, None, None, (), None
        ekey = exact_key(text) if self.dedup.exact else None
        matches = tuple(self.decontam.matches(text)) if self.decontam is not None else ()
        sig = None
        if self.dedup.near and not matches:
            if self._hasher is None:
                self._hasher = MinHasher(self.dedup)
            sig = self._hasher.signature(text)
        return key, None, text, ekey, matches, sig


_WORKER: _Analyser | None = None


def _init_worker(analyser: _Analyser) -> None:
    global _WORKER
    _WORKER = analyser


def _work(item: tuple[str, bytes | str | None]) -> tuple:
    assert _WORKER is not None
    return _WORKER(item)


# ----------------------------------------------------------------------------- the build

def build_corpus(cfg: CorpusConfig, timings: dict[str, float] | None = None) -> dict[str, Any]:
    """Build the corpus dir `cfg.out`; returns the manifest. Seconds per phase go into `timings`
    (kept out of the manifest, which must be byte-identical between identical builds)."""
    t0 = time.time()
    out = _check_out(cfg)
    _check_sizes(cfg)
    specs = [parse_source(s) for s in cfg.sources]
    if not specs:
        raise UserError("no --source given")
    if len({s.spec for s in specs}) != len(specs):
        raise UserError("the same --source is given twice; give each source once (use @WEIGHT "
                        "to change its share)")
    sources = [open_source(s, cfg.text_column) for s in specs]
    tok, info = _tokenizer_before_reading(cfg)
    decon, decon_report = _decontaminator(cfg)
    timings = {} if timings is None else timings
    timings["validate"] = time.time() - t0

    t = time.time()
    pool, stats = _read_and_clean(cfg, sources, decon)
    timings["read_clean_dedup_decontam"] = time.time() - t
    if not pool:
        raise UserError("no document survived cleaning; check the sources (see the filter "
                        "options of `codediff corpus --help`)")

    order = _seeded_order(pool, [s.spec.weight for s in sources], cfg.seed)
    t = time.time()
    trained_on = None
    if tok is None:
        tok, info, trained_on = _train_tokenizer(cfg, order)
    timings["tokenizer"] = time.time() - t
    tokenizer_json = tok.to_str()  # saved before encode_special_tokens is switched on
    prepare_for_corpus(tok)

    t = time.time()
    val, train, used = _cap(cfg, tok, info, order, sources)
    timings["tokenize_cap"] = time.time() - t

    arrays = {"val": val.array(info.dtype), "train": train.array(info.dtype)}
    manifest = _manifest(cfg, sources, stats, decon_report, info, tokenizer_json, trained_on,
                         val, train, used, pool, arrays)
    t = time.time()
    _write(out, {
        "val.bin": arrays["val"], "train.bin": arrays["train"],
        "tokenizer.json": tokenizer_json.encode("utf-8"),
        "manifest.json": (json.dumps(manifest, indent=1) + "\n").encode("utf-8"),
    })
    timings["write"] = time.time() - t
    timings["total"] = time.time() - t0
    if cfg.progress:
        print("corpus: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()),
              file=sys.stderr)
    return manifest


def _check_out(cfg: CorpusConfig) -> Path:
    out = Path(cfg.out).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a folder path")
    if out.is_dir() and any(out.iterdir()) and not cfg.overwrite:
        raise UserError(f"--out {out} already exists and is not empty; pass --overwrite or "
                        "choose another folder")
    return out


def _check_sizes(cfg: CorpusConfig) -> None:
    if cfg.unique_tokens < 1:
        raise UserError("--unique-tokens must be at least 1")
    if cfg.val_tokens < 0:
        raise UserError("--val-tokens must be 0 or more")
    if cfg.tokenizer is None and not MIN_VOCAB <= cfg.vocab_size <= 2**32:
        raise UserError(f"--vocab-size {cfg.vocab_size}: a byte-level BPE needs between "
                        f"{MIN_VOCAB} and 2**32 entries")
    if cfg.max_docs is not None and cfg.max_docs < 1:
        raise UserError("--max-docs must be at least 1")
    if not 0.0 < cfg.dedup.threshold <= 1.0:
        raise UserError("--near-dedup-threshold must be in (0, 1]")
    if cfg.dedup.num_perm < 2 or cfg.dedup.shingle < 1:
        raise UserError("--minhash-perm must be >= 2 and --shingle-words >= 1")
    if cfg.decontam.ngram < 1 or cfg.decontam.min_words < 1 or cfg.decontam.min_informative < 0:
        raise UserError("--decontam-ngram and --decontam-min-words must be >= 1, "
                        "--decontam-min-informative >= 0")


def _stream_hint(sources: list[Source]) -> str:
    if any(not s.spec.local for s in sources):
        return "; hub sources are read only up to --stream-bytes (raise it)"
    return ""


def _tokenizer_before_reading(cfg: CorpusConfig) -> tuple[Any, TokenizerInfo | None]:
    """Load and check an existing tokenizer now, so a bad one fails before any work."""
    if cfg.tokenizer is None:
        if (cfg.eot_token, cfg.mask_token, cfg.pad_token) != (None, None, None):
            raise UserError("--eot-token/--mask-token/--pad-token apply to a loaded --tokenizer; "
                            "our own BPE always uses <|endoftext|>, <|mask|>, <|pad|>")
        return None, None
    tok, named = load_tokenizer(cfg.tokenizer)
    info = special_info(tok, cfg.eot_token or named.get("eot", EOT),
                        cfg.mask_token or named.get("mask", MASK),
                        cfg.pad_token or named.get("pad", PAD))
    return tok, info


def _decontaminator(cfg: CorpusConfig) -> tuple[Decontaminator | None, dict[str, Any]]:
    dc = cfg.decontam
    report: dict[str, Any] = {"enabled": dc.enabled, **dc.as_dict()}
    if not dc.enabled:
        return None, report
    if dc.data_dir is not None and not Path(dc.data_dir).exists():
        raise UserError(f"--decontam-data {dc.data_dir} does not exist; pass the task data "
                        "folder (laid out like mbpp/mbpp.jsonl)")
    texts, all_tasks = benchmark_texts(dc.data_dir)
    decon = Decontaminator(texts, dc.ngram, dc.min_words, dc.min_informative)
    report["tasks"] = decon.summary()
    report["missing_tasks"] = [t for t in all_tasks if t not in decon.problems]
    if report["missing_tasks"] and cfg.progress:
        print(f"corpus: warning: no data for {', '.join(report['missing_tasks'])}; not "
              "decontaminated against them (set CODEDIFF_DATA or --decontam-data)",
              file=sys.stderr)
    return decon, report


def _workers(cfg: CorpusConfig) -> int:
    if cfg.workers > 0:
        return cfg.workers
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _read_and_clean(cfg: CorpusConfig, sources: list[Source], decon: Decontaminator | None
                    ) -> tuple[list[_Doc], dict[str, Any]]:
    """Read every source, filter, dedup and decontaminate in one ordered pass.

    The per-document work (decode, filters, parse, hashes, n-gram matching, MinHash) runs in a
    process pool; the decisions that depend on earlier documents (exact and near duplicates) are
    taken here, in source order, so the result does not depend on the number of workers.
    """
    from tqdm import tqdm

    analyser = _Analyser(cfg.filters, cfg.dedup, decon)
    near = NearDedup(cfg.dedup) if cfg.dedup.near else None
    seen: set[bytes] = set()
    pool: list[_Doc] = []
    dropped = Counter({r: 0 for r in REASONS})
    counts = {"exact_removed": 0, "near_removed": 0, "decontaminated": 0}
    decon_by_task: Counter[str] = Counter()
    decon_docs: list[dict[str, Any]] = []
    per_source: list[dict[str, Any]] = []
    wanted = cfg.unique_tokens + cfg.val_tokens
    total_weight = sum(s.spec.weight for s in sources)
    n_workers = _workers(cfg)
    mp_pool = None
    if n_workers > 1:
        import multiprocessing as mp

        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        mp_pool = ctx.Pool(n_workers, initializer=_init_worker, initargs=(analyser,))
    try:
        for si, src in enumerate(sources):
            budget = None
            if not src.spec.local:
                budget = cfg.stream_bytes or int(STREAM_BYTES_PER_TOKEN * wanted
                                                 * src.spec.weight / total_weight)
            listing = hashlib.sha256()
            s_stats: dict[str, Any] = {"read": 0, "bytes": 0, "kept": 0, "kept_chars": 0}
            raw = _limited(src.iter_documents(), cfg.max_docs, budget, listing, s_stats)
            total = src.count()
            if total is not None and cfg.max_docs is not None:
                total = min(total, cfg.max_docs)
            bar = tqdm(_analysed(raw, analyser, mp_pool), total=total, unit="doc",
                       desc=f"clean {src.spec.spec}", disable=not cfg.progress, mininterval=1.0)
            for key, reason, text, ekey, matches, sig in bar:
                if reason is not None:
                    dropped[reason] += 1
                    continue
                if ekey is not None:
                    if ekey in seen:
                        counts["exact_removed"] += 1
                        continue
                    seen.add(ekey)
                if matches:
                    counts["decontaminated"] += 1
                    for task in sorted({t for t, _ in matches}):
                        decon_by_task[task] += 1
                    if len(decon_docs) < _MAX_LISTED_DROPS:
                        decon_docs.append({"source": src.spec.spec, "document": key,
                                           "matches": [f"{t} {i}" for t, i in matches[:5]]})
                    continue
                if near is not None and near.is_duplicate(len(pool), sig) is not None:
                    counts["near_removed"] += 1
                    continue
                pool.append(_Doc(si, key, text))
                s_stats["kept"] += 1
                s_stats["kept_chars"] += len(text)
            bar.close()
            if s_stats["read"] == 0:
                raise UserError(f"--source {src.spec.spec}: no documents found (no .py files "
                                "or an empty dataset)")
            s_stats["file_list_sha256"] = listing.hexdigest()
            per_source.append(s_stats)
    finally:
        if mp_pool is not None:
            mp_pool.terminate()
    n_read = sum(s["read"] for s in per_source)
    stats = {
        "per_source": per_source,
        "filters": {**cfg.filters.as_dict(), "read": n_read, "dropped": dict(dropped),
                    "kept": n_read - sum(dropped.values())},
        "dedup": {**cfg.dedup.as_dict(), "exact_removed": counts["exact_removed"],
                  "near_removed": counts["near_removed"]},
        "decontam": {"removed": counts["decontaminated"],
                     "removed_by_task": dict(sorted(decon_by_task.items())),
                     "removed_documents": decon_docs},
    }
    return pool, stats


def _analysed(items: Iterator[tuple[str, bytes | str | None]], analyser: _Analyser,
              mp_pool: Any, window: int = 2048) -> Iterator[tuple]:
    """Analyse documents in order, in the pool if there is one, a window at a time so that a big
    source is never all in memory (Pool.imap would read its whole input ahead)."""
    if mp_pool is None:
        yield from map(analyser, items)
        return
    while True:
        chunk = list(itertools.islice(items, window))
        if not chunk:
            return
        yield from mp_pool.imap(_work, chunk, chunksize=8)


def _limited(items: Iterator[tuple[str, bytes | str | None]], max_docs: int | None,
             budget: int | None, listing: Any, stats: dict[str, Any]
             ) -> Iterator[tuple[str, bytes | str | None]]:
    """Pass documents through, counting them, hashing the listing, stopping at the limits."""
    for key, content in items:
        data = content.encode("utf-8") if isinstance(content, str) else content
        size = len(data) if isinstance(data, bytes) else 0
        listing.update(key.encode("utf-8", "replace") + b"\t")
        listing.update(hashlib.blake2b(data or b"", digest_size=16).digest() + b"\n")
        stats["read"] += 1
        stats["bytes"] += size
        yield key, content
        if max_docs is not None and stats["read"] >= max_docs:
            return
        if budget is not None and stats["bytes"] >= budget:
            return


def _seeded_order(pool: list[_Doc], weights: list[float], seed: int) -> list[_Doc]:
    """Shuffle each source with its own seeded RNG, then interleave by weighted characters."""
    per_source: list[list[_Doc]] = [[] for _ in weights]
    for d in pool:
        per_source[d.source].append(d)
    for i, docs in enumerate(per_source):
        random.Random(f"codediff-corpus:{seed}:{i}").shuffle(docs)
    heap = [(0.0, i) for i, docs in enumerate(per_source) if docs]
    taken = [0] * len(weights)
    pos = [0] * len(weights)
    order: list[_Doc] = []
    while heap:
        _, i = heapq.heappop(heap)
        d = per_source[i][pos[i]]
        order.append(d)
        pos[i] += 1
        taken[i] += len(d.text)
        if pos[i] < len(per_source[i]):
            heapq.heappush(heap, (taken[i] / weights[i], i))
    return order


def _train_tokenizer(cfg: CorpusConfig, order: list[_Doc]
                     ) -> tuple[Any, TokenizerInfo, dict[str, int]]:
    """Our BPE, trained on the cleaned pool in the seeded order (up to the character cap)."""
    n, chars = 0, 0
    for d in order:
        if chars >= cfg.tokenizer_train_chars:
            break
        n += 1
        chars += len(d.text)
    tok = train_bpe((d.text for d in order[:n]), cfg.vocab_size, length=n,
                    show_progress=cfg.progress)
    info = special_info(tok, EOT, MASK, PAD)
    assert (info.eot_id, info.mask_id, info.pad_id) == (0, 1, 2), "special ids must be 0, 1, 2"
    assert info.fim is not None and (info.fim.prefix, info.fim.middle, info.fim.suffix) == \
        (3, 4, 5), "FIM sentinel ids must be 3, 4, 5"
    return tok, info, {"documents": n, "chars": chars}


@dataclass
class _Split:
    """Token ids of one output file, filled document by document up to `cap` exactly."""

    cap: int
    chunks: list[np.ndarray] = field(default_factory=list)
    tokens: int = 0
    documents: int = 0
    cut: dict[str, Any] | None = None
    per_source: Counter = field(default_factory=Counter)
    docs_per_source: Counter = field(default_factory=Counter)

    @property
    def full(self) -> bool:
        return self.tokens >= self.cap

    def add(self, doc: _Doc, ids: list[int], eot: int) -> None:
        need = self.cap - self.tokens
        toks = np.array(ids + [eot], dtype=np.uint32)
        if len(toks) > need:  # the last document is cut; it still ends with end-of-text
            self.cut = {"document": doc.key, "source": doc.source, "kept_tokens": need,
                        "of_tokens": len(toks)}
            toks = np.concatenate([toks[:need - 1], toks[-1:]])
        self.chunks.append(toks)
        self.tokens += len(toks)
        self.documents += 1
        self.per_source[doc.source] += len(toks)
        self.docs_per_source[doc.source] += 1

    def array(self, dtype: str) -> np.ndarray:
        little = np.dtype(dtype).newbyteorder("<")
        if not self.chunks:
            return np.zeros(0, dtype=little)
        return np.concatenate(self.chunks).astype(little)


def _cap(cfg: CorpusConfig, tok: Any, info: TokenizerInfo, order: list[_Doc],
         sources: list[Source]) -> tuple[_Split, _Split, int]:
    """Tokenise documents in order: the first fill val, the next fill train, exactly."""
    from tqdm import tqdm

    val, train = _Split(cfg.val_tokens), _Split(cfg.unique_tokens)
    used = 0
    bar = tqdm(total=cfg.val_tokens + cfg.unique_tokens, desc="tokenize", unit="tok",
               unit_scale=True, disable=not cfg.progress, mininterval=1.0)
    i = 0
    while not train.full and i < len(order):
        batch, chars = [], 0
        while i < len(order) and (len(batch) < _ENCODE_BATCH or chars < 4_000_000) \
                and len(batch) < 8 * _ENCODE_BATCH:
            batch.append(order[i])
            chars += len(order[i].text)
            i += 1
        for doc, ids in zip(batch, encode_batch(tok, [d.text for d in batch]), strict=True):
            split = val if not val.full else train
            if split.full:
                break
            before = split.tokens
            split.add(doc, ids, info.eot_id)
            used += 1
            bar.update(split.tokens - before)
    bar.close()
    if not train.full:
        avail = val.tokens + train.tokens
        if not val.full:
            raise UserError(f"not enough data: the cleaned sources hold only {avail:,} tokens, "
                            f"fewer than --val-tokens {cfg.val_tokens:,}; lower it or add sources"
                            + _stream_hint(sources))
        raise UserError(f"not enough data: the cleaned sources hold {avail:,} tokens; "
                        f"{cfg.val_tokens:,} go to validation, leaving at most {train.tokens:,} "
                        f"unique training tokens (asked {cfg.unique_tokens:,}); lower "
                        "--unique-tokens or --val-tokens, or add sources" + _stream_hint(sources))
    return val, train, used


def _sha256(data: bytes | np.ndarray) -> str:
    return hashlib.sha256(memoryview(data).cast("B") if isinstance(data, np.ndarray)
                          else data).hexdigest()


def _manifest(cfg: CorpusConfig, sources: list[Source], stats: dict[str, Any],
              decon_report: dict[str, Any], info: TokenizerInfo, tokenizer_json: str,
              trained_on: dict[str, int] | None, val: _Split, train: _Split, used: int,
              pool: list[_Doc], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    tok_entry: dict[str, Any] = {**info.as_dict(),
                                 "sha256": _sha256(tokenizer_json.encode("utf-8"))}
    if trained_on is not None:
        tok_entry["trained"] = {"kind": "byte-level BPE", "requested_vocab_size": cfg.vocab_size,
                                **trained_on}
    else:
        tok_entry["loaded_from"] = Path(cfg.tokenizer or "").name
    source_entries = []
    for i, (src, st) in enumerate(zip(sources, stats["per_source"], strict=True)):
        source_entries.append({**src.describe(), **st,
                               "val_tokens": val.per_source[i], "val_documents":
                               val.docs_per_source[i], "train_tokens": train.per_source[i],
                               "train_documents": train.docs_per_source[i]})

    def split_entry(name: str, split: _Split) -> dict[str, Any]:
        return {"file": f"{name}.bin", "tokens": split.tokens, "documents": split.documents,
                "sha256": _sha256(arrays[name]), "cut_document": _cut(split, sources)}

    return {
        "schema": CORPUS_SCHEMA,
        "dtype": info.dtype,
        "tokenizer": tok_entry,
        "unique_tokens": train.tokens,
        "val_tokens": val.tokens,
        "train": split_entry("train", train),
        "val": split_entry("val", val),
        "seed": cfg.seed,
        "sources": source_entries,
        "filters": stats["filters"],
        "dedup": stats["dedup"],
        "decontamination": {**decon_report, **stats["decontam"]},
        "pool": {"documents": len(pool), "chars": sum(len(d.text) for d in pool),
                 "documents_tokenized": used,
                 "order": "per-source seeded shuffle, interleaved by characters / weight; "
                          "val first, then train"},
        "created_by": f"codediff {__version__}",
    }


def _cut(split: _Split, sources: list[Source]) -> dict[str, Any] | None:
    if split.cut is None:
        return None
    return {**split.cut, "source": sources[split.cut["source"]].spec.spec}


def _write(out: Path, files: dict[str, bytes | np.ndarray]) -> None:
    """Write the corpus into a temporary sibling folder, then rename it into place."""
    tmp = make_temp_dir(out)  # with the umask's mode, like any folder the user makes
    old: Path | None = None
    try:
        for name, data in files.items():
            with open(tmp / name, "wb") as f:
                f.write(memoryview(data).cast("B") if isinstance(data, np.ndarray) else data)
                f.flush()
                os.fsync(f.fileno())
        if out.exists():  # checked earlier: empty, or --overwrite
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.rename(out, old)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not out.exists():
            os.rename(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
