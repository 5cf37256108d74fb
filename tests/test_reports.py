"""HTML reports and leaderboards are rendered from real result files (and run metrics)."""

from __future__ import annotations

import json

import pytest
from codediff.harness.evaluate import evaluate
from codediff.harness.samples import read_samples
from codediff.harness.tasks import load_task

from codediff.cli import main


@pytest.fixture(scope="module")
def two_results(tmp_path_factory):
    d = tmp_path_factory.mktemp("rep")
    task = load_task("humaneval")
    task.problems = task.problems[:12]
    outs = []
    for name, good_every in (("strong", 1), ("weak", 3)):
        rows = []
        for i, p in enumerate(task.problems):
            for j in range(2):
                ok = (i + j) % good_every == 0
                rows.append({"task_id": p.task_id, "completion":
                             p.reference[len(p.prompt):] if ok else "    return None\n"})
        f = d / f"{name}.jsonl"
        f.write_text("".join(json.dumps(r) + "\n" for r in rows))
        (d / f"{name}.meta.json").write_text(json.dumps({
            "schema": "codediff.samples/1", "prompt_format": "completion",
            "model": {"path": f"runs/{name}/checkpoints/tokens-1000", "objective": "mdm"},
            "sampler": {"mode": "dlm", "sampler": "threshold", "tau": 0.9, "cache": "dual"},
            "totals": {"nfe": 100, "tokens": 2000, "seconds": 2.0, "tokens_per_second": 1000.0,
                       "tokens_per_forward": 20.0, "flops_per_token": 3.4e7}}))
        samples = read_samples(f, set(task.by_id()), task.name)
        evaluate(task, samples, out=d / name, samples_path=f, ks=[1, 2])
        outs.append(d / name)
    return outs


def _run_dir(tmp_path, name, objective, losses):
    run = tmp_path / name
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"schema": "codediff.run/1", "objective": objective,
                                              "unique_tokens": 1000, "total_tokens": 64000,
                                              "epochs": 64}))
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"tokens": 1000 * 2 ** i, "epochs": 2 ** i, "train_loss": v + 0.1,
                    "val_loss": v, "tokens_per_s": 5e5}) + "\n" for i, v in enumerate(losses)))
    return run


def test_comparison_report(two_results, tmp_path, capsys):
    ar = _run_dir(tmp_path, "ar", "ar", [4.0, 3.5, 3.2, 3.3, 3.9, 4.6, 5.2])
    mdm = _run_dir(tmp_path, "mdm", "mdm", [4.6, 4.0, 3.6, 3.4, 3.3, 3.25, 3.2])
    out = tmp_path / "report.html"
    code = main(["report", "--results", *map(str, two_results), "--runs", f"AR={ar}",
                 f"MDM <b>={mdm}", "--out", str(out), "--title", "crossover"])
    assert code == 0
    html = out.read_text()
    assert html.startswith("<!doctype html>") and "<title>crossover</title>" in html
    r = json.loads((two_results[0] / "results.json").read_text())
    assert f"{100 * r['pass_at_k']['base']['pass@1']:.1f}" in html
    assert "strong@tokens-1000 (mdm)" in html and "threshold" in html
    assert html.count("<svg") == 2 and "stroke-dasharray" in html  # AR curve dashed
    assert "MDM &lt;b&gt;" in html and "MDM <b>" not in html  # labels are escaped
    assert "3.2000" in html  # best validation loss of the MDM run
    assert "HumanEval/11" in html  # per-problem matrix


def test_leaderboard_orders_by_pass_at_1(two_results, tmp_path):
    out = tmp_path / "lb.html"
    assert main(["report", "--leaderboard", "--results", f"weak={two_results[1]}",
                 f"strong={two_results[0]}", "--out", str(out)]) == 0
    html = out.read_text()
    assert html.index(">strong<") < html.index(">weak<")


def test_report_bad_input(tmp_path, capsys):
    code = main(["report", "--results", str(tmp_path), "--out", str(tmp_path / "x.html")])
    err = capsys.readouterr().err
    assert code == 2 and "no results.json" in err and not (tmp_path / "x.html").exists()
    assert main(["report", "--out", str(tmp_path / "x.html")]) == 2


def test_published_crossover_report_renders_from_its_data(tmp_path):
    """The reference report in reports/reference/ is rebuilt from the data kept beside it."""
    from pathlib import Path

    ref = Path(__file__).resolve().parent.parent / "reports" / "reference" / "crossover-tiny-5m"
    out = tmp_path / "x.html"
    assert main(["report", "--runs", f"AR={ref / 'ar'}", f"MDM={ref / 'mdm'}", "--choices",
                 str(ref / "choice.json"), "--notes", str(ref / "NOTES.txt"), "--out",
                 str(out)]) == 0
    html = out.read_text()
    assert "2.5825" in html and "5.8582" in html  # AR best and last validation NLL
    assert "Code choice" in html and "46.0" in html and html.count("<svg") == 3


def test_choices_file_must_be_a_score(tmp_path, capsys):
    bad = tmp_path / "c.json"
    bad.write_text('[{"accuracy": 1}]')
    assert main(["report", "--choices", str(bad), "--out", str(tmp_path / "x.html")]) == 2
    assert "codediff.choice-score/1" in capsys.readouterr().err
