"""codediff.formats: schemas, atomic writes with the umask's modes, the resumable JSONL store, and
the stores built on it (evaluate's results dir through the real CLI, old files still read)."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from codediff.harness.tasks import load_task

from codediff import formats
from codediff.cli import main
from codediff.errors import UserError
from codediff.formats import JsonlStore
from tests.test_generate import cli, save_native, tok  # noqa: F401 - tok is a fixture

REPO = Path(__file__).resolve().parent.parent
REFERENCE = REPO / "reports" / "reference" / "crossover-tiny-5m"


# ----------------------------------------------------------------------------- the store

def test_store_round_trip_and_reopen(tmp_path):
    store = JsonlStore(tmp_path / "sub" / "rows.jsonl")
    assert store.rows() == []
    rows = [{"i": i, "text": "é\n" * i} for i in range(5)]
    with store:
        store.append(rows[:2])
        store.append(rows[2:3], ensure_ascii=False)
    with JsonlStore(store.path) as again:  # a resumed run appends after what is there
        again.append(rows[3:])
    assert JsonlStore(store.path).rows() == rows
    assert store.path.read_bytes().endswith(b"\n")
    store.rewrite(rows[:1])
    assert store.rows() == rows[:1]


def test_torn_tail_is_ignored_then_trimmed_and_a_bad_middle_line_is_named(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3, "b": "cut by a ki')
    store = JsonlStore(path)
    assert store.rows() == [{"a": 1}, {"a": 2}]
    with store:  # opening for append trims the torn line first
        store.append([{"a": 3}])
    assert path.read_text() == '{"a": 1}\n{"a": 2}\n{"a": 3}\n'
    path.write_text('{"a": 1}\nnot json\n{"a": 3}\n')
    with pytest.raises(UserError, match=r"rows\.jsonl:2: not a JSON object"):
        store.rows()


def _results_header(**changes) -> dict:
    header = {"schema": formats.RESULTS_RUN_SCHEMA, "task": "humaneval", "dataset_sha256": "d",
              "samples_sha256": "s", "prompt_format": "completion", "sanitize": True,
              "timeout": 3.0, "limits": {"memory_bytes": 4 << 30, "processes": 64},
              "sandbox": "bubblewrap", "harness_version": "0.1.0", "min_time_limit": None,
              "time_limit_factor": None}
    header.update(changes)
    return header


def _results_store(out: Path, header: dict) -> JsonlStore:
    return JsonlStore(out / "executions.jsonl", kind="results dir", header_path=out / "run.json",
                      header=header, own_dir=True)


def test_identity_is_written_once_and_a_different_one_is_refused_naming_fields(tmp_path):
    out = tmp_path / "res"
    _results_store(out, _results_header()).claim("--out res")
    on_disk = json.loads((out / "run.json").read_text())
    assert on_disk == _results_header()
    _results_store(out, _results_header()).claim("--out res")  # same identity: a resume
    changed = _results_header(timeout=10.0, limits={"memory_bytes": 1 << 30, "processes": 64})
    with pytest.raises(UserError) as e:
        _results_store(out, changed).claim("--out res")
    msg = str(e.value)
    assert "timeout (3.0 -> 10.0)" in msg and "limits.memory_bytes (4294967296 -> 1073741824)" \
        in msg and "limits.processes" not in msg and "\n" not in msg
    assert json.loads((out / "run.json").read_text()) == on_disk  # nothing overwritten
    # a header missing a declared identity field is a programming error
    with pytest.raises(ValueError, match="sandbox"):
        _results_store(out, {k: v for k, v in _results_header().items() if k != "sandbox"})
    # a folder with other files and no header is not taken over
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        _results_store(other, _results_header()).claim("--out other")
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]


def test_ignored_subfields_may_change(tmp_path):
    header = {"model": {"path": "m", "device": "cuda:0"}, "task": "t", "dataset": {},
              "prompt_format": "f", "problems": ["a"], "settings": {"n": 1}}
    JsonlStore(tmp_path / "p", kind="samples", header_path=tmp_path / "h.json",
               header=header).claim("x")
    moved = {**header, "model": {"path": "m", "device": "cuda:3"}}
    JsonlStore(tmp_path / "p", kind="samples", header_path=tmp_path / "h.json",
               header=moved).claim("x")
    with pytest.raises(UserError, match=r"settings\.n \(1 -> 2\)"):
        JsonlStore(tmp_path / "p", kind="samples", header_path=tmp_path / "h.json",
                   header={**header, "settings": {"n": 2}}).claim("x")


# ----------------------------------------------------------------------------- schemas

def test_unknown_major_refused_in_one_line(tmp_path):
    f = tmp_path / "results.json"
    f.write_text(json.dumps({"schema": "codediff.results/9"}))
    with pytest.raises(UserError) as e:
        formats.read_json(f, "results", "rerun it")
    assert "codediff.results/9 is not supported" in str(e.value) and "upgrade" in str(e.value)
    f.write_text(json.dumps({"schema": "codediff.run/1"}))
    with pytest.raises(UserError, match="not a codediff results file"):
        formats.read_json(f, "results", "rerun it")
    assert formats.read_json(f, "run", "x")[1] == 1
    assert formats.schema("run") == formats.RUN_SCHEMA == "codediff.run/2"
    # the report command says it in one line
    d = tmp_path / "r"
    d.mkdir()
    (d / "results.json").write_text(json.dumps({"schema": "codediff.results/9"}))
    r = subprocess.run([sys.executable, "-m", "codediff.cli", "report", "--results", str(d),
                        "--out", str(tmp_path / "x.html")], cwd=REPO, capture_output=True,
                       text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "upgrade codediff" in r.stderr


def test_formats_module_is_torch_free():
    r = subprocess.run([sys.executable, "-c", "import sys, codediff.formats, "
                        "codediff.reports.load; assert 'torch' not in sys.modules"], cwd=REPO)
    assert r.returncode == 0


def test_docs_list_every_schema_and_identity_field():
    doc = (REPO / "docs" / "formats.md").read_text()
    for kind in formats.MAJORS:
        assert formats.schema(kind) in doc, kind
    for store, fields in formats.IDENTITIES.items():
        m = re.search(rf"- Identity of the {store}[^:]*:(.*?)(?=\n- |\n\n)", doc, re.S)
        assert m, store
        assert set(re.findall(r"`([\w.]+)`", m.group(1))) >= set(fields), store


# ----------------------------------------------------------------------------- file modes

@pytest.mark.parametrize("mask,file_mode,dir_mode", [(0o022, 0o644, 0o755),
                                                     (0o027, 0o640, 0o750)])
def test_written_files_and_folders_follow_the_umask(tmp_path, mask, file_mode, dir_mode):
    old = os.umask(mask)
    try:
        formats.atomic_write_text(tmp_path / "a" / "f.txt", "x")
        formats.atomic_write_json(tmp_path / "a" / "f.json", {"x": 1})
        tmp = formats.make_temp_dir(tmp_path / "ckpt")
        store = JsonlStore(tmp_path / "s" / "rows.jsonl")
        store.append([{"x": 1}])
        store.close()
    finally:
        os.umask(old)

    def mode(p: Path) -> int:
        return stat.S_IMODE(p.stat().st_mode)

    assert mode(tmp_path / "a" / "f.txt") == file_mode
    assert mode(tmp_path / "a" / "f.json") == file_mode
    assert mode(tmp_path / "a") == dir_mode and mode(tmp_path / "s") == dir_mode
    assert mode(tmp) == dir_mode and mode(store.path) == file_mode


def test_results_dir_files_follow_the_umask(tmp_path):
    f = tmp_path / "s.jsonl"
    f.write_text(json.dumps({"task_id": "HumanEval/0", "completion": "    return []\n"}) + "\n")
    out = tmp_path / "res"
    r = subprocess.run(f"umask 022 && exec {sys.executable} -m codediff.cli evaluate --task "
                       f"humaneval --samples {f} --out {out} --k 1", shell=True, cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    for name in ("run.json", "results.json", "executions.jsonl"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name


# ----------------------------------------------------------------------------- evaluate

def _evaluate(samples: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "codediff.cli", "evaluate", "--task", "humaneval",
            "--samples", str(samples), "--out", str(out), "--workers", "2", "--k", "1", *extra]


def test_evaluate_resume_with_other_limits_is_refused(tmp_path):
    """Killed half-way, then rerun with another --memory-mb or --timeout: refused, naming the
    field, exit 2, nothing changed; rerun with the original options: finishes."""
    task = load_task("humaneval")
    rows = []
    for p in task.problems[:20]:
        rows.append({"task_id": p.task_id, "completion": "    import time as _t\n"
                     "    _t.sleep(0.15)\n" + p.reference[len(p.prompt):]})
    f = tmp_path / "s.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "res"
    proc = subprocess.Popen(_evaluate(f, out), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    log = out / "executions.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and not (log.is_file() and log.read_text().count("\n") >= 3):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = log.read_bytes()
    assert not (out / "results.json").exists()
    for extra, field in ((["--memory-mb", "2048"], "limits.memory_bytes"),
                         (["--timeout", "7"], "timeout"),
                         (["--no-sanitize"], "sanitize"),
                         (["--unsafe-no-sandbox"], "sandbox")):
        r = subprocess.run(_evaluate(f, out, *extra), cwd=REPO, capture_output=True, text=True)
        assert r.returncode == 2, (extra, r.stderr)
        assert r.stderr.startswith("codediff: error: ") and r.stderr.count("\n") == 1
        assert f"{field} (" in r.stderr and "other samples or settings" in r.stderr, r.stderr
        assert log.read_bytes() == before and not (out / "results.json").exists()
    r = subprocess.run(_evaluate(f, out), cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert len(JsonlStore(log).rows()) == 20
    assert json.loads((out / "results.json").read_text())["pass_at_k"]["base"]["pass@1"] == 1.0


def test_evaluate_refuses_a_foreign_non_empty_out(tmp_path, capsys):
    f = tmp_path / "s.jsonl"
    f.write_text(json.dumps({"task_id": "HumanEval/0", "completion": "    return []\n"}) + "\n")
    out = tmp_path / "mine"
    out.mkdir()
    (out / "paper.tex").write_text("keep me")
    code = main(["evaluate", "--task", "humaneval", "--samples", str(f), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "not empty" in err and err.count("\n") == 1
    assert sorted(p.name for p in out.iterdir()) == ["paper.tex"]


def test_sample_with_both_completion_and_solution_refused(tmp_path, capsys):
    f = tmp_path / "s.jsonl"
    f.write_text(json.dumps({"task_id": "HumanEval/0", "completion": "    return []\n"}) + "\n"
                 + json.dumps({"task_id": "HumanEval/1", "completion": "    return []\n",
                               "solution": "def f(): pass\n"}) + "\n")
    out = tmp_path / "o"
    code = main(["evaluate", "--task", "humaneval", "--samples", str(f), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and ":2: has both completion and solution" in err and err.count("\n") == 1
    assert not out.exists()


# ----------------------------------------------------------------------------- old files

def test_old_reference_run_still_loads_under_the_new_names():
    from codediff.reports.load import load_run

    for obj in ("ar", "mdm"):
        old = json.loads((REFERENCE / obj / "run.json").read_text())
        assert old["schema"] == "codediff.run/1" and "epoch_tokens" not in old
        run = load_run(REFERENCE / obj)
        assert run.config["epoch_tokens"] == old["unique_tokens"]
        assert "unique_tokens" not in run.config and run.objective == obj
        assert run.metrics and all("step" in m for m in run.metrics)


def test_old_sidecar_and_checkpoint_layouts_are_read_in_the_new_layout():
    old = {"schema": "codediff.samples/1", "model": {"objective": "mdm", "unique_tokens": 7},
           "sampler": {"mode": "dlm", "sampler": "threshold", "tau": 0.9}}
    new = formats.samples_meta(old)
    assert new["settings"] == old["sampler"] and "sampler" not in new
    assert new["model"] == {"objective": "mdm", "epoch_tokens": 7}
    current = {"schema": formats.SAMPLES_SCHEMA, "settings": {"mode": "ar"}}
    assert formats.samples_meta(current) == current
    assert formats.checkpoint_meta({"unique_tokens": 5, "tokens": 10}) == {
        "epoch_tokens": 5, "tokens": 10}  # no schema: the first version
    ck2 = {"schema": formats.CHECKPOINT_SCHEMA, "epoch_tokens": 5, "unique_tokens": 6}
    assert formats.checkpoint_meta(ck2) == ck2


# ----------------------------------------------------------------------------- generate

def test_generate_refusals_name_the_differing_settings(tok, tmp_path, capsys,  # noqa: F811
                                                      monkeypatch):
    from codediff import generate

    run = save_native(tok, tmp_path, "ar")
    common = ["--model", run, "--task", "humaneval", "--limit", "2", "--max-new-tokens", "4"]
    out = tmp_path / "s.jsonl"
    assert cli(*common, "--n", "2", "--out", out) == 0
    meta = json.loads((tmp_path / "s.meta.json").read_text())
    assert meta["schema"] == "codediff.samples/2" and "sampler" not in meta
    assert meta["settings"]["n"] == 2 and "sampler" not in meta["settings"]  # AR: no sampler
    capsys.readouterr()
    assert cli(*common, "--n", "3", "--out", out) == 2
    err = capsys.readouterr().err
    assert "settings.n (2 -> 3)" in err and err.count("\n") == 1
    # an unfinished run: killed before its first batch, resumed with another temperature
    part_out = tmp_path / "p.jsonl"

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(generate, "_run_batch", interrupted)
    assert cli(*common, "--out", part_out) == 130
    assert (tmp_path / "p.jsonl.partial.meta.json").is_file()
    capsys.readouterr()
    assert cli(*common, "--temperature", "0.5", "--out", part_out) == 2
    err = capsys.readouterr().err
    assert "settings.temperature (0.0 -> 0.5)" in err and "unfinished run" in err


def test_generate_output_from_before_the_rename_is_still_recognised(tok, tmp_path,  # noqa: F811
                                                                     capsys, monkeypatch):
    """A checkpoint/1 (`unique_tokens`), an unfinished partial and a finished samples/1 sidecar
    written before `epoch_tokens` had its name: resumed, and recognised as complete."""
    from codediff import generate

    run = save_native(tok, tmp_path, "mdm")
    ck = run / "checkpoints" / "tokens-1000" / "config.json"
    cfg = json.loads(ck.read_text())
    cfg["codediff"].update(schema="codediff.checkpoint/1", unique_tokens=4096)
    ck.write_text(json.dumps(cfg))
    args = ["--model", run, "--task", "humaneval", "--limit", "2", "--gen-length", "8",
            "--block-length", "8", "--out", tmp_path / "s.jsonl"]
    real = generate._run_batch

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(generate, "_run_batch", interrupted)
    assert cli(*args) == 130
    pmeta = tmp_path / "s.jsonl.partial.meta.json"
    header = json.loads(pmeta.read_text())
    assert header["model"]["epoch_tokens"] == 4096  # read from the old name
    ident = {k: v for k, v in header.items() if k != "fingerprint"}
    old_model = {("unique_tokens" if k == "epoch_tokens" else k): v
                 for k, v in header["model"].items()}
    legacy_fp = generate._fingerprint(ident, legacy=True)
    assert legacy_fp != header["fingerprint"]
    pmeta.write_text(json.dumps({"fingerprint": legacy_fp, **ident, "model": old_model}))
    monkeypatch.setattr(generate, "_run_batch", real)
    assert cli(*args) == 0  # the old partial is adopted, not refused
    meta_file = tmp_path / "s.meta.json"
    meta = json.loads(meta_file.read_text())
    assert meta["model"]["epoch_tokens"] == 4096 and "unique_tokens" not in meta["model"]
    old = {**meta, "schema": "codediff.samples/1", "fingerprint": legacy_fp,
           "model": old_model, "sampler": meta["settings"]}
    del old["settings"]
    meta_file.write_text(json.dumps(old))
    capsys.readouterr()
    assert cli(*args) == 0 and "already complete" in capsys.readouterr().err
    assert cli(*args[:-2], "--n", "2", "--out", tmp_path / "s.jsonl") == 2
    assert "settings.n (1 -> 2)" in capsys.readouterr().err


def test_evaluate_refuses_a_sidecar_of_an_unknown_major(tmp_path, capsys):
    f = tmp_path / "s.jsonl"
    f.write_text(json.dumps({"task_id": "HumanEval/0", "completion": "    return []\n"}) + "\n")
    (tmp_path / "s.meta.json").write_text(json.dumps({"schema": "codediff.samples/7"}))
    code = main(["evaluate", "--task", "humaneval", "--samples", str(f), "--out",
                 str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "codediff.samples/7 is not supported" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()
