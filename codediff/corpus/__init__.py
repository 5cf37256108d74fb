"""The corpus stage: raw Python sources -> a capped, cleaned, decontaminated, tokenised corpus.

Pipeline (each step a small module):
    sources   read documents from `stdlib`, `site-packages`, `dir:PATH`, `hf:NAME_OR_PATH`
    filters   drop unparsable, auto-generated, minified, long-line and tiny files (counted)
    dedup     exact (normalised hash) then near (MinHash + LSH) deduplication
    decontam  drop documents sharing a long word n-gram with any shipped benchmark text
    tokenizer train a byte-level BPE on the cleaned pool, or load an existing one
    build     seeded order, hold out val tokens, take exactly U train tokens, write the corpus dir

`codediff corpus` (codediff/corpus/cli.py) drives `build.build_corpus`. The output format is the
"Corpus dir" section of docs/formats.md; docs/corpus.md explains the choices.
"""

from typing import Any

__all__ = ["CorpusConfig", "build_corpus"]


def __getattr__(name: str) -> Any:  # lazy: `codediff corpus --help` stays cheap
    if name in __all__:
        from codediff.corpus import build

        return getattr(build, name)
    raise AttributeError(name)
