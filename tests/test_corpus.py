"""`codediff corpus`: exact token counts, determinism, disjoint splits, dedup, decontamination,
tokenizer round trips, hf local files and one-line errors -- on small real inputs.

The inputs are ~30 real standard-library modules copied into a temp folder, plus planted files:
an exact duplicate, a near-duplicate, a HumanEval canonical solution, an MBPP reference solution
and a file holding the special-token strings as text.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from codediff.cli import main as cli_main
from codediff.corpus.build import CorpusConfig, build_corpus
from codediff.corpus.cli import parse_count
from codediff.corpus.decontam import DecontamConfig, Decontaminator
from codediff.corpus.dedup import DedupConfig, MinHasher, NearDedup, exact_key
from codediff.corpus.filters import FilterConfig, normalise, reject_reason
from codediff.corpus.sources import parse_source
from codediff.errors import UserError

REPO = Path(__file__).resolve().parents[1]
STDLIB = Path(sysconfig.get_paths()["stdlib"])
FILES = ["json/decoder.py", "json/encoder.py", "json/scanner.py", "json/__init__.py",
         "textwrap.py", "shlex.py", "fnmatch.py", "glob.py", "bisect.py", "heapq.py",
         "colorsys.py", "string.py", "queue.py", "sched.py", "getopt.py", "csv.py", "graphlib.py",
         "numbers.py", "reprlib.py", "contextlib.py", "abc.py", "copy.py", "operator.py",
         "linecache.py", "tabnanny.py", "stat.py", "keyword.py"]
VAL = 12_000
VOCAB = 512
NEAR_MARKER = "# a planted near-duplicate: this comment and one renamed variable differ"


def _data_dir() -> str | None:
    """Task data: $CODEDIFF_DATA (the Makefile sets it), else ../shared/data beside the repo."""
    env = os.environ.get("CODEDIFF_DATA")
    if env and Path(env).is_dir():
        return env
    guess = REPO.parent / "shared" / "data"
    return str(guess) if guess.is_dir() else None


def _mbpp_row(task_id: int) -> dict | None:
    data = _data_dir()
    if data is None or not (Path(data) / "mbpp" / "mbpp.jsonl").is_file():
        return None
    with open(Path(data) / "mbpp" / "mbpp.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row["task_id"] == task_id:
                return row
    return None


def _humaneval_reference(n: int = 0) -> str:
    from codediff.harness.tasks import load_task

    return load_task("humaneval").problems[n].reference


def _cfg(out: Path, sources: list[str], unique: int, val: int = VAL, **kw) -> CorpusConfig:
    kw.setdefault("decontam", DecontamConfig(data_dir=_data_dir()))
    return CorpusConfig(out=str(out), unique_tokens=unique, val_tokens=val, sources=sources,
                        vocab_size=kw.pop("vocab_size", VOCAB), workers=kw.pop("workers", 1),
                        progress=False, **kw)


def _docs(path: Path, eot: int) -> list[list[int]]:
    """The documents of a .bin file: token lists, each without its end-of-text id."""
    ids = np.fromfile(path, dtype="<u2").tolist()
    docs, cur = [], []
    for t in ids:
        if t == eot:
            docs.append(cur)
            cur = []
        else:
            cur.append(t)
    assert cur == [], "every document must end with the end-of-text id"
    return docs


@pytest.fixture(scope="module")
def src_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("src")
    for rel in FILES:
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(STDLIB / rel, d / rel)
    # Exact duplicate up to line endings, trailing spaces and blank lines.
    shlex = (STDLIB / "shlex.py").read_text(encoding="utf-8").split("\n")
    dup = [ln + "  " if ln.endswith((":", ")")) else ln + "\n" if not ln.strip() else ln
           for ln in shlex]
    (d / "dup_shlex.py").write_text("\r\n".join(dup), encoding="utf-8", newline="")
    # Near duplicate: one comment added, one local variable renamed.
    textwrap = (STDLIB / "textwrap.py").read_text(encoding="utf-8")
    near = NEAR_MARKER + "\n" + textwrap.replace("chunks", "pieces", 3)
    (d / "textwrap_copy.py").write_text(near, encoding="utf-8")
    # Contamination: HumanEval/0's prompt + canonical solution inside an ordinary module.
    (d / "planted_humaneval.py").write_text(
        '"""Utilities for numbers."""\nimport math\n\n' + _humaneval_reference(0)
        + "\n\ndef mean(xs):\n    return sum(xs) / len(xs)\n", encoding="utf-8")
    row = _mbpp_row(2)
    if row is not None:  # MBPP/2's reference solution, CRLF line endings as in the dataset
        (d / "planted_mbpp.py").write_text(
            "# tuple helpers\r\nimport itertools\r\n\r\n" + row["code"]
            + "\r\n\r\ndef pairs(xs):\r\n    return list(itertools.combinations(xs, 2))\r\n",
            encoding="utf-8", newline="")
    # Special-token strings inside source code must stay text.
    (d / "specials.py").write_text(
        '"""Names of the special tokens used by language models."""\n'
        'EOT = "<|endoftext|>"\nMASK = "<|mask|>"\nPAD = "<|pad|>"\n\n'
        "def is_special(token):\n    return token in (EOT, MASK, PAD)\n", encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def full(src_dir, tmp_path_factory):
    """A corpus holding every kept document: U = what the too-large error says is available."""
    base = tmp_path_factory.mktemp("full")
    with pytest.raises(UserError) as e:
        build_corpus(_cfg(base / "probe", [f"dir:{src_dir}"], 10**9))
    m = re.search(r"leaving at most ([\d,]+) unique training tokens", str(e.value))
    assert m, str(e.value)
    assert list(base.iterdir()) == [], "a failed build must leave nothing behind"
    available = int(m.group(1).replace(",", ""))
    out = base / "corpus"
    manifest = build_corpus(_cfg(out, [f"dir:{src_dir}"], available))
    return out, manifest, available


def _decoded(out: Path, manifest: dict) -> tuple[list[str], list[str]]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    eot = manifest["tokenizer"]["eot_id"]
    dec = [[tok.decode(d, skip_special_tokens=False) for d in _docs(out / f"{s}.bin", eot)]
           for s in ("train", "val")]
    return dec[0], dec[1]


# ----------------------------------------------------------------------------- whole builds

def test_exact_counts_and_manifest(full):
    out, m, available = full
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "tokenizer.json",
                                                     "train.bin", "val.bin"]
    assert m == json.loads((out / "manifest.json").read_text())
    assert m["schema"] == "codediff.corpus/1" and m["dtype"] == "uint16"
    assert (out / "train.bin").stat().st_size == 2 * available == 2 * m["unique_tokens"]
    assert (out / "val.bin").stat().st_size == 2 * VAL == 2 * m["val_tokens"]
    tok = m["tokenizer"]
    assert (tok["eot_id"], tok["mask_id"], tok["pad_id"]) == (0, 1, 2)
    assert (tok["eot_token"], tok["mask_token"], tok["pad_token"]) == (
        "<|endoftext|>", "<|mask|>", "<|pad|>")
    assert tok["vocab_size"] == VOCAB
    for split in ("train", "val"):
        ids = np.fromfile(out / f"{split}.bin", dtype="<u2")
        assert ids[-1] == 0 and int((ids == 0).sum()) == m[split]["documents"]
        assert ids.max() < VOCAB
        import hashlib

        assert hashlib.sha256((out / f"{split}.bin").read_bytes()).hexdigest() == \
            m[split]["sha256"]
    # All of the pool is used, so no training document is cut; the val one is.
    assert m["train"]["cut_document"] is None and m["val"]["cut_document"] is not None
    assert m["pool"]["documents"] == m["train"]["documents"] + m["val"]["documents"]
    f = m["filters"]
    assert f["read"] == len(FILES) + 4 + (_mbpp_row(2) is not None)
    assert f["kept"] == f["read"] - sum(f["dropped"].values())
    assert f["dropped"]["autogenerated"] == 1  # keyword.py says it is generated
    src = m["sources"][0]
    assert src["kind"] == "dir" and len(src["file_list_sha256"]) == 64
    assert src["train_tokens"] == available and src["val_tokens"] == VAL


def test_round_trip_decode_of_files(full):
    out, m, _ = full
    train, val = _decoded(out, m)
    docs = set(train) | set(val)
    cut = m["val"]["cut_document"]["document"]
    checked = 0
    for rel in ("json/decoder.py", "heapq.py", "bisect.py", "csv.py"):
        if rel == cut:
            continue
        text, _ = normalise((STDLIB / rel).read_bytes())
        assert text in docs, rel  # the whole file, byte for byte
        checked += 1
    assert checked >= 3


def test_special_token_strings_stay_text(full):
    out, m, _ = full
    train, val = _decoded(out, m)
    specials = [d for d in train + val if d.startswith('"""Names of the special tokens')]
    assert len(specials) == 1 and 'EOT = "<|endoftext|>"' in specials[0]
    for split in ("train", "val"):
        ids = np.fromfile(out / f"{split}.bin", dtype="<u2")
        assert not np.isin(ids, [1, 2]).any(), "mask/pad ids must never occur in a corpus"


def test_train_val_disjoint(full):
    out, m, _ = full
    train, val = _decoded(out, m)
    assert m["val"]["documents"] >= 2 and m["train"]["documents"] >= 10
    assert not set(train) & set(val)
    joined = "\n".join(train)
    for doc in val:  # not even the cut validation document's prefix is in train
        assert doc[:300] not in joined


def test_dedup_removes_planted_duplicates(full):
    out, m, _ = full
    assert m["dedup"]["exact_removed"] == 1
    assert m["dedup"]["near_removed"] == 1
    train, val = _decoded(out, m)
    docs = train + val
    shlex_sig = '"""A lexical analyzer class for simple shell-like syntaxes."""'
    assert sum(shlex_sig in d for d in docs) == 1
    assert sum("class TextWrapper" in d for d in docs) == 1
    assert not any(NEAR_MARKER in d for d in docs)  # textwrap.py comes first and is kept


def test_decontamination_removes_planted_solutions(full):
    out, m, _ = full
    dec = m["decontamination"]
    removed = {d["document"]: d["matches"] for d in dec["removed_documents"]}
    assert "humaneval HumanEval/0" in removed["planted_humaneval.py"]
    assert dec["removed_by_task"]["humaneval"] >= 1
    assert dec["tasks"]["humaneval"]["problems"] == 164
    train, val = _decoded(out, m)
    text = "\n".join(train + val)
    assert "distance = abs(elem - elem2)" not in text
    if _mbpp_row(2) is None:
        pytest.skip("no MBPP data (set CODEDIFF_DATA): MBPP part not checked")
    assert any(x.startswith("mbpp") and x.endswith("Mbpp/2") for x in removed["planted_mbpp.py"])
    assert dec["tasks"]["mbpp"]["problems"] == 974  # every split, not just the test split
    assert "similar_elements" not in text
    assert dec["removed"] == 2, removed  # nothing honest in the stdlib sample is dropped


def test_deterministic_across_processes_and_workers(full, src_dir, tmp_path):
    """Same inputs and seed -> the same bytes (another process, another hash seed, 2 workers);
    and a smaller U is a prefix of a larger one with the same validation set."""
    out_full, m_full, _ = full
    u = 20_000
    m1 = build_corpus(_cfg(tmp_path / "a", [f"dir:{src_dir}"], u))
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    data = _data_dir()
    cmd = [sys.executable, "-m", "codediff.cli", "corpus", "--source", f"dir:{src_dir}",
           "--unique-tokens", "20k", "--val-tokens", str(VAL), "--vocab-size", str(VOCAB),
           "--out", str(tmp_path / "b"), "--workers", "2", "--quiet"]
    if data is not None:
        cmd += ["--decontam-data", data]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    for name in ("train.bin", "val.bin", "tokenizer.json", "manifest.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert m1["unique_tokens"] == u
    # Nested corpora: same tokenizer and val set; the small train set is a prefix of the full one.
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == \
        (out_full / "tokenizer.json").read_bytes()
    assert (tmp_path / "a" / "val.bin").read_bytes() == (out_full / "val.bin").read_bytes()
    small = np.fromfile(tmp_path / "a" / "train.bin", dtype="<u2")
    big = np.fromfile(out_full / "train.bin", dtype="<u2")
    whole = u - m1["train"]["cut_document"]["kept_tokens"]
    assert np.array_equal(small[:whole], big[:whole])


def test_seed_changes_order(src_dir, tmp_path):
    a = build_corpus(_cfg(tmp_path / "a", [f"dir:{src_dir}"], 5000, val=1000, seed=1,
                          decontam=DecontamConfig(enabled=False)))
    b = build_corpus(_cfg(tmp_path / "b", [f"dir:{src_dir}"], 5000, val=1000, seed=2,
                          decontam=DecontamConfig(enabled=False)))
    assert a["train"]["sha256"] != b["train"]["sha256"]
    assert a["tokenizer"]["sha256"] == b["tokenizer"]["sha256"]  # trained on the whole pool


def test_weighted_mix_of_sources(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    for i, rel in enumerate(FILES):
        dst = (one if i % 2 else two) / rel.replace("/", "_")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(STDLIB / rel, dst)
    m = build_corpus(_cfg(tmp_path / "out", [f"dir:{one}@3", f"dir:{two}"], 40_000, val=2000,
                          decontam=DecontamConfig(enabled=False)))
    s1, s2 = m["sources"]
    assert s1["weight"] == 3.0 and s2["weight"] == 1.0
    assert s1["train_tokens"] + s2["train_tokens"] == 40_000
    # Whole documents of a few thousand tokens make the split coarse; the order itself is
    # checked exactly in test_seeded_order_follows_weights.
    assert 1.5 < s1["train_tokens"] / s2["train_tokens"] < 6


def test_hf_local_jsonl_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rows = [{"content": (STDLIB / rel).read_text(encoding="utf-8"), "path": rel, "stars": i}
            for i, rel in enumerate(FILES)]
    rows.append({"content": None, "path": "null.py", "stars": 0})
    data = tmp_path / "code.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    m = build_corpus(_cfg(tmp_path / "out", [f"hf:{data}"], 10_000, val=1000,
                          decontam=DecontamConfig(enabled=False)))
    assert m["unique_tokens"] == 10_000
    assert m["sources"][0]["read"] == len(rows) and m["filters"]["dropped"]["not_text"] == 1
    assert m["sources"][0]["text_column"] == "content"
    with pytest.raises(UserError, match="no column 'code'.*content, path, stars"):
        build_corpus(_cfg(tmp_path / "out2", [f"hf:{data}"], 10_000, val=1000,
                          text_column="code", decontam=DecontamConfig(enabled=False)))
    assert not (tmp_path / "out2").exists()


def test_loaded_tokenizer_special_tokens_checked(src_dir, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "</s>", "<pad>", "[M]"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([(STDLIB / f).read_text(encoding="utf-8") for f in FILES[:8]],
                            trainer=trainer)
    folder = tmp_path / "hf-tok"
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    src = [f"dir:{src_dir}"]
    no_decon = DecontamConfig(enabled=False)
    # A bare tokenizer.json without a mask token: refused before any work.
    with pytest.raises(UserError, match="no mask token '<\\|mask\\|>'.*--mask-token"):
        build_corpus(_cfg(tmp_path / "o1", src, 4000, val=500, eot_token="</s>",
                          pad_token="<pad>", tokenizer=str(folder / "tokenizer.json"),
                          decontam=no_decon))
    with pytest.raises(UserError, match="no eot token '<\\|endoftext\\|>'.*--eot-token"):
        build_corpus(_cfg(tmp_path / "o1", src, 4000, val=500,
                          tokenizer=str(folder / "tokenizer.json"), decontam=no_decon))
    with pytest.raises(UserError, match="mask token '</s>' must differ"):
        build_corpus(_cfg(tmp_path / "o1", src, 4000, val=500, tokenizer=str(folder),
                          eot_token="</s>", mask_token="</s>", pad_token="<pad>",
                          decontam=no_decon))
    assert not (tmp_path / "o1").exists()
    # Named through flags...
    m = build_corpus(_cfg(tmp_path / "o2", src, 4000, val=500, tokenizer=str(folder),
                          eot_token="</s>", mask_token="[M]", pad_token="<pad>",
                          decontam=no_decon))
    t = m["tokenizer"]
    assert (t["eot_id"], t["pad_id"], t["mask_id"]) == (1, 2, 3) and t["vocab_size"] == 400
    assert t["mask_token"] == "[M]" and t["loaded_from"] == "hf-tok"
    ids = np.fromfile(tmp_path / "o2" / "train.bin", dtype="<u2")
    assert len(ids) == 4000 and ids[-1] == 1 and int((ids == 1).sum()) == m["train"]["documents"]
    # ... or through the folder's tokenizer_config.json.
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": "</s>", "pad_token": "<pad>", "mask_token": {"content": "[M]"}}))
    m3 = build_corpus(_cfg(tmp_path / "o3", src, 4000, val=500, tokenizer=str(folder),
                           decontam=no_decon))
    assert m3["tokenizer"]["mask_id"] == 3
    assert (tmp_path / "o3" / "train.bin").read_bytes() == \
        (tmp_path / "o2" / "train.bin").read_bytes()


def test_bad_input_one_line_error_exit_2(src_dir, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["corpus", "--out", str(out), "--quiet", "--no-decontam", "--vocab-size", "512"]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text(json.dumps({"text": "x = 1\n"}) + "\n")
    cases = [
        (["--source", f"dir:{tmp_path / 'missing'}", "-U", "1k"], "does not exist"),
        (["--source", f"hf:{tmp_path / 'missing.jsonl'}", "-U", "1k"], "does not exist"),
        (["--source", f"hf:{jsonl}", "-U", "1k"], "no column 'content'"),
        (["--source", f"dir:{src_dir}", "-U", "100M", "--val-tokens", "1k"],
         "leaving at most"),
        (["--source", f"dir:{src_dir}", "-U", "1k", "--tokenizer", str(tmp_path / "nope")],
         "does not exist"),
        (["--source", "gopher:x", "-U", "1k"], "unknown source"),
        (["--source", f"dir:{src_dir}", "-U", "1k", "--vocab-size", "100"], "--vocab-size 100"),
        (["--source", f"dir:{src_dir}@0", "-U", "1k"], "weight must be a positive"),
    ]
    for args, msg in cases:
        assert cli_main(base + args) == 2, args
        err = capsys.readouterr().err.strip()
        assert err.startswith("codediff: error: ") and msg in err, err
        assert "\n" not in err, err
        assert not out.exists() and [p.name for p in tmp_path.iterdir()
                                     if p.name.startswith(".")] == []
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert cli_main(base + ["--source", f"dir:{src_dir}", "-U", "1k"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "x"


def test_unknown_hub_dataset_is_one_line_error(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}  # never download
    r = subprocess.run([sys.executable, "-m", "codediff.cli", "corpus", "--source",
                        "hf:codediff-tests/no-such-dataset", "-U", "1k", "--quiet",
                        "--no-decontam", "--out", str(tmp_path / "o")],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("codediff: error: --source hf:codediff-tests/no-such-dataset: "
                           "could not open the dataset"), r.stderr
    assert not (tmp_path / "o").exists()


def test_overwrite_replaces_existing_out(src_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    build_corpus(_cfg(out, [f"dir:{src_dir}"], 2000, val=500, overwrite=True,
                      decontam=DecontamConfig(enabled=False)))
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "tokenizer.json",
                                                     "train.bin", "val.bin"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


# ----------------------------------------------------------------------------- units

def test_filters():
    cfg = FilterConfig()
    ok = (STDLIB / "bisect.py").read_text(encoding="utf-8")
    assert reject_reason(ok, cfg) is None
    assert reject_reason("x = 1\n", cfg) == "too_small"
    assert reject_reason(ok + "\nDATA = '" + "a" * 2000 + "'\n", cfg) == "long_line"
    minified = "\n".join(f"x{i}=1;" + "y=2;" * 40 for i in range(20))
    assert reject_reason(minified, cfg) == "minified"
    assert reject_reason("# Auto-generated by tools/gen.py; do not edit\n" + ok, cfg) == \
        "autogenerated"
    assert reject_reason(ok + "\ndef broken(:\n    pass\n", cfg) == "parse_error"
    assert reject_reason(ok + '\nprint "hello"\n', cfg) == "python2"
    assert reject_reason("#" * 80 + "\n" + "# " + "-" * 70 + "\n" * 5 + "=" * 90 + "\n",
                         cfg) == "low_alnum"
    assert normalise(b"\xff\xfe bad") == (None, "not_utf8")
    assert normalise(None) == (None, "not_text")
    assert normalise("\ufeffa\r\nb\rc") == ("a\nb\nc", None)


def test_exact_and_near_dedup_units():
    text = (STDLIB / "textwrap.py").read_text(encoding="utf-8")
    assert exact_key(text) == exact_key("\n\n".join(ln + " \t" for ln in text.split("\n")))
    assert exact_key(text) != exact_key(text.replace("width", "wide", 1))
    cfg = DedupConfig()
    hasher, near = MinHasher(cfg), NearDedup(cfg)
    assert near.is_duplicate(0, hasher.signature(text)) is None
    assert near.is_duplicate(1, hasher.signature(NEAR_MARKER + "\n" + text)) == 0
    other = (STDLIB / "heapq.py").read_text(encoding="utf-8")
    assert near.is_duplicate(2, hasher.signature(other)) is None
    half = text[: len(text) // 3]  # a third of the file is not a near-duplicate of all of it
    assert near.is_duplicate(3, hasher.signature(half)) is None


def test_decontaminator_units():
    solution = ("def similar_elements(test_tup1, test_tup2):\n"
                "  res = tuple(set(test_tup1) & set(test_tup2))\n  return (res)\n")
    texts = [("mbpp", "Mbpp/2", solution),
             ("mbpp", "Mbpp/9", "assert f([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]) == 11"),
             ("humaneval", "HumanEval/1",
              "def add_two_numbers(first, second):\n    return first + second\n"),
             ("humaneval", "HumanEval/2", "x = 1")]
    d = Decontaminator(texts, ngram=10, min_words=5)
    assert d.matches("# header\nimport os\n" + solution.replace("  ", "    ")) == [
        ("mbpp", "Mbpp/2")]
    assert d.matches("def similar_elements(a, b):\n    return set(a) & set(b)\n") == []
    # Runs of bare numbers are test inputs, not contamination.
    assert d.matches("TABLE = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]\n") == []
    # A text shorter than the n-gram is matched whole (7 words here); one of 2 words is not.
    assert d.matches("def ADD_two_numbers(first, second): return first+second") == [
        ("humaneval", "HumanEval/1")]
    assert d.summary()["humaneval"] == {"problems": 2, "texts": 2, "texts_matched_whole": 1,
                                        "texts_too_short": 1}
    # A terse solution with no informative 10-word window is matched whole, not window by window.
    d2 = Decontaminator([("mbpp", "Mbpp/14", "def find_Volume(l,b,h) : \n    return ((l * b * h) / 2) ")])
    assert d2.matches("import os\n\ndef find_volume(l, b, h):\n    return (l * b * h) / 2\n") == [
        ("mbpp", "Mbpp/14")]
    assert d2.matches("def find_volume(l, b, h):\n    return (l * b * h) / 3\n") == []


def test_every_reference_solution_would_be_caught():
    """Planted verbatim, each HumanEval / MBPP (all 974) / MBPP+ reference solution is found."""
    from codediff.harness.tasks import contamination_texts, load_task

    data = _data_dir()
    d = Decontaminator(contamination_texts(data))
    tasks = [load_task("humaneval")]
    if data is not None:
        tasks += [load_task("mbpp+", data)]
        rows = [json.loads(line) for line in open(Path(data) / "mbpp" / "mbpp.jsonl")]
        assert len(rows) == 974
        missed = [r["task_id"] for r in rows
                  if ("mbpp", f"Mbpp/{r['task_id']}") not in d.matches(r["code"])]
        assert missed == []
    for task in tasks:
        missed = [p.task_id for p in task.problems
                  if (task.name, p.task_id) not in d.matches("# x\n" + p.reference)]
        assert missed == [], task.name


def test_seeded_order_follows_weights():
    from codediff.corpus.build import _Doc, _seeded_order

    rng = np.random.default_rng(0)
    pool = [_Doc(i % 2, f"{i}", "x" * int(rng.integers(100, 3000))) for i in range(2000)]
    order = _seeded_order(pool, [3.0, 1.0], seed=7)
    assert sorted(d.key for d in order) == sorted(d.key for d in pool)
    assert [d.key for d in order] == [d.key for d in _seeded_order(pool, [3.0, 1.0], seed=7)]
    assert [d.key for d in order] != [d.key for d in _seeded_order(pool, [3.0, 1.0], seed=8)]
    head = order[:800]  # before either source runs out: characters split 3:1
    chars = [sum(len(d.text) for d in head if d.source == s) for s in (0, 1)]
    assert abs(chars[0] / chars[1] - 3.0) < 0.05


def test_parse_count_and_source_specs():
    assert parse_count("5M") == 5_000_000 and parse_count("250k") == 250_000
    assert parse_count("1.5B") == 1_500_000_000 and parse_count("1_000") == 1000
    assert parse_count("1e6") == 1_000_000
    with pytest.raises(argparse.ArgumentTypeError):
        parse_count("1.5")
    s = parse_source("hf:bigcode/the-stack-smol:data/python@2")
    assert (s.kind, s.target, s.data_dir, s.config, s.weight) == (
        "hf", "bigcode/the-stack-smol", "data/python", None, 2.0)
    s = parse_source("hf:codeparrot/github-code-clean:Python-all")
    assert (s.target, s.config, s.data_dir) == ("codeparrot/github-code-clean", "Python-all", None)
    assert parse_source("dir:/a/b@c").target == "/a/b@c"
    assert parse_source("stdlib").kind == "stdlib"
