"""Train a code byte-level BPE, or load an existing tokenizer, and find its special ids.

Our own BPE: special tokens `<|endoftext|>`, `<|mask|>`, `<|pad|>` get ids 0, 1, 2, and the
fill-in-the-middle sentinels `<|fim_prefix|>`, `<|fim_middle|>`, `<|fim_suffix|>` ids 3, 4, 5
(codediff.fim; reserved in every corpus, used by `codediff train --fim-rate`); no
normaliser (bytes round-trip exactly); pre-tokenisation splits every digit on its own (numbers
are not memorised as one token) and then applies the GPT-2 byte-level regex, whose `\\s+(?!\\S)`
rule keeps runs of spaces -- and newline + indentation -- together so indentation merges into
single tokens.

Documents are encoded with `encode_special_tokens = True`: a literal "<|endoftext|>" inside a
source file is encoded as ordinary text, so the only special ids in a corpus are the ones we put
there.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from codediff.errors import UserError
from codediff.fim import FIM_TOKENS, FimIds, fim_token_ids

EOT, MASK, PAD = "<|endoftext|>", "<|mask|>", "<|pad|>"
MIN_VOCAB = 300  # 256 bytes + specials + a few merges


@dataclass(frozen=True)
class TokenizerInfo:
    vocab_size: int
    eot_id: int
    mask_id: int
    pad_id: int
    eot_token: str
    mask_token: str
    pad_token: str
    fim: FimIds | None = None  # the FIM sentinels, when the tokenizer has them

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["fim"] = self.fim.as_dict() if self.fim is not None else None
        return d

    @property
    def dtype(self) -> str:
        return "uint16" if self.vocab_size <= 65536 else "uint32"


def train_bpe(texts: Iterator[str], vocab_size: int, length: int | None = None,
              show_progress: bool = True) -> Any:
    """A byte-level BPE with `vocab_size` entries (specials included) trained on `texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < MIN_VOCAB:
        raise UserError(f"--vocab-size {vocab_size} is too small; a byte-level BPE needs at "
                        f"least {MIN_VOCAB}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, show_progress=show_progress,
        special_tokens=[EOT, MASK, PAD, *FIM_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer, length=length)
    return tok


def load_tokenizer(path: str | Path) -> tuple[Any, dict[str, str]]:
    """A tokenizer from a tokenizer.json file or a folder holding one, and the special tokens
    its tokenizer_config.json names (eos / mask / pad), if any."""
    from tokenizers import Tokenizer

    p = Path(path).expanduser()
    folder = p if p.is_dir() else p.parent
    file = p / "tokenizer.json" if p.is_dir() else p
    if not file.is_file():
        where = f"{p} has no tokenizer.json" if p.is_dir() else f"{p} does not exist"
        raise UserError(f"--tokenizer: {where}; pass a tokenizer.json file or a Hugging Face "
                        "tokenizer folder")
    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as e:
        raise UserError(f"--tokenizer {file}: not a Hugging Face tokenizers file ({e})") from e
    named: dict[str, str] = {}
    config = folder / "tokenizer_config.json"
    if config.is_file():
        try:
            cfg = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            cfg = {}
        for ours, theirs in (("eot", "eos_token"), ("mask", "mask_token"), ("pad", "pad_token")):
            value = cfg.get(theirs)
            if isinstance(value, dict):  # AddedToken serialised as a dict
                value = value.get("content")
            if isinstance(value, str) and value:
                named[ours] = value
    return tok, named


def special_info(tok: Any, eot: str, mask: str, pad: str) -> TokenizerInfo:
    """Look up the special tokens; each must exist, and mask must differ from eot and pad."""
    ids = {}
    for role, token in (("eot", eot), ("mask", mask), ("pad", pad)):
        i = tok.token_to_id(token)
        if i is None:
            raise UserError(f"the tokenizer has no {role} token {token!r}; pass "
                            f"--{role}-token with one it has (or train our own tokenizer)")
        ids[role] = i
    if ids["mask"] in (ids["eot"], ids["pad"]):
        raise UserError(f"the mask token {mask!r} must differ from the end-of-text and pad "
                        "tokens; pass --mask-token with a dedicated token")
    fim = fim_token_ids(tok)
    top = max(ids.values()) if fim is None else max(*ids.values(), fim.prefix, fim.middle,
                                                     fim.suffix)
    vocab = max(tok.get_vocab_size(with_added_tokens=True), top + 1)
    return TokenizerInfo(vocab, ids["eot"], ids["mask"], ids["pad"], eot, mask, pad, fim)


def prepare_for_corpus(tok: Any) -> None:
    """Encode special-token strings found in documents as text, never as special ids."""
    tok.encode_special_tokens = True
    tok.no_truncation()
    tok.no_padding()


def encode_batch(tok: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, without post-processor specials (BOS/EOS), in parallel."""
    fast = getattr(tok, "encode_batch_fast", None)
    encs = (fast or tok.encode_batch)(texts, add_special_tokens=False)
    return [e.ids for e in encs]
