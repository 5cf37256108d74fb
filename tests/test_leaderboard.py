"""Reports and the leaderboard site show what the result files hold, and only that (issue 14).

Fixtures are really judged HumanEval samples (tests/leaderboard_fixtures.py). Each test below
names the defect it guards against."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest

from codediff.cli import main
from tests.leaderboard_fixtures import make_all

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "reports" / "reference" / "crossover-tiny-5m"


@pytest.fixture(scope="module")
def res(tmp_path_factory):
    return make_all(tmp_path_factory.mktemp("lb"))


def _report(tmp_path, *args) -> str:
    out = tmp_path / "r.html"
    assert main(["report", *args, "--out", str(out), "--overwrite"]) == 0
    return out.read_text()


def _table(html: str, heading: str) -> str:
    start = html.index(f"<h2>{heading}")
    return html[start:html.index("</table>", start)]


def _rows(table: str) -> list[str]:
    return re.findall(r"<tr>(.*?)</tr>", table, re.S)[1:] if "<thead>" in table else []


# ---------------------------------------------------------------- labels and tables

def test_two_results_of_one_checkpoint_get_distinct_labels_and_columns(res, tmp_path):
    html = _report(tmp_path, "--results", str(res["mdm-tau0.9"]), str(res["mdm-tau0.7"]))
    a, b = "mdm@tokens-100352 (mdm) · mdm-tau0.9", "mdm@tokens-100352 (mdm) · mdm-tau0.7"
    assert a in html and b in html
    matrix = _table(html, "Per problem")
    # HumanEval/0 (i = 0): tau0.9 fails both samples, tau0.7 passes one of two
    row0 = re.search(r"HumanEval/0</th>(.*?)</tr>", matrix, re.S).group(1)
    assert re.findall(r'data-v="([\d.]+)"', row0) == ["0.0", "0.5"]


def test_duplicate_labels_given_by_the_user_are_refused(res, tmp_path, capsys):
    out = tmp_path / "x.html"
    assert main(["report", "--results", f"m={res['ar']}", f"m={res['mdm-tau0.9']}", "--out",
                 str(out)]) == 2
    assert "labelled 'm'" in capsys.readouterr().err and not out.exists()


def test_every_table_with_rows_from_several_tasks_has_a_task_column(res, tmp_path):
    html = _report(tmp_path, "--results", str(res["ar"]), str(res["mdm-tau0.9"]))
    for heading in ("Results", "Generation cost"):
        assert '<th class="l">task</th>' in _table(html, heading), heading


def test_pass_at_k_has_a_percent_sign_an_interval_and_every_rows_k(res, tmp_path):
    html = _report(tmp_path, "--results", str(res["ar"]), str(res["mdm-tau0.7"]))
    table = _table(html, "Results")
    assert "pass@2</th>" in table  # the AR row (k = 1 only) is first; pass@2 still shown
    ar, mdm = _rows(table)
    assert ">50.0%<" in ar and "n/e" in ar and 'title="not evaluated"' in ar
    assert ">33.2%<" in mdm and ">66.5%<" in mdm
    # 95% interval: mean ± 1.96 s/√P over the 164 per-problem pass@1 estimates
    r = json.loads((res["ar"] / "results.json").read_text())
    vals = [t["pass_at_k"]["base"]["pass@1"] for t in r["per_task"].values()]
    m = sum(vals) / len(vals)
    half = 1.959964 * (sum((v - m) ** 2 for v in vals) / (len(vals) - 1) / len(vals)) ** 0.5
    assert f"{100 * (m - half):.1f}–{100 * (m + half):.1f}" in ar


def test_a_tie_at_zero_is_not_drawn_as_best(tmp_path):
    from tests.leaderboard_fixtures import SPECS, judge

    SPECS["zero-a"] = (*SPECS["ar"][:5], lambda i, j: False, None)
    SPECS["zero-b"] = ("runs/b/checkpoints/tokens-1", *SPECS["zero-a"][1:])
    try:
        a, b = judge(tmp_path, "zero-a"), judge(tmp_path, "zero-b")
    finally:
        del SPECS["zero-a"], SPECS["zero-b"]
    html = _report(tmp_path, "--leaderboard", "--results", str(a), str(b))
    assert "0.0%" in html and 'class="best"' not in html


def test_partial_results_are_marked_and_listed_below_the_ranking(res, tmp_path):
    html = _report(tmp_path, "--leaderboard", "--results", str(res["partial"]),
                   str(res["ar"]), str(res["mdm-tau0.7"]))
    table = html[html.index("<table"):html.index("</table>")]
    ranked, partial = re.findall(r"<tbody class=\"(\w+)\">(.*?)</tbody>", table, re.S)
    assert ranked[0] == "ranked" and partial[0] == "partial"
    assert "big@tokens-9000000" in partial[1] and "big@tokens-9000000" not in ranked[1]
    assert "3/164" in partial[1] and "partial</span>" in partial[1]
    # 3 of 3 solved: not a certain 100% (s = 0), the Wilson interval for 3 problems
    assert ">100.0%<span class=\"ci\">43.9–100.0<" in partial[1]
    assert 'class="best"' not in partial[1]
    report = _report(tmp_path, "--results", str(res["partial"]), str(res["ar"]))
    assert 'class="best"' not in report  # 100% on 3 problems is not better than 50% on 164
    assert "164/164" in ranked[1]
    # the 100% of the partial result is not ranked: the ranked table starts with AR's 50%
    assert ranked[1].index("ar@tokens-100352") < ranked[1].index("mdm@tokens-100352")


def test_cells_sort_by_their_underlying_number(res, tmp_path):
    html = _report(tmp_path, "--results", str(res["mdm-tau0.9"]), str(res["ar"]))
    cost = _table(html, "Generation cost")
    assert '<td data-v="1920.0">1.92K</td>' in cost
    for table in re.findall(r"<table class=\"sortable\".*?</table>", html, re.S):
        for row in _rows(table):
            cells = re.findall(r"<td([^>]*)>", row)
            # every numeric cell carries its number; text cells (class l) sort by text
            assert all("data-v=" in c or 'class="l' in c for c in cells), row[:200]


# ---------------------------------------------------------------- charts and captions

def test_curve_captions_state_only_what_the_data_holds(tmp_path):
    html = _report(tmp_path, "--runs", f"AR={REFERENCE / 'ar'}", f"MDM={REFERENCE / 'mdm'}")
    assert "Past the crossover" not in html
    assert "AR: lowest validation loss 2.5825 at 6.31 epochs; last point 5.8582" in html
    assert "swap order between" in html and "at the last shared point MDM is lower" in html
    # a run whose loss only falls gets no crossing sentence and no claim that it turns up
    run = tmp_path / "one"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(
        {"tokens": 1000 * 2 ** i, "val_loss": 5 - i, "objective": "ar"}) + "\n" for i in range(4)))
    html = _report(tmp_path, "--runs", str(run))
    assert "lowest validation loss 2.0000 at 8K tokens, its last point." in html
    assert "swap order" not in html and "turns up" not in html


def test_code_choice_draws_one_series_per_run(tmp_path):
    rows = json.loads((REFERENCE / "choice.json").read_text())
    mdm = [r for r in rows if r["objective"] == "mdm"]
    f1, f2 = tmp_path / "run1.json", tmp_path / "run2.json"
    f1.write_text(json.dumps(mdm))
    f2.write_text(json.dumps([dict(r, accuracy=r["accuracy"] / 2) for r in mdm]))
    html = _report(tmp_path, "--choices", str(f1), str(f2))
    svg = html[html.index("<svg"):html.index("</svg>")]
    assert "mdm (run1)" in svg and "mdm (run2)" in svg
    assert svg.count("stroke-width='2.5'") == 3  # two runs and the chance line
    assert "class='errbar'" in svg and "%</text>" in svg  # s.e. bars; y axis in percent


def test_a_one_checkpoint_chart_centres_its_point(tmp_path):
    from codediff.reports.svg import WIDTH, L, R, line_chart

    svg = line_chart([("a", [(1e6, 0.5, 0.02)])], x_label="tokens", y_label="acc", log_x=True,
                     percent=True)
    cx = float(re.search(r"<circle cx='([\d.]+)'", svg).group(1))
    assert abs(cx - (L + (WIDTH - L - R) / 2)) < 1
    assert "class='errbar'" in svg and "50%" in svg
    assert "font-size='18'" in svg and "width='640'" not in svg  # scales with the page


# ---------------------------------------------------------------- the leaderboard site

def _site(tmp_path, *inputs) -> Path:
    out = tmp_path / "site"
    assert main(["leaderboard", *map(str, inputs), "--out", str(out)]) == 0
    return out


def test_leaderboard_site_has_pages_json_csv_and_the_speed_view(res, tmp_path):
    out = _site(tmp_path, *res.values())
    html = (out / "index.html").read_text()
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in html and "<link" not in html and "src=" not in html
    data = json.loads((out / "leaderboard.json").read_text())
    rows = {r["label"]: r for r in data["rows"]}
    assert len(rows) == 4 and data["ci95"].startswith("95% interval")
    top = rows["mdm@tokens-100352 (mdm) · mdm-tau0.9"]
    assert top["rank"] == 1 and top["decoding_threshold"] == 0.9 and top["decoding_cache"] == "dual"
    assert top["output_tokens_per_s"] == 1920.0 and top["tokens_per_forward"] == 4.0
    assert top["train_unique_tokens"] == 100352 and top["train_epochs"] == 10.0
    assert top["env_harness"] and top["env_dataset_sha"] and top["env_torch"] == "2.13.0"
    assert rows["big@tokens-9000000 (mdm)"]["rank"] is None
    with open(out / "leaderboard.csv") as f:
        assert {r["label"] for r in csv.DictReader(f)} == set(rows)
    for r in data["rows"]:
        page = (out / r["page"]).read_text()
        assert f"<h1>{r['label']}</h1>" in page and 'href="../index.html"' in page
        assert f'href="{r["page"]}"' in html
    speed = html[html.index("accuracy against speed"):]
    assert speed.count("(Pareto front)") == 2  # tau 0.9 (most accurate) and tau 0.7 (fastest)
    assert "big@tokens-9000000" not in speed[:speed.index("</svg>")]  # partial: not drawn


def test_adding_one_results_dir_re_renders_without_judging(res, tmp_path, capsys):
    out = _site(tmp_path, res["ar"], res["mdm-tau0.9"])
    before = {p: p.stat().st_mtime_ns for p in res["mdm-tau0.7"].iterdir()}
    _site(tmp_path, res["mdm-tau0.7"])
    assert "2 kept from the earlier site" in capsys.readouterr().out
    labels = [r["label"] for r in json.loads((out / "leaderboard.json").read_text())["rows"]]
    assert len(labels) == 3
    assert {p: p.stat().st_mtime_ns for p in res["mdm-tau0.7"].iterdir()} == before
    _site(tmp_path, res["mdm-tau0.7"], "--overwrite")
    assert len(json.loads((out / "leaderboard.json").read_text())["rows"]) == 1
    assert len(list((out / "models").glob("*.html"))) == 1
    assert "kept from the earlier site" not in capsys.readouterr().out


def test_fresh_is_a_hidden_alias_of_overwrite(res, tmp_path, capsys):
    """`--overwrite`, as for every other command that replaces output; `--fresh`, its old name,
    still works for old scripts (with a note) but is not offered in --help."""
    out = _site(tmp_path, res["ar"], res["mdm-tau0.9"])
    capsys.readouterr()
    _site(tmp_path, res["mdm-tau0.7"], "--fresh")
    captured = capsys.readouterr()
    assert "kept from the earlier site" not in captured.out
    assert "--fresh is the old name of --overwrite" in captured.err
    assert len(json.loads((out / "leaderboard.json").read_text())["rows"]) == 1
    with pytest.raises(SystemExit):
        main(["leaderboard", "--help"])
    text = capsys.readouterr().out
    assert "--overwrite" in text and "--fresh" not in text


def test_leaderboard_renders_the_reference_runs(tmp_path):
    out = _site(tmp_path, REFERENCE)
    html = (out / "index.html").read_text()
    assert "<h2>codechoice</h2>" in html and "46.0%" in html and "elbo (M=64)" in html
    rows = json.loads((out / "leaderboard.json").read_text())["rows"]
    assert len(rows) == 9 and {r["train_unique_tokens"] for r in rows} == {4999936}
    page = (out / rows[0]["page"]).read_text()
    assert "Downstream: code choice" in page and "Validation loss" in page


def test_leaderboard_bad_input(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["leaderboard", str(empty), "--out", str(tmp_path / "s")]) == 2
    assert "holds no results.json" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
    assert main(["leaderboard", str(tmp_path / "nope"), "--out", str(tmp_path / "s")]) == 2


def test_the_site_copies_anywhere(res, tmp_path):
    """Self-contained: moved to another folder, every link still resolves."""
    out = _site(tmp_path, res["ar"], res["partial"])
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    for page in moved.rglob("*.html"):
        for href in re.findall(r'href="([^"#]+)"', page.read_text()):
            assert (page.parent / href).resolve().is_file(), (page, href)


@pytest.mark.parametrize("command", ["leaderboard", "demo"])
def test_new_commands_are_listed_with_their_options(command, capsys):
    from codediff.cli import main

    assert main([]) == 0
    assert f"  {command} " in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "--out" in capsys.readouterr().out  # torch-free help: tests/test_layers.py


def test_base_and_plus_side_by_side(tmp_path, monkeypatch):
    """A `+` task: the board ranks by plus pass@1 and shows base next to it, with intervals."""
    from codediff.harness.evaluate import evaluate
    from codediff.harness.samples import read_samples
    from codediff.harness.tasks import load_task

    # the judge caches plus-input oracles per dataset, not per problem list: a cut-down task
    # must not leave its 4-problem oracles in the shared cache
    monkeypatch.setenv("CODEDIFF_CACHE", str(tmp_path / "cache"))
    task = load_task("mbpp+")
    task.problems = task.problems[:4]  # a 4-problem task: judged in seconds
    rows = [{"task_id": p.task_id, "solution": p.reference if i % 2 == 0 else "def f(): pass"}
            for i, p in enumerate(task.problems)]
    f = tmp_path / "s.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    evaluate(task, read_samples(f, set(task.by_id()), task.name), out=tmp_path / "r",
             samples_path=f, ks=[1])
    out = _site(tmp_path, tmp_path / "r")
    html = (out / "index.html").read_text()
    assert "<th>plus pass@1</th><th>base pass@1</th>" in html
    (row,) = json.loads((out / "leaderboard.json").read_text())["rows"]
    assert row["plus_pass@1"] == row["base_pass@1"] == 0.5 and row["rank"] == 1
    assert row["plus_pass@1_ci95_lo"] < 0.5 < row["plus_pass@1_ci95_hi"]


def test_a_model_page_shows_the_run_it_came_from(tmp_path):
    """When the sidecar's model path is a checkpoint of a run dir on this machine, the model's
    page holds that run's training table and curves."""
    from tests.leaderboard_fixtures import SPECS, judge

    run = tmp_path / "runs" / "mine"
    (run / "checkpoints").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"schema": "codediff.run/2", "objective": "mdm",
                                              "corpus": {"unique_tokens": 1000},
                                              "epoch_tokens": 1000, "total_tokens": 8000,
                                              "epochs": 8}))
    (run / "metrics.jsonl").write_text("".join(json.dumps(
        {"tokens": 1000 * 2 ** i, "epochs": 2 ** i, "val_loss": 4 - i / 2}) + "\n"
        for i in range(4)))
    SPECS["mine"] = (str(run / "checkpoints" / "tokens-8000"), *SPECS["partial"][1:])
    try:
        res = judge(tmp_path, "mine")
    finally:
        del SPECS["mine"]
    out = _site(tmp_path, res)
    (row,) = json.loads((out / "leaderboard.json").read_text())["rows"]
    page = (out / row["page"]).read_text()
    assert "<h2>Training</h2>" in page and "Validation loss" in page
    assert "lowest validation loss 2.5000 at 8 epochs, its last point." in page
