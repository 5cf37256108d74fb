"""Bad options through the real command line: exit code 2, one line `codediff: error: ...` that
names the option, no traceback, and nothing written.

Each case runs `python -m codediff.cli ...` in a fresh process (only the chosen command's module
is imported). One tiny corpus and one tiny `ar` and `mdm` run dir serve every case.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest_train import make_corpus

ROOT = Path(__file__).resolve().parent.parent
CONTEXT = 64  # the tiny models' max_seq_len


@pytest.fixture(scope="session")
def fixture_dir(tmp_path_factory) -> Path:
    """corpus/, ar-run/ and mdm-run/ (a checkpoint each), choices.jsonl, samples.jsonl."""
    from codediff.checkpoints import save_checkpoint
    from codediff.model import ModelConfig, Transformer

    root = tmp_path_factory.mktemp("refusals")
    corpus = make_corpus(root / "corpus", max_bytes=60_000)
    for objective in ("ar", "mdm"):
        torch.manual_seed(0)
        cfg = ModelConfig(vocab_size=512, n_layer=1, n_head=2, d_model=32,
                          max_seq_len=CONTEXT, causal=objective == "ar")
        meta = {"objective": objective, "mask_id": 1, "eot_id": 0, "pad_id": 2,
                "tokens": 1000, "epochs": 1.0}
        save_checkpoint(Transformer(cfg), corpus / "tokenizer.json",
                        root / f"{objective}-run" / "checkpoints" / "tokens-1000", meta)
    row = {"schema": "codediff.codechoice/1", "task": "toy", "task_id": "T/0",
           "context": "def f(a):\n    return ", "options": ["a\n", "-a\n"], "answer": 0}
    (root / "choices.jsonl").write_text(json.dumps(row) + "\n")
    (root / "samples.jsonl").write_text(json.dumps(
        {"task_id": "HumanEval/0", "completion": "    return True\n"}) + "\n")
    (root / "bad.toml").write_text('n_layer = "two"\n')
    (root / "afile").write_text("not a folder\n")
    return root


def cli(args: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "codediff.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


NO_GPU_DEVICE = "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"

# (id, command line with {F} = fixture dir and {T} = fresh output dir, text the error names)
TRAIN = ["train", "--corpus", "{F}/corpus", "--objective", "mdm", "--total-tokens", "2K",
         "--out", "{T}/run"]
EVAL = ["evaluate", "--task", "humaneval", "--samples", "{F}/samples.jsonl", "--out", "{T}/res"]
SCORE = ["score", "--model", "{F}/mdm-run", "--choices", "{F}/choices.jsonl", "--out",
         "{T}/s.json", "--device", "cpu"]
CHOICE = ["codechoice", "--tasks", "humaneval", "--out", "{T}/c.jsonl"]
GEN_AR = ["generate", "--model", "{F}/ar-run", "--task", "humaneval", "--limit", "1",
          "--device", "cpu", "--out", "{T}/s.jsonl"]
GEN_DLM = ["generate", "--model", "{F}/mdm-run", "--task", "humaneval", "--limit", "1",
           "--device", "cpu", "--gen-length", "8", "--block-length", "8", "--out", "{T}/s.jsonl"]
CORPUS = ["corpus", "--source", "stdlib", "-U", "1k", "--val-tokens", "1k", "--no-decontam"]
REPORT = ["report", "--results", "{F}/corpus"]

CASES = [
    ("train-n-head-0", [*TRAIN, "--n-head", "0"], "--n-head"),
    ("train-max-seq-len-0", [*TRAIN, "--max-seq-len", "0"], "--max-seq-len"),
    ("train-dropout-2", [*TRAIN, "--dropout", "2"], "--dropout"),
    ("train-toml-n-layer-text", [*TRAIN, "--config", "{F}/bad.toml"], "n_layer"),
    ("train-mdm-val-samples-0", [*TRAIN, "--mdm-val-samples", "0"], "--mdm-val-samples"),
    ("train-n-layer-0", [*TRAIN, "--n-layer", "0"], "--n-layer"),
    ("train-d-model-0", [*TRAIN, "--d-model", "0"], "--d-model"),
    ("train-warmup-negative", [*TRAIN, "--warmup-steps", "-1"], "--warmup-steps"),
    ("train-seq-len-above-context", [*TRAIN, "--seq-len", "512"], "--seq-len"),
    ("train-compile-mode-bogus", [*TRAIN, "--compile-mode", "bogus"], "--compile-mode"),
    ("train-lr-0", [*TRAIN, "--lr", "0"], "--lr"),
    ("train-batch-size-0", [*TRAIN, "--batch-size", "0"], "--batch-size"),
    ("train-fraction-of-a-token", [*TRAIN, "--val-tokens", "1.5"], "--val-tokens"),
    ("train-schedule-bogus", [*TRAIN, "--schedule", "bogus"], "--schedule"),
    ("train-out-unwritable", [*TRAIN[:-1], "/sys/codediff-x"], "--out"),
    ("train-out-under-a-file", [*TRAIN[:-1], "{F}/afile/sub"], "--out"),
    ("train-out-is-a-file", [*TRAIN[:-1], "{F}/afile"], "--out"),
    ("evaluate-timeout-0", [*EVAL, "--timeout", "0"], "--timeout"),
    ("evaluate-timeout-negative", [*EVAL, "--timeout", "-1"], "--timeout"),
    ("evaluate-memory-negative", [*EVAL, "--memory-mb", "-5"], "--memory-mb"),
    ("evaluate-workers-negative", [*EVAL, "--workers", "-1"], "--workers"),
    ("evaluate-out-is-a-file", [*EVAL[:-1], "{F}/afile"], "--out"),
    ("evaluate-out-unwritable", [*EVAL[:-1], "/sys/codediff-x"], "--out"),
    ("score-samples-renamed", [*SCORE, "--samples", "8"], "--samples"),
    ("score-mc-samples-0", [*SCORE, "--mc-samples", "0"], "--mc-samples"),
    ("score-mc-samples-negative", [*SCORE, "--mc-samples", "-2"], "--mc-samples"),
    ("score-batch-size-0", [*SCORE, "--batch-size", "0"], "--batch-size"),
    ("score-limit-negative", [*SCORE, "--limit", "-1"], "--limit"),
    ("score-device-bogus", [*SCORE, "--device", "bogus"], "--device"),
    ("score-device-no-gpu", [*SCORE, "--device", NO_GPU_DEVICE], "--device"),
    ("score-out-is-a-folder", [*SCORE[:-3], "{F}", "--device", "cpu"], "--out"),
    ("score-out-exists", [*SCORE[:-3], "{F}/choices.jsonl", "--device", "cpu"], "--overwrite"),
    ("codechoice-limit-negative", [*CHOICE, "--limit", "-1"], "--limit"),
    ("codechoice-limit-0", [*CHOICE, "--limit", "0"], "--limit"),
    ("codechoice-out-under-a-file", [*CHOICE[:-1], "{F}/afile/sub.jsonl"], "--out"),
    ("generate-dlm-options-for-ar", [*GEN_AR, "--sampler", "threshold", "--tau", "0.5",
                                     "--cache", "dual"], "--sampler"),
    ("generate-ar-options-for-dlm", [*GEN_DLM, "--max-new-tokens", "8"], "--max-new-tokens"),
    ("generate-gen-length-over-context", [*GEN_DLM, "--gen-length", str(4 * CONTEXT),
                                          "--block-length", "8"], "--gen-length"),
    ("generate-tau-without-threshold", [*GEN_DLM, "--tau", "0.5"], "--tau"),
    ("generate-tau-above-1", [*GEN_DLM, "--sampler", "threshold", "--tau", "2"], "--tau"),
    ("generate-n-0", [*GEN_DLM, "-n", "0"], "--n"),
    ("generate-top-p-0", [*GEN_AR, "--top-p", "0"], "--top-p"),
    ("generate-device-bogus", [*GEN_AR[:-4], "--device", "bogus", "--out", "{T}/s.jsonl"],
     "--device"),
    ("generate-device-no-gpu", [*GEN_AR[:-4], "--device", NO_GPU_DEVICE, "--out",
                                "{T}/s.jsonl"], "--device"),
    ("generate-out-is-a-folder", [*GEN_AR[:-1], "{F}"], "--out"),
    ("corpus-out-unwritable", [*CORPUS, "--out", "/sys/codediff-x"], "--out"),
    ("corpus-out-under-a-file", [*CORPUS, "--out", "{F}/afile/sub"], "--out"),
    ("corpus-out-is-a-file", [*CORPUS, "--out", "{F}/afile"], "--out"),
    ("corpus-out-exists", [*CORPUS, "--out", "{F}/corpus"], "--overwrite"),
    ("corpus-min-chars-negative", [*CORPUS, "--out", "{T}/c", "--min-chars", "-1"],
     "--min-chars"),
    ("corpus-threshold-above-1", [*CORPUS, "--out", "{T}/c", "--near-dedup-threshold", "2"],
     "--near-dedup-threshold"),
    ("report-out-unwritable", [*REPORT, "--out", "/sys/codediff-x.html"], "--out"),
    ("report-out-is-a-folder", [*REPORT, "--out", "{F}"], "--out"),
    ("report-out-exists", [*REPORT, "--out", "{F}/afile"], "--overwrite"),
    ("export-out-unwritable", ["export", "{F}/mdm-run", "/sys/codediff-x"], "out"),
    ("export-out-is-a-file", ["export", "{F}/mdm-run", "{F}/afile"], "out"),
]


@pytest.mark.parametrize("args,names", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refused_in_one_line_before_writing(fixture_dir, tmp_path, args, names):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    before_f, before_t = tree(fixture_dir), tree(out_dir)
    argv = [a.replace("{F}", str(fixture_dir)).replace("{T}", str(out_dir)) for a in args]
    r = cli(argv)
    lines = r.stderr.splitlines()
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert len(lines) == 1 and lines[0].startswith("codediff: error:"), r.stderr
    assert names in lines[0], lines[0]
    assert tree(fixture_dir) == before_f and tree(out_dir) == before_t
    assert not Path("/sys/codediff-x").exists()


def test_kind_refusal_names_the_model_kind(fixture_dir, tmp_path):
    r = cli(["generate", "--model", str(fixture_dir / "ar-run"), "--task", "humaneval",
             "--limit", "1", "--device", "cpu", "--sampler", "threshold", "--tau", "0.5",
             "--cache", "dual", "--out", str(tmp_path / "s.jsonl")])
    assert r.returncode == 2 and "dlm models only" in r.stderr and "ar model" in r.stderr


def test_a_refused_generate_does_not_block_the_corrected_command(fixture_dir, tmp_path):
    out = tmp_path / "s.jsonl"
    base = ["generate", "--model", str(fixture_dir / "mdm-run"), "--task", "humaneval",
            "--limit", "1", "--device", "cpu", "--block-length", "8", "--no-progress",
            "--out", str(out)]
    bad = cli([*base, "--gen-length", str(2 * CONTEXT)])
    assert bad.returncode == 2 and "--gen-length" in bad.stderr
    assert list(tmp_path.iterdir()) == []  # no <out>.partial.meta.json left behind
    good = cli([*base, "--gen-length", "8"])
    assert good.returncode == 0, good.stderr
    assert len(out.read_text().splitlines()) == 1


def test_a_reader_that_leaves_early_gets_no_traceback():
    """`codediff recipes | head -1`: the pipe closes under codediff; it ends without a trace."""
    proc = subprocess.Popen([sys.executable, "-m", "codediff.cli", "recipes"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader leaves before codediff writes, as `head` may
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
