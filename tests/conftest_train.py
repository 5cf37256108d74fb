"""A small real corpus dir (docs/formats.md layout) for the training tests.

A byte-level BPE with 512 ids is trained on Python standard-library sources (read in place, nothing
downloaded); documents are tokenized, each followed by end-of-text, and split into train/val.
"""

from __future__ import annotations

import hashlib
import json
import sysconfig
from pathlib import Path

import numpy as np

SPECIALS = ["<|endoftext|>", "<|mask|>", "<|pad|>"]
PACKAGES = ("json", "email", "http", "importlib", "logging", "unittest")


def stdlib_sources(max_bytes: int) -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    docs, size = [], 0
    for pkg in PACKAGES:
        for f in sorted((root / pkg).rglob("*.py")):
            text = f.read_text(encoding="utf-8", errors="replace")
            if not text.strip():
                continue
            docs.append(text)
            size += len(text)
            if size >= max_bytes:
                return docs
    return docs


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_corpus(out: Path, *, vocab_size: int = 512, max_bytes: int = 600_000,
                mask_token: bool = True) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    out.mkdir(parents=True, exist_ok=True)
    docs = stdlib_sources(max_bytes)
    specials = SPECIALS if mask_token else [SPECIALS[0], SPECIALS[2]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(docs, trainer)
    tok.save(str(out / "tokenizer.json"))
    eot = tok.token_to_id(SPECIALS[0])
    ids = [tok.encode(d).ids + [eot] for d in docs]
    n_val = max(1, len(ids) // 10)
    val, train = ids[:n_val], ids[n_val:]
    for name, part in (("train", train), ("val", val)):
        np.array([t for d in part for t in d], dtype=np.uint16).tofile(out / f"{name}.bin")
    n_train = (out / "train.bin").stat().st_size // 2
    n_val_tok = (out / "val.bin").stat().st_size // 2
    manifest = {
        "schema": "codediff.corpus/1", "dtype": "uint16",
        "tokenizer": {"vocab_size": tok.get_vocab_size(), "eot_id": eot,
                      "mask_id": tok.token_to_id(SPECIALS[1]) if mask_token else None,
                      "pad_id": tok.token_to_id(SPECIALS[2]), "eot_token": SPECIALS[0],
                      "mask_token": SPECIALS[1] if mask_token else None,
                      "pad_token": SPECIALS[2], "sha256": _sha(out / "tokenizer.json")},
        "unique_tokens": n_train, "val_tokens": n_val_tok,
        "train": {"file": "train.bin", "tokens": n_train, "documents": len(train),
                  "sha256": _sha(out / "train.bin")},
        "val": {"file": "val.bin", "tokens": n_val_tok, "documents": len(val),
                "sha256": _sha(out / "val.bin")},
        "seed": 0, "sources": ["python stdlib (tests)"], "created_by": "tests",
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out
