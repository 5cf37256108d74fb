"""`codediff sweep`: a toy sweep end to end (killed and resumed), nested corpora, refusals,
dry-run and emitted commands, crossover detection on curves with a known answer, the report."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from codediff.cli import main
from codediff.crossover import Point, best, detect, load_sweep, summarize, trend
from tests.conftest_train import make_corpus

REPO = Path(__file__).resolve().parent.parent

TOY = """
name = "toy"
[corpus]
dir = "{corpus}"
[defaults]
total_tokens = "{total}"
seed = 0
[defaults.train]
n_layer = 1
d_model = 32
n_head = 2
max_seq_len = 64
seq_len = 32
batch_size = 8
val_tokens = "2k"
eval_points = 5
checkpoint_points = 3
[[grid]]
unique_tokens = ["20k", "40k"]
preset = "tiny"
objective = ["ar", "mdm"]
[eval]
[eval.codechoice]
file = "{choices}"
mc_samples = {mc}
"""

CHOICES = [{"schema": "codediff.codechoice/1", "task": "toy", "task_id": f"T/{i}",
            "context": "def add(a, b):\n    return ",
            "options": ["a + b\n", "a - b\n", "a * b\n", "b - a\n"], "answer": i % 4}
           for i in range(6)]


def _spec(tmp: Path, name: str = "toy.toml", total: str = "16k", mc: int = 4) -> Path:
    corpus = tmp / "corpus"
    if not corpus.exists():
        make_corpus(corpus)
    choices = tmp / "choices.jsonl"
    choices.write_text("".join(json.dumps(r) + "\n" for r in CHOICES))
    p = tmp / name
    p.write_text(TOY.format(corpus=corpus, choices=choices, total=total, mc=mc))
    return p


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "codediff.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600, **kw)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The toy sweep (2 U x 2 objectives), killed while training and resumed to the end."""
    tmp = tmp_path_factory.mktemp("sweep")
    spec = _spec(tmp)
    out = tmp / "out"
    cmd = [sys.executable, "-m", "codediff.cli", "sweep", str(spec), "--out", str(out),
           "--parallel", "2", "--gpus", "none"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    first = out / "cells" / "tiny-U20k-ar-s0" / "run" / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (
            first.is_dir() and any(first.iterdir())):
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and every train / eval process under it
    proc.wait()
    proc.stderr.close()
    killed = {c: (out / "cells" / c / "run" / "run.json").exists() for c in
              ("tiny-U20k-ar-s0", "tiny-U40k-mdm-s0")}
    r = _cli(*cmd[3:])
    assert r.returncode == 0, r.stderr[-3000:]
    return {"tmp": tmp, "spec": spec, "out": out, "killed": killed, "log": r.stderr}


def test_toy_sweep_resumes_after_a_kill_and_scores_every_checkpoint(toy):
    out = toy["out"]
    assert not toy["killed"]["tiny-U40k-mdm-s0"]  # the kill came before the last cell began
    man = json.loads((out / "sweep.json").read_text())
    assert man["schema"] == "codediff.sweep/1"
    assert len(man["cells"]) == 4
    for cid in man["cells"]:
        run = out / "cells" / cid / "run"
        meta = json.loads((run / "run.json").read_text())
        steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert steps == sorted(set(steps)) and steps[-1] == meta["steps"]  # no row twice
        ckpts = sorted(p.name for p in (run / "checkpoints").glob("tokens-*"))
        assert not list((run / "checkpoints").glob(".tokens-*.tmp"))  # cleaned on resume
        assert len(ckpts) == 3
        for name in ckpts:
            e = json.loads((out / "cells" / cid / "eval" / f"{name}.json").read_text())
            assert e["schema"] == "codediff.sweep-eval/1"
            assert e["tokens"] == int(name.split("-")[1])
            assert math.isfinite(e["metrics"]["val_loss"]["value"])
            cc = e["metrics"]["codechoice"]
            assert cc["n"] == 6 and 0 <= cc["value"] <= 1 and cc["stderr"] is not None
            assert cc["method"] == ("exact" if "-ar-" in cid else "elbo")
    x = json.loads((out / "crossover.json").read_text())
    assert x["schema"] == "codediff.crossover/1"
    got = {(c["unique_tokens"], c["metric"]) for c in x["comparisons"]}
    assert got == {(u, m) for u in (20_000, 40_000) for m in ("val_loss", "codechoice")}
    # a third run finds everything done and starts nothing
    r = _cli("sweep", "--out", str(out), "--gpus", "none")
    assert r.returncode == 0 and "nothing to do" in r.stderr


def test_nested_corpora_are_prefixes_sharing_tokenizer_and_validation(toy):
    out, full = toy["out"], toy["tmp"] / "corpus"
    fm = json.loads((full / "manifest.json").read_text())
    big = np.fromfile(full / "train.bin", dtype="<u2")
    eot = fm["tokenizer"]["eot_id"]
    man = json.loads((out / "sweep.json").read_text())["corpus"]
    assert [lv["unique_tokens"] for lv in man["levels"]] == [20_000, 40_000]
    assert man["varies"].startswith("unique_tokens only")
    for lv in man["levels"]:
        d = out / lv["dir"]
        u = lv["unique_tokens"]
        t = np.fromfile(d / "train.bin", dtype="<u2")
        assert len(t) == u and t[-1] == eot and (t[:-1] == big[:u - 1]).all()
        m = json.loads((d / "manifest.json").read_text())
        assert m["unique_tokens"] == u and m["train"]["tokens"] == u
        assert m["nested"]["parent_unique_tokens"] == len(big)
        assert (d / "val.bin").read_bytes() == (full / "val.bin").read_bytes()
        assert (d / "tokenizer.json").read_bytes() == (full / "tokenizer.json").read_bytes()
        # the cells trained on exactly this corpus
        for cid in man_cells(out, u):
            run = json.loads((out / "cells" / cid / "run" / "run.json").read_text())
            assert run["corpus"]["manifest_sha256"] == lv["manifest_sha256"]
            assert run["corpus"]["unique_tokens"] == u


def man_cells(out: Path, u: int) -> list[str]:
    return [c for c in json.loads((out / "sweep.json").read_text())["cells"]
            if f"-U{u // 1000}k-" in c]


def test_changed_spec_is_refused_naming_the_fields(toy, capsys):
    tmp, out = toy["tmp"], toy["out"]
    changed = _spec(tmp, "longer.toml", total="24k")
    assert main(["sweep", str(changed), "--out", str(out), "--gpus", "none"]) == 2
    err = capsys.readouterr().err
    assert "was made with other settings" in err and "total_tokens (16000 -> 24000)" in err
    other_eval = _spec(tmp, "mc.toml", mc=8)
    assert main(["sweep", str(other_eval), "--out", str(out), "--gpus", "none"]) == 2
    err = capsys.readouterr().err
    assert "other settings than the checkpoints already scored" in err
    assert "codechoice.mc_samples (4 -> 8)" in err
    # nothing was rewritten by the refused runs
    cell = json.loads((out / "cells" / "tiny-U20k-ar-s0" / "cell.json").read_text())
    assert cell["total_tokens"] == 16_000


def test_dry_run_prints_cells_flops_and_time_and_writes_nothing(tmp_path, toy):
    out = tmp_path / "never"
    r = _cli("sweep", str(REPO / "sweeps" / "reference.toml"), "--out", str(out), "--dry-run",
             "--throughput", "tiny:ar=2M")
    assert r.returncode == 0, r.stderr
    assert not out.exists()
    lines = r.stdout.splitlines()
    cells = [ln for ln in lines if ln.startswith(("tiny-", "mid-", "small-"))]
    assert len(cells) == 16  # 10 on the U axis, 4 on the size axis, 2 AR ablations
    row = next(ln for ln in cells if ln.startswith("tiny-U1M-ar-s0"))
    assert " 200 " in row and "16.9M" in row and "e+16" in row  # epochs, params, FLOPs
    assert any(ln.startswith("total:") for ln in lines)
    assert "tiny:ar: 2M (--throughput)" in r.stdout
    # on the finished toy sweep every cell reads done
    r = _cli("sweep", "--out", str(toy["out"]), "--dry-run")
    assert r.returncode == 0 and r.stdout.count("  done") == 4, r.stdout


def test_emit_commands_and_slurm(toy):
    r = _cli("sweep", "--out", str(toy["out"]), "--emit", "commands", "--cells", "*-mdm-*")
    assert r.returncode == 0, r.stderr
    cmds = [ln for ln in r.stdout.splitlines() if not ln.startswith("#")]
    assert len(cmds) == 2
    assert all(c.startswith("codediff train --corpus ") and "--objective mdm" in c
               and "--config" in c and "--stage eval --cells tiny-U" in c for c in cmds)
    r = _cli("sweep", "--out", str(toy["out"]), "--emit", "slurm")
    assert r.returncode == 0 and "#SBATCH --array=0-3" in r.stdout and "esac" in r.stdout


def test_spec_refusals(tmp_path, capsys):
    base = _spec(tmp_path).read_text()
    cases = {
        "preset = \"tiny\"": ("preset = \"huge\"", "preset 'huge' is not one of"),
        "[defaults.train]": ("[defaults.train]\nbeam_width = 2", "train.beam_width is not a "
                             "`codediff train` option of this codediff"),
        "seed = 0\n[defaults.train]": ("seed = 0\nepochs = 4\n[defaults.train]",
                                       "give exactly one of total_tokens"),
        "n_head = 2": ("n_head = 3", "cell tiny-U20k-ar-s0: model shape"),
        "[eval]": ("[eval]\nmetrics = 1", "unknown key 'metrics'"),
    }
    for old, (new, msg) in cases.items():
        p = tmp_path / "bad.toml"
        p.write_text(base.replace(old, new, 1))
        assert main(["sweep", str(p), "--out", str(tmp_path / "o"), "--dry-run"]) == 2
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- crossover

def _lin(xs, a, b, se=None):
    """a + b ln(x / 1e6): straight lines in log tokens, so interpolation is exact."""
    return [Point(x, a + b * math.log(x / 1e6), se) for x in xs]


GRID = [1e6 * 2 ** k for k in range(11)]


def test_crossover_on_lines_with_a_known_answer():
    ar, mdm = _lin(GRID, 5.0, -0.2), _lin(GRID, 6.0, -0.5)  # equal at ln(x/1e6) = 10/3
    r = detect(ar, mdm, higher_is_better=False, epoch_tokens=4e6)
    x = 1e6 * math.exp(10 / 3)
    assert r["status"] == "crossed" and r["tokens"] == pytest.approx(x)
    assert r["epochs"] == pytest.approx(x / 4e6)
    assert r["between"] == [16e6, 32e6] and r["interval"] == [16e6, 32e6]
    assert r["significant"] and r["stays_ahead_from"] == pytest.approx(x)
    # with standard errors the interval widens to where the lead +- 1.96 s.e. crosses zero
    se = 0.05
    r = detect(_lin(GRID, 5.0, -0.2, se), _lin(GRID, 6.0, -0.5, se), higher_is_better=False)
    band = 1.959964 * math.hypot(se, se)
    assert r["tokens"] == pytest.approx(x)
    assert r["interval"][0] == 16e6  # the early band crossing (17.7M) is inside the spacing
    assert r["interval"][1] == pytest.approx(1e6 * math.exp((1 + band) / 0.3))
    # an accuracy (higher is better), measured on different grids
    acc_ar = _lin(GRID[::2], 0.30, 0.01)
    acc_mdm = _lin(GRID[1::2], 0.20, 0.04)  # equal at ln(x/1e6) = 10/3 again
    r = detect(acc_ar, acc_mdm, higher_is_better=True)
    assert r["status"] == "crossed" and r["tokens"] == pytest.approx(x)
    assert r["budget"] == GRID[9]  # the shared range ends at mdm's last point


def test_crossover_none_from_start_noise_and_best():
    ar, mdm = _lin(GRID, 3.0, -0.1), _lin(GRID, 4.0, -0.1)
    r = detect(ar, mdm, higher_is_better=False)
    assert r["status"] == "none" and r["tokens"] is None and r["budget"] == GRID[-1]
    r = detect(mdm, ar, higher_is_better=False)
    assert r["status"] == "from_start" and r["tokens"] == GRID[0] and r["interval"][0] is None
    # mdm ahead only at one point in the middle: first crossing there, final lead never
    vals = [0.5, 0.5, 0.6, 0.5, 0.5]
    r = detect([Point(x, 0.55, 0.001) for x in GRID[:5]],
               [Point(x, v, 0.001) for x, v in zip(GRID, vals, strict=False)],
               higher_is_better=True)
    assert r["status"] == "crossed" and GRID[1] < r["tokens"] < GRID[2]
    assert r["stays_ahead_from"] is None
    # a lead inside the noise is not significant: the interval stays open at the top
    r = detect([Point(x, 0.50, 0.05) for x in GRID[:4]],
               [Point(x, 0.52, 0.05) for x in GRID[:4]], higher_is_better=True)
    assert r["status"] == "from_start" and not r["significant"] and r["interval"][1] is None
    b = best(_lin(GRID, 1.0, 0.1) + [Point(5e8, 0.2)], higher_is_better=False, epoch_tokens=1e8)
    assert b == {"value": 0.2, "stderr": None, "tokens": 5e8, "epochs": 5.0, "last": False,
                 "flat": False}
    assert detect([], mdm, higher_is_better=False)["status"] == "no_data"


def _level(u: float, epochs: float | None, *, budget_epochs: float = 40.0,
           first_lead: bool = False) -> dict:
    """A detect() result at unique tokens `u` whose lasting crossover is at `epochs` (None: mdm
    behind at the end); first_lead: mdm also led at the first point (near the random start)."""
    first = 0.05 * u
    r = {"status": "from_start" if first_lead else ("crossed" if epochs else "none"),
         "tokens": first if first_lead else (epochs * u if epochs else None),
         "stays_ahead_from": epochs * u if epochs else None,
         "stays_ahead_from_epochs": epochs, "budget": budget_epochs * u,
         "budget_epochs": budget_epochs, "signal": True}
    r["epochs"] = r["tokens"] / u if r["tokens"] else None
    return r


def test_trend_verdicts():
    c = _level
    assert trend([(1e6, c(1e6, 3)), (5e6, c(5e6, 6)), (25e6, c(25e6, 9))],
                 "increasing")["verdict"] == "consistent"
    assert trend([(1e6, c(1e6, 9)), (5e6, c(5e6, 1))], "increasing")["verdict"] == "opposite"
    assert trend([(1, c(1, 3)), (2, c(2, 6)), (3, c(3, 1))], "increasing")["verdict"] == "mixed"
    # mdm behind at the end of 8 epochs at the largest U, after a crossover at 6: later
    assert trend([(1e6, c(1e6, 6)), (25e6, c(25e6, None, budget_epochs=8))],
                 "increasing")["verdict"] == "consistent"
    assert trend([(1e6, c(1e6, 6))], "increasing")["verdict"] == "too few"


def test_trend_reads_the_lasting_crossover_in_tokens_and_in_epochs():
    """The reference sweep's shape: mdm leads at the near-random first point at every U, then
    falls behind, and its lasting lead begins at ~13 epochs whatever U is. The trend reads the
    lasting crossover (not the first lead, which would say "by the first point" everywhere):
    later with more U in tokens (13 epochs of a larger U), level in epochs."""
    levels = [(1e6, _level(1e6, 12.6, budget_epochs=200, first_lead=True)),
              (5e6, _level(5e6, 13.0, first_lead=True)),
              (10e6, _level(10e6, 12.8, budget_epochs=20, first_lead=True)),
              (25e6, _level(25e6, None, budget_epochs=8, first_lead=True))]
    t = trend(levels, "increasing")
    assert t["basis"] == "lasting"
    assert [e["kind"] for e in t["epochs"]] == ["=", "=", "=", ">"]
    assert [e["tokens"] for e in t["epochs"]][:3] == pytest.approx([12.6e6, 65e6, 128e6])
    assert t["moves"] == ["up", "up", "up"] and t["verdict"] == "consistent"
    assert t["moves_epochs"] == ["up", "down", "unknown"] and t["verdict_epochs"] == "mixed"
    # a level led from the first point to the end is an upper bound ("<") on its crossover
    always = _level(4e6, 0.05, first_lead=True)
    assert trend([(4e6, always), (8e6, _level(8e6, 3.0))], "increasing")["epochs"][0]["kind"] \
        == "<"


# ----------------------------------------------------------------------------- summary, report

INFILL = "humaneval-infill-single:infill"
NO_FIM = "ar model trained without fill-in-the-middle (fim_rate 0): no infill prompt"


def _fake_sweep(root: Path, *, variant: bool = False, infill: bool = False,
                never: bool = False) -> Path:
    """A sweep dir written by hand: U 1M and 4M (tiny) with val-loss crossovers at 4 and 8
    epochs, and `mid` at 1M crossing at 2 epochs: the paper's two trends, by construction.
    variant: an `ar+fim` arm beside plain `ar` for tiny at both U; infill: an infill pass@1
    that stays at 0 for every arm that has it and is skipped for plain ar; never: mdm stays
    behind ar on both metrics (no crossover anywhere)."""
    cells, plans = [], [("tiny", 1_000_000, 4.0, 16e6), ("tiny", 4_000_000, 8.0, 16e6),
                        ("mid", 1_000_000, 2.0, 50e6)]
    for preset, u, cross_epochs, params in plans:
        x0 = cross_epochs * u  # tokens where the lines meet
        arms = [("ar", "", (3.0, -0.1)), ("mdm", "", (3.5, -0.1) if never else (3.0, -0.4))]
        if variant and preset == "tiny":
            arms.append(("ar", "fim", (3.0, -0.15)))
        for obj, var, (a, b) in arms:
            cid = f"{preset}-U{u // 10**6}M-{obj}{'-' + var if var else ''}-s0"
            cells.append(cid)
            d = root / "cells" / cid
            (d / "run").mkdir(parents=True)
            (d / "eval").mkdir()
            (d / "cell.json").write_text(json.dumps({
                "schema": "codediff.sweep-cell/1", "id": cid, "unique_tokens": u,
                "preset": preset, "objective": obj, "variant": var, "seed": 0,
                "total_tokens": 64 * u}))
            (d / "run" / "run.json").write_text(json.dumps({
                "epoch_tokens": u, "params": params, "total_tokens": 64 * u}))
            xs = [int(u * 2 ** k) for k in range(-2, 7)]
            rows = [{"step": i + 1, "tokens": x, "val_loss": a + b * math.log(x / x0)}
                    for i, x in enumerate(xs)]
            (d / "run" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n"
                                                             for r in rows))
            for x in xs[::2]:
                acc = 0.4 + (0.02 if obj == "mdm" else -0.01) * math.log(x / u)
                if never and obj == "mdm":
                    acc = 0.3 - 0.01 * math.log(x / u)  # below ar at every point
                metrics = {"val_loss": {"value": a + b * math.log(x / x0)},
                           "codechoice": {"value": acc, "stderr": 0.001}}
                if infill:
                    metrics[INFILL] = ({"value": None, "stderr": None, "skipped": NO_FIM}
                                       if obj == "ar" and not var
                                       else {"value": 0.0, "stderr": 0.0})
                (d / "eval" / f"tokens-{x}.json").write_text(json.dumps({
                    "schema": "codediff.sweep-eval/1", "cell": cid, "tokens": x,
                    "metrics": metrics}))
    (root / "sweep.json").write_text(json.dumps({
        "schema": "codediff.sweep/1", "name": "fake", "cells": cells,
        "corpus": {"varies": "unique_tokens only", "levels": [], "full": {}}}))
    return root


def test_summary_of_a_sweep_dir_finds_the_constructed_crossovers_and_trends(tmp_path):
    res = summarize(load_sweep(_fake_sweep(tmp_path)))
    val = {(c["preset"], c["unique_tokens"]): c for c in res["comparisons"]
           if c["metric"] == "val_loss"}
    assert val[("tiny", 1_000_000)]["epochs"] == pytest.approx(4.0)
    assert val[("tiny", 4_000_000)]["epochs"] == pytest.approx(8.0)
    assert val[("mid", 1_000_000)]["epochs"] == pytest.approx(2.0)
    trends = {(t["axis"], t["metric"]): t for t in res["trends"]}
    assert trends[("unique_tokens", "val_loss")]["verdict"] == "consistent"
    assert trends[("params", "val_loss")]["verdict"] == "consistent"
    # code choice: mdm rises, ar falls; they meet where 0.03 ln(x/U) = 0, i.e. at 1 epoch
    cc = next(c for c in res["comparisons"] if c["metric"] == "codechoice"
              and c["preset"] == "tiny" and c["unique_tokens"] == 1_000_000)
    assert cc["status"] == "crossed" and cc["epochs"] == pytest.approx(1.0, rel=0.35)


def test_report_renders_from_the_sweep_json_alone(tmp_path, toy):
    fake = _fake_sweep(tmp_path / "fake")
    out = tmp_path / "r.html"
    assert main(["report", "--sweep", str(fake), "--out", str(out)]) == 0
    html = out.read_text()
    assert "codediff sweep: fake" in html and "<svg" in html
    assert "consistent with the claim" in html
    assert "comes later in training with more unique data" in html
    assert "comes earlier in training with larger models" in html
    assert "4 epochs (4M tokens)" in html and "8 epochs (32M tokens)" in html
    assert "in tokens: consistent with the claim; in epochs: consistent with the claim" in html
    assert "past its best epoch" in html
    out2 = tmp_path / "toy.html"
    assert main(["report", "--sweep", str(toy["out"]), "--out", str(out2)]) == 0
    html = out2.read_text()
    for cid in json.loads((toy["out"] / "sweep.json").read_text())["cells"]:
        assert cid in html
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")  # self-contained


def test_flat_curves_are_no_signal_not_a_trend():
    """Curves that never move (a pass@1 stuck at 0) are said to be flat, in crossover.json's
    new fields and in words, and a level without signal does not count toward a trend."""
    from codediff.crossover import flat_note
    from codediff.sweep import crossover_text

    zeros = [Point(x, 0.0, 0.0) for x in GRID[:5]]
    r = detect(zeros, zeros, higher_is_better=True, epoch_tokens=1e6)
    assert r["status"] == "none" and r["signal"] is False
    assert r["flat"] == {"ar": 0.0, "mdm": 0.0}
    assert flat_note(r) == "flat at 0 for both: no signal"
    # equal everywhere although moving: also nothing to detect
    same = _lin(GRID[:5], 0.1, 0.01)
    r2 = detect(same, same, higher_is_better=True)
    assert r2["signal"] is False and r2["flat"] == {}
    assert flat_note(r2) == "equal at every point: no signal"
    # one flat curve: the comparison stands, the flat side is named
    rising = [Point(x, 0.01 * i, 0.0) for i, x in enumerate(GRID[:5])]
    r3 = detect(zeros, rising, higher_is_better=True)
    assert r3["status"] == "crossed" and r3["signal"] is True and r3["flat"] == {"ar": 0.0}
    assert flat_note(r3, "ar+fim") == "ar+fim flat at 0 throughout"
    # both flat, apart: a constant gap (status as before), no trend
    r4 = detect([Point(x, 0.1) for x in GRID[:5]], zeros, higher_is_better=True)
    assert r4["status"] == "none" and r4["signal"] is True
    assert flat_note(r4).startswith("both flat (ar at 0.1, mdm at 0)")
    # moving curves carry the new fields empty
    r5 = detect(_lin(GRID, 5.0, -0.2), _lin(GRID, 6.0, -0.5), higher_is_better=False)
    assert r5["flat"] == {} and r5["signal"] is True and flat_note(r5) == ""
    assert best(zeros, higher_is_better=True)["flat"] is True
    assert best(rising, higher_is_better=True)["flat"] is False
    # a no-signal level is left out of the trend (not "after its budget")
    t = trend([(1e6, _level(1e6, 3.0)), (5e6, r)], "increasing")
    assert t["verdict"] == "too few" and t["no_signal"] == [5e6] and len(t["epochs"]) == 1
    line = crossover_text({"comparisons": [{**r, "preset": "tiny", "unique_tokens": 5_000_000,
                                            "seed": 0, "ar_arm": "ar", "metric": "mbpp"}]})
    assert "mbpp: flat at 0 for both: no signal" in line and "none within" not in line


def test_report_shows_skipped_flat_variants_and_a_true_footer(tmp_path):
    """Skipped metrics read "skipped (reason)" where one looks for them, the trend table has the
    ar+fim arm, a no-signal metric says so, an empty chart is a caption, and the footer is the
    sweep's own (no EvalPlus or Wilson interval text)."""
    from codediff.reports.sweep import sweep_context

    fake = _fake_sweep(tmp_path / "fake", variant=True, infill=True)
    res = summarize(load_sweep(fake))
    arms = {(t["axis"], t["ar_arm"]) for t in res["trends"] if t["metric"] == "val_loss"}
    assert ("unique_tokens", "ar") in arms and ("unique_tokens", "ar+fim") in arms
    flat = [c for c in res["comparisons"] if c["metric"] == INFILL]
    assert flat and all(c["signal"] is False for c in flat)  # only ar+fim has it, at 0
    out = tmp_path / "r.html"
    assert main(["report", "--sweep", str(fake), "--out", str(out)]) == 0
    html = out.read_text()
    trend_u = html[html.index('id="trend-unique_tokens"'):]
    trend_u = trend_u[:trend_u.index("</table>")]
    assert "ar+fim" in trend_u
    assert "No trend for ar+fim (measured at tiny only)" in html  # the size axis
    assert f"skipped (ar: {NO_FIM})" in html  # the crossover table row
    assert f"Not drawn: ar: skipped ({NO_FIM})" in html  # under the chart
    assert f"{INFILL}: skipped ({NO_FIM})" in html  # the cells table, ar past its best
    assert "flat at 0.0% for both: no signal" in html
    assert "flat at 0.0%" in html.split('id="best"')[1]
    assert "no data points" not in html and "None" not in html
    footer = html[html.index("<footer>"):html.index("</footer>")]
    assert html.count("<footer>") == 1 and "± one standard error" in footer
    assert "EvalPlus" not in html and "Wilson" not in html and "pass@k" not in footer
    # no level crosses: the trend chart is a caption, not a stray "no data points"
    ctx = sweep_context(_fake_sweep(tmp_path / "never", never=True))
    assert ctx["trends"] and all(t["svg"] is None for t in ctx["trends"])
    out = tmp_path / "never.html"
    assert main(["report", "--sweep", str(tmp_path / "never"), "--out", str(out)]) == 0
    html = out.read_text()
    assert "No level crossed within its budget" in html and "no data points" not in html


def test_task_pass_at_1_through_generate_and_evaluate(toy, tmp_path):
    """The execution-judged metric path, generic over the task name, on `humaneval` (the
    infilling tasks take the same path once they exist)."""
    from codediff.sweep_eval import pass_at_1

    for obj in ("ar", "mdm"):
        ck = sorted((toy["out"] / "cells" / f"tiny-U20k-{obj}-s0" / "run" / "checkpoints")
                    .iterdir())[-1]
        gen = {"gen_length": 8, "block_length": 8, "max_new_tokens": 8, "temperature": 0.0}
        r = pass_at_1(ck, "humaneval", tmp_path / obj, 2, gen, "cpu", False)
        assert r["n"] == 2 and r["value"] in (0.0, 0.5, 1.0) and r["phase"] == "base"
        samples = (tmp_path / obj / "samples.jsonl").read_text().splitlines()
        assert len(samples) == 2
        meta = json.loads((tmp_path / obj / "samples.meta.json").read_text())
        assert meta["settings"]["temperature"] == 0.0
        assert (tmp_path / obj / "results" / "results.json").is_file()


def test_infilling_metrics_in_both_prompt_modes(toy, tmp_path):
    """`task:format` entries: an infilling task scored with its `prefix` or `infill` prompts on
    holes spread over the whole set; an `infill` prompt for an ar model without FIM is a skip
    (with its reason), never a failed cell."""
    from codediff.harness.tasks import load_task

    from codediff.sweep_eval import _cannot_infill, pass_at_1, split_task, spread

    assert split_task("humaneval-infill-single:infill") == ("humaneval-infill-single", "infill")
    assert split_task("humaneval") == ("humaneval", None)
    ids = [p.task_id for p in load_task("humaneval-infill-single").problems]
    picked = spread(ids, 4)
    assert len(picked) == 4 and picked[0] == ids[0] and picked[-1] == ids[(3 * len(ids)) // 4]
    assert len({i.split("/")[2] for i in picked}) == 4  # four different HumanEval problems
    assert spread(ids, None) is None and spread(ids, len(ids) + 1) is None
    assert "fill-in-the-middle" in _cannot_infill("mbpp-infill-single:infill",
                                                  {"objective": "ar", "fim_rate": 0.0})
    assert _cannot_infill("mbpp-infill-single:infill", {"objective": "ar", "fim_rate": 0.5}) == ""
    assert _cannot_infill("mbpp-infill-single:prefix", {"objective": "ar"}) == ""
    assert _cannot_infill("mbpp-infill-single:infill", {"objective": "mdm"}) == ""
    gen = {"gen_length": 8, "block_length": 8, "max_new_tokens": 8, "temperature": 0.0}
    for obj, fmt in (("ar", "prefix"), ("mdm", "infill")):
        ck = sorted((toy["out"] / "cells" / f"tiny-U20k-{obj}-s0" / "run" / "checkpoints")
                    .iterdir())[-1]
        r = pass_at_1(ck, f"humaneval-infill-single:{fmt}", tmp_path / obj, 3, gen, "cpu",
                      False)
        assert r["n"] == 3 and r["phase"] == "base"
        rows = [json.loads(x) for x in (tmp_path / obj / "samples.jsonl").read_text()
                .splitlines()]
        assert sorted(x["task_id"] for x in rows) == sorted(spread(ids, 3))
        meta = json.loads((tmp_path / obj / "samples.meta.json").read_text())
        assert meta["prompt_format"] == fmt


BUILT = """
name = "built"
[corpus]
sources = ["stdlib"]
val_tokens = "5k"
seed = {seed}
vocab_size = 512
options = ["--max-docs", "80", "--workers", "1"]
[defaults]
epochs = 2
[defaults.train]
n_layer = 1
d_model = 32
n_head = 2
max_seq_len = 32
[[grid]]
unique_tokens = ["10k", "30k"]
preset = "tiny"
objective = ["ar", "mdm"]
"""


def test_sweep_restarts_from_its_committed_data_and_a_rebuilt_corpus(tmp_path, capsys):
    """The corpus is built at the largest U inside the sweep dir; a copy of the sweep dir
    without what its .gitignore leaves out (as git would hold it) rebuilds the same corpus and
    carries on; a different corpus is refused."""
    import shutil

    spec = tmp_path / "built.toml"
    spec.write_text(BUILT.format(seed=0))
    a = tmp_path / "a"
    assert main(["sweep", str(spec), "--out", str(a), "--emit", "commands", "--no-progress"]) \
        == 0
    cmds = capsys.readouterr().out
    assert cmds.count("codediff train") == 4 and "--total-tokens 20000 " in cmds
    full = json.loads((a / "sweep.json").read_text())["corpus"]["full"]
    assert full["unique_tokens"] == 30_000 and full["dir"] == "corpora/full"
    ignored = (a / ".gitignore").read_text()
    assert "corpora/*/*.bin" in ignored and "cells/*/run/checkpoints/" in ignored
    b = tmp_path / "b"
    shutil.copytree(a, b, ignore=shutil.ignore_patterns("*.bin", "tokenizer.json"))
    assert main(["sweep", "--out", str(b), "--emit", "commands", "--no-progress"]) == 0
    capsys.readouterr()
    assert json.loads((b / "sweep.json").read_text())["corpus"] == \
        json.loads((a / "sweep.json").read_text())["corpus"]
    assert (b / "corpora" / "U-10k" / "train.bin").read_bytes() == \
        (a / "corpora" / "U-10k" / "train.bin").read_bytes()
    spec.write_text(BUILT.format(seed=1))
    assert main(["sweep", str(spec), "--out", str(b), "--dry-run"]) == 0  # writes nothing
    capsys.readouterr()
    assert main(["sweep", str(spec), "--out", str(b), "--emit", "commands"]) == 2
    assert "is a sweep with another corpus (corpus.seed (0 -> 1))" in capsys.readouterr().err
    # a rebuilt corpus that does not hash as recorded is refused before any cell runs
    man = json.loads((b / "sweep.json").read_text())
    man["corpus"]["full"]["train_sha256"] = "0" * 64
    (b / "sweep.json").write_text(json.dumps(man))
    shutil.rmtree(b / "corpora" / "full")
    assert main(["sweep", "--out", str(b), "--emit", "commands", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "differs from the one the sweep" in err and "corpus.train_sha256" in err


def test_mid_preset_sits_between_tiny_and_small():
    from codediff.config import PRESETS
    from codediff.train_cli import PRESET_TRAIN_DEFAULTS

    mid = PRESETS["mid"]
    assert 49e6 < mid.num_params() < 51e6
    assert PRESETS["tiny"].num_params() < mid.num_params() < PRESETS["small"].num_params()
    assert mid.head_dim == 64 and PRESET_TRAIN_DEFAULTS["mid"] == {"lr": 8e-4, "batch_size": 128}


def test_published_infill_sweep_summary_and_report(tmp_path):
    """The committed infill-u5m sweep (issue 15's GPU run) summarizes and renders from its JSON
    alone: skipped metrics (plain ar has no infill prompt) stay out of the charts, and a first
    lead that mdm loses again is reported as such, not as a crossover."""
    src = REPO / "reports" / "reference" / "infill-u5m"
    shutil.copytree(src, tmp_path / "s")
    r = _cli("sweep", "--out", str(tmp_path / "s"), "--stage", "summarize")
    assert r.returncode == 0, r.stderr
    he = next(ln for ln in r.stdout.splitlines()
              if ln.startswith("tiny U=5M s0 ar vs mdm, humaneval-infill-single:prefix"))
    assert "behind or level at the end" in he and "never ahead by more than 1.96 s.e." in he
    assert "ar vs mdm, val_loss: mdm ahead" in r.stdout and "stays ahead from" in r.stdout
    r = _cli("report", "--sweep", str(tmp_path / "s"), "--out", str(tmp_path / "r.html"))
    assert r.returncode == 0, r.stderr
    html = (tmp_path / "r.html").read_text()
    assert "humaneval-infill-single:infill" in html and "None" not in html


def test_missing_task_data_refused_before_training(tmp_path):
    """A task whose data cannot be read stops the sweep (and its dry run) at once, with one
    line, instead of after every cell has trained."""
    spec = tmp_path / "s.toml"
    spec.write_text((REPO / "sweeps" / "infill-u5m.toml").read_text())
    empty = tmp_path / "nodata"
    empty.mkdir()
    for extra in (["--dry-run"], []):
        r = _cli("sweep", str(spec), "--out", str(tmp_path / "o"), *extra,
                 env={**os.environ, "CODEDIFF_DATA": str(empty)})
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert "eval.tasks: humaneval-infill-single: " in r.stderr
        assert not (tmp_path / "o").exists()


def test_u_larger_than_the_corpus_dir_is_refused_before_anything_is_written(tmp_path, capsys):
    """A U the spec's corpus dir cannot hold is refused by --dry-run and by the run, in one line
    naming the corpus, its size and the largest U, before the sweep dir exists."""
    spec = _spec(tmp_path)
    n = json.loads((tmp_path / "corpus" / "manifest.json").read_text())["train"]["tokens"]
    spec.write_text(spec.read_text().replace('["20k", "40k"]', '["20k", "40k", "50M"]'))
    out = tmp_path / "o"
    for extra in (["--dry-run"], ["--gpus", "none"], ["--emit", "commands"]):
        assert main(["sweep", str(spec), "--out", str(out), *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert f"[corpus] dir {tmp_path / 'corpus'} holds {n:,} training tokens" in err
        assert "the largest U asked is 50M (50,000,000" in err and "drop U = 50M" in err
        assert not out.exists()


def test_a_failed_first_preparation_leaves_nothing_that_blocks_the_rerun(tmp_path, capsys):
    """A failure while the sweep dir is being made (here: the code-choice file, checked after
    the nested corpora are cut) puts --out back as it was, so the corrected rerun goes on."""
    spec = _spec(tmp_path)
    good = spec.read_text()
    missing = tmp_path / "missing.jsonl"
    spec.write_text(good.replace(str(tmp_path / "choices.jsonl"), str(missing)))
    new, empty = tmp_path / "new", tmp_path / "empty"
    empty.mkdir()
    for out in (new, empty):
        assert main(["sweep", str(spec), "--out", str(out), "--emit", "commands",
                     "--no-progress"]) == 2
        assert "eval.codechoice.file" in capsys.readouterr().err
    assert not new.exists() and list(empty.iterdir()) == []
    spec.write_text(good)
    for out in (new, empty):
        assert main(["sweep", str(spec), "--out", str(out), "--emit", "commands",
                     "--no-progress"]) == 0
        assert (out / "sweep.json").is_file()
    capsys.readouterr()


FAKE_TRAIN = """
import json, sys, time
from pathlib import Path
run, total = Path(sys.argv[1]), int(sys.argv[2])
run.mkdir(parents=True, exist_ok=True)
(run / "run.json").write_text(json.dumps({"steps": 4, "total_tokens": total}))
for step in range(1, 5):
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": step, "tokens": step * total // 4, "epochs": step / 4,
                            "train_loss": 5.0 - step, "tokens_per_s": 1000.0}) + "\\n")
    time.sleep(0.5)
"""


def test_status_lines_while_cells_run(tmp_path, monkeypatch, capsys):
    """Cells running at once are reported in whole lines, one per cell, every --status-every
    seconds (tokens trained of the budget, rate and time left), by the scheduler alone; the
    scoring progress of a cell is read from its eval files."""
    from codediff import sweep
    from codediff.sweep_spec import load_spec

    spec = load_spec(_spec(tmp_path))
    out = tmp_path / "out"
    cells = [c for c in spec.cells if c.unique_tokens == 20_000]
    for c in cells:
        sweep.cell_dir(out, c.id).mkdir(parents=True)
    p = sweep.Prepared(out, spec, {}, {}, 512, {})
    monkeypatch.setattr(sweep, "train_command", lambda p, c, python=True: [
        sys.executable, "-c", FAKE_TRAIN, str(sweep.cell_dir(p.out, c.id) / "run"),
        str(c.total_tokens)])
    failed = sweep.run_cells(p, cells, gpus=[], parallel=2, stage="train", progress=True,
                             status_every=0.2)
    assert failed == []
    err = capsys.readouterr().err
    assert all(ln.startswith("sweep:") for ln in err.splitlines()), err
    assert "cells finished, 2 running, 0 waiting" in err
    for c in cells:
        lines = [ln for ln in err.splitlines() if ln.startswith(f"sweep:   {c.id} training: ")]
        assert any("k/16k tokens (" in ln and "1k tok/s, ~" in ln and "[train for " in ln
                   for ln in lines), err
    # a cell being scored: checkpoints with every metric, and metrics so far
    d = sweep.cell_dir(out, cells[0].id)
    (d / "eval").mkdir()
    for n, have in ((100, ["val_loss", "codechoice"]), (200, ["val_loss"])):
        (d / "run" / "checkpoints" / f"tokens-{n}").mkdir(parents=True)
        (d / "eval" / f"tokens-{n}.json").write_text(json.dumps(
            {"metrics": {k: {"value": 0.5} for k in have}}))
    assert sweep.cell_progress(out, cells[0], "eval", spec.eval.metrics) == \
        "scoring: 1/2 checkpoints done, 3/4 metrics"


REPLAY_TRAIN = """
import shutil, sys, time
from pathlib import Path
run, staged, full_metrics = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
for ck in sorted(staged.iterdir(), key=lambda q: int(q.name.split("-")[1])):
    time.sleep(1.5)
    ck.rename(run / "checkpoints" / ck.name)  # a kept checkpoint appears whole, as in training
time.sleep(1.5)
shutil.copyfile(full_metrics, run / "metrics.jsonl")  # the last step logged: trained
(run.parent / "train.done").write_text(str(time.time()))
"""


def test_checkpoints_are_scored_while_the_cell_trains(toy, tmp_path, monkeypatch):
    """With scoring during training (the default), each kept checkpoint is scored while the
    trainer runs, by real scoring processes on the toy sweep's real checkpoints (replayed by a
    stand-in trainer that keeps them one by one), so training's end leaves little to score; the
    scores are the ones the after-training path wrote."""
    from codediff import sweep

    out = tmp_path / "out"
    shutil.copytree(toy["out"], out, symlinks=True)
    cid = "tiny-U20k-ar-s0"
    d = out / "cells" / cid
    before = {q.name: json.loads(q.read_text())["metrics"] for q in (d / "eval").iterdir()}
    shutil.rmtree(d / "eval")
    staged = tmp_path / "staged"
    shutil.move(d / "run" / "checkpoints", staged)
    (d / "run" / "checkpoints").mkdir()
    full = tmp_path / "metrics.jsonl"
    shutil.copyfile(d / "run" / "metrics.jsonl", full)
    rows = full.read_text().splitlines()
    (d / "run" / "metrics.jsonl").write_text(rows[0] + "\n")  # not trained yet
    monkeypatch.setattr(sweep, "SCORE_POLL", 0.2)
    monkeypatch.setattr(sweep, "train_command", lambda p, c, python=True: [
        sys.executable, "-c", REPLAY_TRAIN, str(d / "run"), str(staged), str(full)])
    assert main(["sweep", "--out", str(out), "--cells", cid, "--gpus", "none",
                 "--status-every", "0"]) == 0
    log = (d / "eval.log").read_text()
    assert "(while training)" in log
    trained_at = float((d / "train.done").read_text())
    scored = {q.name: q.stat().st_mtime for q in (d / "eval").iterdir()}
    assert sorted(scored) == sorted(before)
    early = [n for n, t in scored.items() if t < trained_at]
    assert len(early) >= 2, (scored, trained_at)  # all but (at most) the last, during training
    for name, metrics in before.items():
        now = json.loads((d / "eval" / name).read_text())["metrics"]
        assert now["val_loss"]["value"] == pytest.approx(metrics["val_loss"]["value"])
        assert now["codechoice"]["value"] == pytest.approx(metrics["codechoice"]["value"])


def test_a_cell_killed_before_its_last_checkpoint_is_not_trained(toy, tmp_path):
    """The trainer logs the last step, then keeps the last checkpoint, then saves its state: a
    cell killed in between has all its metrics rows but must train again (it resumes from its
    state); committed data (no state) and a finished run count as trained."""
    from codediff import sweep

    out = tmp_path / "out"
    shutil.copytree(toy["out"], out, symlinks=True)
    cid = "tiny-U20k-ar-s0"
    d = out / "cells" / cid / "run"
    steps = json.loads((d / "run.json").read_text())["steps"]
    metrics = ["val_loss", "codechoice"]
    assert sweep.cell_state(out, cid, metrics)["trained"]
    last = max((q for q in (d / "checkpoints").glob("tokens-*")),
               key=lambda q: int(q.name.split("-")[1]))
    shutil.rmtree(last)
    (out / "cells" / cid / "eval" / f"{last.name}.json").unlink()
    state = d / "state"
    state.mkdir(exist_ok=True)
    (state / "trainer.json").write_text(json.dumps({"step": steps - 1}))
    assert not sweep.cell_state(out, cid, metrics)["trained"]
    shutil.rmtree(state)  # as committed: the rows decide
    assert sweep.cell_state(out, cid, metrics)["trained"]
