"""Code-choice scoring through the CLI, on tiny checkpoints built in the test."""

from __future__ import annotations

import json

import torch

from codediff.checkpoints import save_checkpoint
from codediff.cli import main
from codediff.model import ModelConfig, Transformer
from tests.conftest_train import make_corpus

ROWS = [
    {"schema": "codediff.codechoice/1", "task": "toy", "task_id": f"T/{i}",
     "context": "def add(a, b):\n    return ",
     "options": ["a + b\n", "a - b\n", "a * b\n", "a + b\n"][: 4], "answer": i % 4}
    for i in range(6)
]


def _checkpoint(tmp_path, objective: str):
    corpus = make_corpus(tmp_path / f"corpus-{objective}", max_bytes=120_000)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=512, n_layer=2, n_head=2, d_model=64, max_seq_len=64,
                      causal=objective == "ar")
    model = Transformer(cfg)
    meta = {"objective": objective, "mask_id": 1, "eot_id": 0, "pad_id": 2, "tokens": 0,
            "epochs": 0.0}
    return save_checkpoint(model, corpus / "tokenizer.json", tmp_path / f"ckpt-{objective}", meta)


def test_score_ar_and_mdm(tmp_path, capsys):
    choices = tmp_path / "choices.jsonl"
    choices.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    for objective, method in (("ar", "exact"), ("mdm", "elbo"), ("mdm", "pll")):
        ckpt = _checkpoint(tmp_path, objective)
        out = tmp_path / f"{objective}-{method}.json"
        args = ["score", "--model", str(ckpt), "--choices", str(choices), "--out", str(out),
                "--method", method, "--mc-samples", "8", "--device", "cpu"]
        assert main(args) == 0
        res = json.loads(out.read_text())
        assert res["n"] == 6 and res["method"] == method and 0 <= res["accuracy"] <= 1
        # options 0 and 3 are the same text: with coupled estimates they score the same, so
        # the ranking never prefers 3 over 0 (ties go to the first), whatever the noise
        again = tmp_path / "again.json"
        # the same file again (rewritten each round): replacing it takes --overwrite
        assert main(args[:6] + [str(again)] + args[7:] + ["--overwrite"]) == 0
        assert json.loads(again.read_text())["accuracy"] == res["accuracy"]  # deterministic
    capsys.readouterr()


def test_score_takes_a_run_dir_and_uses_its_newest_checkpoint(tmp_path, capsys):
    choices = tmp_path / "choices.jsonl"
    choices.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    ckpt = _checkpoint(tmp_path, "ar")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    ckpt.rename(run / "checkpoints" / "tokens-1000")
    out = tmp_path / "run.json"
    assert main(["score", "--model", str(run), "--choices", str(choices), "--out", str(out),
                 "--device", "cpu"]) == 0
    assert json.loads(out.read_text())["n"] == 6
    capsys.readouterr()


def test_coupled_elbo_scores_identical_options_identically(tmp_path):
    from codediff.checkpoints import load_checkpoint
    from codediff.likelihood import score

    model, tok, meta = load_checkpoint(_checkpoint(tmp_path, "mdm"))
    ctx = tok.encode("def add(a, b):\n    return ").ids
    opt = tok.encode("a + b\n").ids
    s = score(model, ctx, [opt, tok.encode("a - b\n").ids, opt], objective="mdm",
              mask_id=1, samples=16, pad_id=2)
    assert abs(s[0].logp - s[2].logp) < 1e-5 * abs(s[0].logp)  # float32 batching noise only
    assert s[0].stderr > 0 and abs(s[0].logp - s[1].logp) > 1e-3


def test_method_mismatch_is_a_user_error(tmp_path, capsys):
    choices = tmp_path / "c.jsonl"
    choices.write_text(json.dumps(ROWS[0]) + "\n")
    ckpt = _checkpoint(tmp_path, "ar")
    code = main(["score", "--model", str(ckpt), "--choices", str(choices), "--out",
                 str(tmp_path / "o.json"), "--method", "elbo", "--device", "cpu"])
    assert code == 2 and "needs an mdm checkpoint" in capsys.readouterr().err


def test_score_batch_size_does_not_change_scores_and_oom_names_it(tmp_path, capsys,
                                                                   monkeypatch):
    from codediff import codechoice_score

    choices = tmp_path / "c.jsonl"
    choices.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    ckpt = _checkpoint(tmp_path, "mdm")
    outs = []
    for bs in ("64", "5"):
        out = tmp_path / f"bs{bs}.json"
        assert main(["score", "--model", str(ckpt), "--choices", str(choices), "--out",
                     str(out), "--method", "elbo", "--mc-samples", "8", "--device", "cpu",
                     "--batch-size", bs]) == 0
        outs.append(json.loads(out.read_text()))
    assert outs[0]["accuracy"] == outs[1]["accuracy"]

    def oom(*a, **k):  # a CPU cannot run out of GPU memory: raise what CUDA would
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 GiB")

    monkeypatch.setattr(codechoice_score, "score_choices", oom)
    capsys.readouterr()
    code = main(["score", "--model", str(ckpt), "--choices", str(choices), "--out",
                 str(tmp_path / "o.json"), "--device", "cpu", "--batch-size", "64"])
    err = capsys.readouterr().err
    assert code == 2 and "pass a smaller --batch-size (e.g. 32)" in err and err.count("\n") == 1
    assert not (tmp_path / "o.json").exists()
