"""`codediff evaluate` end to end: bad input, resume after a kill, nothing left running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from codediff.harness.tasks import load_task

from codediff.cli import main

REPO = Path(__file__).resolve().parent.parent


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture()
def he_samples(tmp_path) -> Path:
    task = load_task("humaneval")
    rows = []
    for p in task.problems[:20]:
        rows.append({"task_id": p.task_id, "completion": p.reference[len(p.prompt):]})
        rows.append({"task_id": p.task_id, "completion": "    return None\n"})
    f = tmp_path / "samples.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f


BAD_INPUTS = {
    "malformed": ('{"task_id": "HumanEval/0", "completion": "x"}\n{not json}\n', ":2: malformed JSON"),
    "missing": ('{"task_id": "HumanEval/0"}\n', "missing field completion"),
    "no_task_id": ('{"completion": "x"}\n', "missing field task_id"),
    "unknown": ('{"task_id": "HumanEval/999", "completion": "x"}\n', "is not a task of humaneval"),
    "foreign": ('{"task_id": "Mbpp/11", "completion": "x"}\n', "is not a task of humaneval"),
    "empty": ("", "no samples"),
    "not_str": ('{"task_id": "HumanEval/0", "completion": 5}\n', "must be a string"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_one_line_exit_2_nothing_written(case, tmp_path, capsys):
    text, expected = BAD_INPUTS[case]
    f = tmp_path / "s.jsonl"
    f.write_text(text)
    out = tmp_path / "out"
    code, _, err = run_cli(["evaluate", "--task", "humaneval", "--samples", str(f), "--out",
                            str(out)], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("codediff: error: ") and expected in err
    assert not out.exists()


def test_non_utf8_and_missing_file(tmp_path, capsys):
    f = tmp_path / "s.jsonl"
    f.write_bytes(b'{"task_id": "HumanEval/0", "completion": "\xff\xfe"}\n')
    code, _, err = run_cli(["evaluate", "--task", "humaneval", "--samples", str(f), "--out",
                            str(tmp_path / "o")], capsys)
    assert code == 2 and "not UTF-8" in err and not (tmp_path / "o").exists()
    code, _, err = run_cli(["evaluate", "--task", "humaneval", "--samples", str(tmp_path / "x"),
                            "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "no such file" in err
    code, _, err = run_cli(["evaluate", "--task", "humaneval", "--samples", str(f), "--out",
                            str(tmp_path / "o"), "--k", "a,b"], capsys)
    assert code == 2 and "--k" in err


def test_results_schema_and_summary(he_samples, tmp_path, capsys):
    out = tmp_path / "res"
    code, stdout, _ = run_cli(["evaluate", "--task", "humaneval", "--samples", str(he_samples),
                               "--out", str(out), "--k", "1,2,10"], capsys)
    assert code == 0 and "pass@1" in stdout and "50.00%" in stdout
    r = json.loads((out / "results.json").read_text())
    assert r["schema"] == "codediff.results/1"
    assert r["dataset"]["name"] == "humaneval" and len(r["dataset"]["sha256"]) == 64
    assert r["k"] == [1, 2] and r["k_dropped"] == [10]
    assert r["pass_at_k"]["base"] == {"pass@1": 0.5, "pass@2": 1.0}
    assert r["n_per_task"] == {"min": 2, "max": 2} and r["problems_with_samples"] == 20
    assert r["status_counts"]["all"]["passed"] == 20
    assert r["per_task"]["HumanEval/0"]["pass_at_k"]["base"]["pass@1"] == 0.5
    lines = [json.loads(x) for x in (out / "executions.jsonl").read_text().splitlines()]
    assert len(lines) == 40
    assert {"task_id", "completion_id", "status", "detail", "seconds"} <= set(lines[0])
    # a second run over the same dir re-judges nothing and gives the same numbers
    code, _, _ = run_cli(["evaluate", "--task", "humaneval", "--samples", str(he_samples),
                          "--out", str(out), "--k", "1,2,10"], capsys)
    r2 = json.loads((out / "results.json").read_text())
    assert r2["pass_at_k"] == r["pass_at_k"]
    assert (out / "executions.jsonl").read_text().count("\n") == 40


def test_other_samples_in_same_out_dir_refused(he_samples, tmp_path, capsys):
    out = tmp_path / "res"
    assert run_cli(["evaluate", "--task", "humaneval", "--samples", str(he_samples), "--out",
                    str(out)], capsys)[0] == 0
    other = tmp_path / "other.jsonl"
    other.write_text('{"task_id": "HumanEval/0", "completion": "    return 1\\n"}\n')
    code, _, err = run_cli(["evaluate", "--task", "humaneval", "--samples", str(other),
                            "--out", str(out)], capsys)
    assert code == 2 and "holds results for other samples" in err


def test_format_comes_from_the_sidecar_and_a_contradicting_one_is_refused(tmp_path, capsys,
                                                                           data_dir):
    """Samples made with one prompt format are judged with it (the sidecar's, not the task's
    default); an explicit --format that contradicts the sidecar is refused with one line, exit
    2 and nothing written, rather than scoring them under another program rule."""
    from codediff.harness.evaluate import evaluate
    from codediff.harness.samples import read_samples

    from codediff.errors import UserError

    task = load_task("mbpp-infill-single", data_dir)
    problems = task.problems[:4]
    # the rest of the line, then junk: right under `prefix` (the answer is cut at its line),
    # wrong under the task's default `infill` (the text is judged as written)
    rows = [{"task_id": p.task_id, "completion": p.canonical_fill + "oops(\n"} for p in problems]
    f = tmp_path / "samples.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sidecar = tmp_path / "samples.meta.json"
    sidecar.write_text(json.dumps({"schema": "codediff.samples/2", "task": task.name,
                                   "prompt_format": "prefix"}))
    assert task.spec.default_format == "infill"

    def judge(out: Path, *extra: str) -> tuple[int, str]:
        code, _, err = run_cli(["evaluate", "--task", task.name, "--samples", str(f), "--out",
                                str(out), "--k", "1", "--no-progress", *extra], capsys)
        return code, err

    code, err = judge(tmp_path / "refused", "--format", "infill")
    assert code == 2 and err.startswith("codediff: error: ") and err.count("\n") == 1
    assert "--format infill contradicts samples.meta.json" in err
    assert "prompt format prefix" in err and "drop --format" in err
    assert "--prompt-format infill" in err
    assert not (tmp_path / "refused").exists()
    # the library refuses the same contradiction
    samples = read_samples(f, set(task.by_id()), task.name)
    with pytest.raises(UserError, match="contradicts"):
        evaluate(task, samples, out=tmp_path / "lib", samples_path=f, ks=[1], fmt="infill")
    assert not (tmp_path / "lib").exists()

    # no --format: the sidecar's; the same --format given: the same
    assert judge(tmp_path / "res")[0] == 0
    r = json.loads((tmp_path / "res" / "results.json").read_text())
    assert r["prompt_format"] == "prefix" and r["pass_at_k"]["base"]["pass@1"] == 1.0
    assert judge(tmp_path / "res", "--format", "prefix")[0] == 0

    # a sidecar format this task does not have: the task it was made for is named
    sidecar.write_text(json.dumps({"schema": "codediff.samples/2", "task": "humaneval-infill-x",
                                   "prompt_format": "fewshot"}))
    code, err = judge(tmp_path / "other")
    assert code == 2 and "prompt format fewshot" in err and "--task humaneval-infill-x" in err
    assert err.count("\n") == 1 and not (tmp_path / "other").exists()


def _marker_procs(marker: str) -> list[int]:
    pids = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if marker.encode() in open(f"/proc/{pid}/cmdline", "rb").read():
                    pids.append(int(pid))
            except OSError:
                pass
    return pids


def test_killed_run_resumes_without_loss_or_duplicates(tmp_path):
    """SIGKILL the CLI half-way through, rerun: every sample once, finished lines untouched."""
    task = load_task("humaneval")
    rows = []
    for p in task.problems[:30]:  # each sample sleeps, so the kill lands mid-run
        body = p.reference[len(p.prompt):]
        rows.append({"task_id": p.task_id,
                     "completion": "    import time as _t\n    _t.sleep(0.15)\n" + body})
        rows.append({"task_id": p.task_id, "completion": "    return None\n"})
    f = tmp_path / "s.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "res"
    cmd = [sys.executable, "-m", "codediff.cli", "evaluate", "--task", "humaneval", "--samples",
           str(f), "--out", str(out), "--workers", "2", "--k", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    log = out / "executions.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline:
        if log.is_file() and log.read_text().count("\n") >= 10:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = log.read_text()
    done_before = before.count("\n")
    assert 0 < done_before < 60 and not (out / "results.json").exists()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = log.read_text()
    assert after.startswith(before[: before.rfind("\n") + 1])  # nothing re-judged
    keys = [(json.loads(x)["task_id"], json.loads(x)["completion_id"])
            for x in after.splitlines()]
    assert len(keys) == 60 and len(set(keys)) == 60
    r = json.loads((out / "results.json").read_text())
    assert r["pass_at_k"]["base"]["pass@1"] == 0.5


def test_no_process_survives_evaluate(tmp_path):
    marker = "31337.25"
    prog = ("    import os\n    if os.fork() == 0:\n        os.setsid()\n"
            f"        os.execv('/bin/sleep', ['sleep', '{marker}'])\n    return None\n")
    rows = [{"task_id": "HumanEval/0", "completion": prog}] * 1
    f = tmp_path / "s.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    subprocess.run([sys.executable, "-m", "codediff.cli", "evaluate", "--task", "humaneval",
                    "--samples", str(f), "--out", str(tmp_path / "o"), "--k", "1"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert _marker_procs(f"sleep\0{marker}") == []
