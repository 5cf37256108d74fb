"""Host cost of the FIM transform (codediff.fim) against the rate training consumes tokens.

Two ways to cut the documents of a batch of packed windows (`tiny`: 128 windows of 257 tokens):
- tokens: `codediff.fim.fim_windows`, cuts at token positions, one vectorised scatter (what
  `codediff train --fim-rate` does);
- chars: the paper's way, cuts at character positions: decode each document of the window,
  cut the text at two random characters, encode prefix, middle and suffix again (batched through
  the Rust tokenizer) and reassemble, as a loader would have to.

Both run single-threaded on the host, as the trainer's data path does, and print tokens/s; the
`tiny` preset trains at about 2.5M tokens/s on one H200 (docs/benchmarks.md), so a transform
must run well above that to stay hidden behind the GPU.

  python bench/fim_loader.py                         # a BPE trained on the stdlib, 8192 ids
  python bench/fim_loader.py --corpus CORPUS_DIR     # the windows of a real corpus dir
"""

from __future__ import annotations

import argparse
import os
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # one host thread, like the trainer's loader
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from codediff.fim import FimTransform, fim_token_ids, fim_windows  # noqa: E402


def stdlib_corpus(vocab: int, max_chars: int) -> tuple[object, np.ndarray, int]:
    """(tokenizer, flat token ids with end-of-text after each document, eot id)."""
    from codediff.corpus.tokenizer import encode_batch, prepare_for_corpus, train_bpe

    root = Path(sysconfig.get_paths()["stdlib"])
    texts, n = [], 0
    for f in sorted(root.rglob("*.py")):
        if "test" in f.parts:
            continue
        try:
            t = f.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        texts.append(t)
        n += len(t)
        if n >= max_chars:
            break
    tok = train_bpe(iter(texts), vocab, length=len(texts), show_progress=False)
    prepare_for_corpus(tok)
    ids = [x + [0] for x in encode_batch(tok, texts)]
    return tok, np.array([t for d in ids for t in d], dtype=np.int64), 0


def corpus_dir(path: str) -> tuple[object, np.ndarray, int]:
    from tokenizers import Tokenizer

    from codediff.corpus.tokenizer import prepare_for_corpus
    from codediff.data import open_corpus

    c = open_corpus(path)
    tok = Tokenizer.from_file(str(c.tokenizer_path))
    prepare_for_corpus(tok)
    return tok, np.asarray(c.train, dtype=np.int64), c.eot_id


def char_level(tok, x: np.ndarray, rng: np.random.Generator, t: FimTransform) -> np.ndarray:
    """The paper's cut: decode, cut at characters, encode again; windows keep their length."""
    from codediff.corpus.tokenizer import encode_batch

    B, W = x.shape
    pieces: list[str] = []
    plan = []  # per window: list of (kind, payload)
    for b in range(B):
        row = x[b].tolist()
        docs, cur = [], []
        for v in row:
            if v == t.eot_id:
                docs.append((cur, True))
                cur = []
            else:
                cur.append(v)
        if cur:
            docs.append((cur, False))
        items = []
        for doc, closed in docs:
            if doc and rng.random() < t.rate:
                text = tok.decode(doc, skip_special_tokens=False)
                a, c = sorted(rng.integers(0, len(text) + 1, 2))
                items.append(("fim", len(pieces), closed))
                pieces += [text[:a], text[a:c], text[c:]]
            else:
                items.append(("plain", doc, closed))
        plan.append(items)
    enc = encode_batch(tok, pieces) if pieces else []
    out = np.empty_like(x)
    ids = t.ids
    for b, items in enumerate(plan):
        row: list[int] = []
        for kind, payload, closed in items:
            if kind == "fim":
                pre, mid, suf = enc[payload], enc[payload + 1], enc[payload + 2]
                row += [ids.prefix, *pre, ids.suffix, *suf, ids.middle, *mid]
            else:
                row += payload
            if closed:
                row.append(t.eot_id)
        row = (row + [t.eot_id] * W)[:W]  # re-encoding changes lengths: cut or pad
        out[b] = row
    return out


def rate(fn, batches: list[np.ndarray], seq: int) -> float:
    fn(batches[0], 0)
    t0 = time.perf_counter()
    for i, x in enumerate(batches):
        fn(x, i)
    return len(batches) * batches[0].shape[0] * seq / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", help="a codediff corpus dir (default: a stdlib BPE)")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--chars", type=int, default=6_000_000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--rate", type=float, default=0.5)
    ap.add_argument("--gpu-rate", type=float, default=2.5e6, help="tokens/s to compare with")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory():
        tok, flat, eot = corpus_dir(args.corpus) if args.corpus else \
            stdlib_corpus(args.vocab, args.chars)
    ids = fim_token_ids(tok)
    if ids is None:
        print("the tokenizer has no FIM sentinels; build the corpus with this codediff version")
        return 2
    t = FimTransform(rate=args.rate, spm_rate=0.0, ids=ids, eot_id=eot, seed=0)
    rng = np.random.default_rng(0)
    n = (len(flat) - 1) // args.seq
    batches = []
    for _ in range(args.batches):
        starts = rng.integers(0, n, args.batch) * args.seq
        batches.append(flat[starts[:, None] + np.arange(args.seq + 1)])
    docs = np.mean([(x == eot).sum(1).mean() + 1 for x in batches])
    tokens = rate(lambda x, i: fim_windows(x, np.arange(i * len(x), (i + 1) * len(x)), t),
                  batches, args.seq)
    crng = np.random.default_rng(1)
    chars = rate(lambda x, i: char_level(tok, x, crng, t), batches, args.seq)
    print(f"{len(flat):,} tokens, {args.batch} x {args.seq + 1} windows, {docs:.2f} documents "
          f"per window, FIM rate {args.rate}, one host thread")
    for name, r in (("tokens (codediff)", tokens), ("chars (decode + re-encode)", chars)):
        print(f"  {name:<28} {r / 1e6:8.2f}M tokens/s  = {r / args.gpu_rate:6.2f}x the "
              f"{args.gpu_rate / 1e6:.1f}M tokens/s GPU rate")
    return 0


if __name__ == "__main__":
    sys.exit(main())
