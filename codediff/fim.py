"""Fill-in-the-middle (FIM) for `ar` training (Bavarian et al. 2022), torch-free.

The sentinels: `<|fim_prefix|>`, `<|fim_middle|>`, `<|fim_suffix|>`, which `codediff corpus`
reserves in the BPE it trains right after `<|endoftext|>`, `<|mask|>`, `<|pad|>` (ids 3, 4, 5).
`fim_token_ids` finds them in any tokenizer (also spelled `<fim_prefix>` ... as in StarCoder's);
the generator uses it to build infill prompts.

A document d is cut at two positions a <= c into prefix d[:a], middle d[a:c], suffix d[c:] and
trained as
  PSM  <|fim_prefix|> prefix <|fim_suffix|> suffix <|fim_middle|> middle <|endoftext|>
  SPM  <|fim_prefix|> <|fim_suffix|> suffix <|fim_middle|> prefix middle <|endoftext|>
(SPM is the variant of the paper's appendix that keeps prefix and middle contiguous). The loss is
the ordinary next-token loss on every position, sentinels included.

Where the cuts fall (a deviation from the paper, measured in docs/training.md): the paper cuts at
character positions before tokenising. The trainer's data is a packed stream of token ids, and
cutting at characters would mean decoding and re-encoding every window on the host at training
speed; bench/fim_loader.py measured that at a fraction of what the `tiny` preset consumes on one
GPU, so the cuts fall at token positions (uniform over the document's n + 1 token boundaries).

Where it applies: per document *within each packed window* of seq_len + 1 tokens (documents
are the runs between end-of-text ids; the window's first and last runs are usually pieces of
documents, and they are transformed like whole ones). Each transformed document gains 3 sentinel
tokens; the window keeps its first seq_len + 1 tokens, so the 3 per transformed document push the
window's last tokens out (the batch shape never changes, and every document but the window's last
one keeps all of its tokens). Validation windows are never transformed: `val_loss` stays the
plain next-token NLL, comparable with runs without FIM.

Randomness: every draw is a hash of (seed, global sequence index, document index in the window,
draw number), so a window's transform depends on neither the micro-batch it lands in, the rank
that computes it, nor whether the run was resumed; a new epoch (a new sequence index) draws anew.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX = "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>"
FIM_TOKENS = (FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX)
# the same sentinels as other published tokenizers spell them (StarCoder, SantaCoder)
FIM_SPELLINGS = (FIM_TOKENS, ("<fim_prefix>", "<fim_middle>", "<fim_suffix>"))


@dataclass(frozen=True)
class FimIds:
    """The three sentinel ids of one tokenizer (and how it spells them)."""

    prefix: int
    middle: int
    suffix: int
    tokens: tuple[str, str, str] = FIM_TOKENS

    def as_dict(self) -> dict[str, Any]:
        return {"prefix_id": self.prefix, "middle_id": self.middle, "suffix_id": self.suffix,
                "prefix_token": self.tokens[0], "middle_token": self.tokens[1],
                "suffix_token": self.tokens[2]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FimIds:
        return cls(int(d["prefix_id"]), int(d["middle_id"]), int(d["suffix_id"]),
                   (d.get("prefix_token", FIM_PREFIX), d.get("middle_token", FIM_MIDDLE),
                    d.get("suffix_token", FIM_SUFFIX)))


def _lookup(tok: Any, token: str) -> int | None:
    inner = getattr(tok, "tok", tok)  # codediff.backends' adapters hold the tokenizer as .tok
    if hasattr(inner, "token_to_id"):  # tokenizers.Tokenizer
        i = inner.token_to_id(token)
    elif hasattr(inner, "get_vocab"):  # transformers tokenizers
        i = inner.get_vocab().get(token)
    else:
        return None
    return None if i is None else int(i)


def fim_token_ids(tok: Any) -> FimIds | None:
    """The FIM sentinel ids of a tokenizer (a `tokenizers.Tokenizer`, a transformers tokenizer,
    or an adapter holding one as `.tok`), or None when it lacks any of them (corpora built before
    codediff reserved them, most external tokenizers)."""
    for spelling in FIM_SPELLINGS:
        ids = [_lookup(tok, t) for t in spelling]
        if all(i is not None for i in ids):
            return FimIds(ids[0], ids[1], ids[2], spelling)
    return None


def corpus_fim_ids(manifest: dict[str, Any], tokenizer_path: str | Path) -> FimIds | None:
    """The sentinels of a corpus dir: its manifest's record (`tokenizer.fim`) when it has one,
    else (a corpus from before the record existed) a look in its tokenizer.json."""
    tok = manifest.get("tokenizer") or {}
    if "fim" in tok:
        return FimIds.from_dict(tok["fim"]) if tok["fim"] else None
    from tokenizers import Tokenizer

    try:
        return fim_token_ids(Tokenizer.from_file(str(tokenizer_path)))
    except Exception:  # tokenizers raises its own errors; unreadable means no sentinels here
        return None


def spellings_text() -> str:
    """The sentinels as a refusal names them: every spelling `fim_token_ids` accepts."""
    return " or ".join(", ".join(spelling) for spelling in FIM_SPELLINGS)


def run_corpus_manifest(checkpoint: str | Path) -> dict[str, Any] | None:
    """The manifest of the corpus a native checkpoint was trained on, found through its run dir
    (`<run>/checkpoints/<name>` beside `<run>/run.json`, whose `corpus.path` names the corpus),
    or None where any of them is out of reach (a moved corpus, a copied checkpoint)."""
    import json

    try:
        run = json.loads((Path(checkpoint).parent.parent / "run.json").read_text("utf-8"))
        corpus = Path(run["corpus"]["path"])
        manifest = json.loads((corpus / "manifest.json").read_text("utf-8"))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return manifest if isinstance(manifest, dict) else None


def missing_sentinels_fix(manifest: dict[str, Any] | None) -> str:
    """How to get a corpus whose tokenizer has the sentinels, for a refusal about a corpus (or a
    model trained on one) whose tokenizer lacks them. Rebuilding helps only where codediff
    trained the BPE: a `codediff corpus --tokenizer` keeps the vocabulary that file has."""
    tok = (manifest or {}).get("tokenizer") or {}
    loaded = tok.get("loaded_from") if isinstance(tok, dict) else None
    if loaded:
        return (f"the corpus took its tokenizer from `codediff corpus --tokenizer {loaded}`, so "
                "rebuilding it that way does not help; build one with codediff's own BPE (no "
                "--tokenizer: it reserves them) or with a --tokenizer that has them")
    if isinstance(tok, dict) and "trained" in tok:
        return ("rebuild the corpus with this codediff version (`codediff corpus`), which "
                "reserves them in the BPE it trains")
    return ("build a corpus with codediff's own BPE (`codediff corpus` without --tokenizer "
            "reserves them) or with a --tokenizer that has them")


# ----------------------------------------------------------------------------- one document

def fim_document(doc: list[int] | np.ndarray, a: int, c: int, ids: FimIds, spm: bool = False
                 ) -> list[int]:
    """The FIM form of one document's tokens (without its end-of-text), cut at a <= c."""
    doc = [int(t) for t in doc]
    if not 0 <= a <= c <= len(doc):
        raise ValueError(f"cuts {a}, {c} do not fit a document of {len(doc)} tokens")
    pre, mid, suf = doc[:a], doc[a:c], doc[c:]
    if spm:
        return [ids.prefix, ids.suffix, *suf, ids.middle, *pre, *mid]
    return [ids.prefix, *pre, ids.suffix, *suf, ids.middle, *mid]


def split_fim(seq: list[int] | np.ndarray, ids: FimIds) -> tuple[list[int], list[int], list[int]]:
    """(prefix, middle, suffix) of a `fim_document` output, so prefix + middle + suffix is the
    document again. SPM marks no boundary between prefix and middle: its prefix comes back as
    the start of the middle (and the prefix as [])."""
    seq = [int(t) for t in seq]
    if not seq or seq[0] != ids.prefix or seq.count(ids.suffix) != 1 or \
            seq.count(ids.middle) != 1:
        raise ValueError("not a FIM sequence")
    s, m = seq.index(ids.suffix), seq.index(ids.middle)
    if s == 1:  # SPM: nothing marks where the prefix ends, so it comes back in the middle
        return [], seq[m + 1:], seq[2:m]
    return seq[1:s], seq[m + 1:], seq[s + 1:m]


# ----------------------------------------------------------------------------- randomness

_MULT = np.array([0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB,
                  0xD6E8FEB86659FD93], dtype=np.uint64)
_FIM_TAG = 0x46494D  # "FIM": keeps these draws apart from any other use of the same seed
DRAWS = 4  # per document: apply FIM?, SPM?, cut 1, cut 2


def _splitmix(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def document_draws(seed: int, seq_index: np.ndarray, doc_index: np.ndarray) -> np.ndarray:
    """Uniforms in [0, 1), shape [n, DRAWS], for documents (seq_index[i], doc_index[i]): a
    counter-based hash, so any subset is computed without the others (vectorised, no generator
    object per sequence)."""
    q = np.atleast_1d(np.asarray(seq_index)).astype(np.uint64)
    k = np.atleast_1d(np.asarray(doc_index)).astype(np.uint64)
    with np.errstate(over="ignore"):
        base = _splitmix(np.uint64(seed) * _MULT[0] + np.uint64(_FIM_TAG))
        z = _splitmix(base ^ (q * _MULT[1]))
        z = _splitmix(z ^ (k * _MULT[2]))
        z = z[:, None] + np.arange(DRAWS, dtype=np.uint64)[None, :] * _MULT[3]
        z = _splitmix(_splitmix(z))
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


# ----------------------------------------------------------------------------- packed windows

@dataclass(frozen=True)
class FimTransform:
    """The FIM transform of packed training windows: `__call__(windows, seq_indices)`."""

    rate: float
    spm_rate: float
    ids: FimIds
    eot_id: int
    seed: int

    def __call__(self, x: np.ndarray, seq_indices: np.ndarray) -> np.ndarray:
        return fim_windows(x, seq_indices, self)


def fim_windows(x: np.ndarray, seq_indices: np.ndarray, t: FimTransform) -> np.ndarray:
    """Windows [B, W] -> the same shape with each document (run between end-of-text ids)
    rearranged with probability `t.rate` (docs at the top of this module). Vectorised over the
    whole batch: one scatter, no Python loop over windows or documents."""
    x = np.asarray(x)
    B, W = x.shape
    if B == 0 or t.rate <= 0:
        return x
    eot = x == t.eot_id
    # a document starts at position 0 and after every end-of-text; it owns its closing eot
    starts = np.zeros_like(eot)
    starts[:, 0] = True
    starts[:, 1:] = eot[:, :-1]
    flat_starts = starts.ravel()
    doc = np.cumsum(flat_starts) - 1  # document id of every position (flat)
    first = np.flatnonzero(flat_starts)  # flat start of each document
    n_docs = len(first)
    row = first // W
    col0 = first - row * W  # start column of each document
    n = np.bincount(doc, weights=~eot.ravel(), minlength=n_docs).astype(np.int64)
    row_first = np.searchsorted(first, row * W)  # id of the first document of each one's window
    k = np.arange(n_docs) - row_first  # document index within its window
    u = document_draws(t.seed, np.asarray(seq_indices, dtype=np.int64)[row], k)
    fim = (u[:, 0] < t.rate) & (n > 0)
    if not fim.any():
        return x
    spm = u[:, 1] < t.spm_rate
    c1 = np.minimum((u[:, 2] * (n + 1)).astype(np.int64), n)
    c2 = np.minimum((u[:, 3] * (n + 1)).astype(np.int64), n)
    a, c = np.minimum(c1, c2), np.maximum(c1, c2)
    # 3 sentinels for every transformed document before this one in its window
    before = np.cumsum(fim) - fim
    shift = 3 * (before - before[row_first])
    o = col0 + shift  # output column where each document starts

    # output column of every input position
    r = np.arange(B * W) - first[doc]  # position within its document
    dn, da, dc, do = n[doc], a[doc], c[doc], o[doc]
    dfim, dspm = fim[doc], spm[doc]
    plain = do + r
    tail = do + 3 + dn - dc + r  # PSM middle; SPM prefix and middle
    psm = np.where(r < da, do + 1 + r, np.where(r < dc, tail, do + 2 + da + r - dc))
    spm_pos = np.where(r < dc, tail, do + 2 + r - dc)
    content = np.where(dspm, spm_pos, psm)
    col = np.where(dfim, np.where(r >= dn, do + dn + 3, content), plain)  # r == n: its eot

    width = W + 3 * int(np.bincount(row, weights=fim, minlength=B).max())
    out = np.empty((B, width), dtype=x.dtype)
    rows = np.repeat(np.arange(B), W)
    out[rows, col] = x.ravel()
    fi = np.flatnonzero(fim)
    fr, fo, fa, fc, fn = row[fi], o[fi], a[fi], c[fi], n[fi]
    fs = spm[fi]
    out[fr, fo] = t.ids.prefix
    out[fr, np.where(fs, fo + 1, fo + 1 + fa)] = t.ids.suffix
    out[fr, np.where(fs, fo + 2 + fn - fc, fo + 2 + fa + fn - fc)] = t.ids.middle
    return out[:, :W]
