"""Read the files reports are made from: results dirs (`codediff evaluate`) and run dirs
(`codediff train`). Nothing here imports torch or the harness: reports read files only."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from codediff.errors import UserError
from codediff.formats import JsonlStore, read_json, run_record, samples_meta, schema_major
from codediff.infill import ORACLE_LABEL


@dataclass
class Result:
    path: Path
    data: dict
    label: str

    @property
    def task(self) -> str:
        return self.data["task"]

    @property
    def generation(self) -> dict:
        """The samples sidecar copied into results.json, in the current layout."""
        return samples_meta(self.data.get("generation") or {})

    @property
    def model(self) -> dict:
        return self.generation.get("model") or {}

    @property
    def sampler(self) -> dict:
        """The sampling settings (the sidecar's `settings`)."""
        return self.generation.get("settings") or {}

    @property
    def totals(self) -> dict:
        return self.generation.get("totals") or {}


@dataclass
class Run:
    path: Path
    label: str
    objective: str
    metrics: list[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)


def load_result(path: str | Path, label: str | None = None) -> Result:
    p = Path(path)
    f = p / "results.json" if p.is_dir() else p
    if not f.is_file():
        raise UserError(f"{path}: no results.json; pass a folder written by `codediff evaluate`")
    data, _ = read_json(f, "results", "rerun `codediff evaluate`")
    return Result(f.parent, data, _ablation_marked(label or _default_label(f.parent, data), data))


def _ablation_marked(label: str, data: dict) -> str:
    """Samples whose answer length came from the reference (`--infill-length oracle`) are an
    ablation, not a benchmark score: every label of theirs says so, given or default."""
    settings = samples_meta(data.get("generation") or {}).get("settings") or {}
    if (settings.get("infill") or {}).get("length_rule") == "oracle" \
            and ORACLE_LABEL not in label:
        return f"{label} [{ORACLE_LABEL}]"
    return label


def _default_label(folder: Path, data: dict) -> str:
    model = samples_meta(data.get("generation") or {}).get("model") or {}
    name = folder.name
    if model.get("path"):
        mp = Path(str(model["path"]))
        # runs/<run>/checkpoints/tokens-N -> <run>@tokens-N: the run says which model it is
        name = f"{mp.parent.parent.name}@{mp.name}" if mp.parent.name == "checkpoints"             else mp.name
    obj = model.get("objective") or model.get("kind") or ""
    return f"{name} ({obj})" if obj else name


def load_run(path: str | Path, label: str | None = None) -> Run:
    p = Path(path)
    metrics_file = p / "metrics.jsonl"
    if not metrics_file.is_file():
        raise UserError(f"{path}: no metrics.jsonl; pass a run folder written by `codediff train`")
    metrics = JsonlStore(metrics_file).rows()  # a last line cut by a kill is left out
    config: dict = {}
    if (p / "run.json").is_file():
        try:
            config = json.loads((p / "run.json").read_text())
        except ValueError:
            config = {}
        if config:
            schema_major(config, "run", str(p / "run.json"), "pass a run folder written by "
                         "`codediff train`")
            config = run_record(config)  # run/1 named epoch_tokens `unique_tokens`
    objective = str(config.get("objective") or _objective_from_metrics(metrics) or "?")
    return Run(p, label or f"{p.name} ({objective})", objective, metrics, config)


def _objective_from_metrics(metrics: list[dict]) -> str | None:
    for m in metrics:
        if "objective" in m:
            return m["objective"]
    return None


def load_choice_scores(path: str | Path) -> list[dict]:
    """Code-choice scores: a `codediff score` JSON file, or a list of them (bench/crossover.py)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--choices {path}: no such file; pass the JSON written by `codediff "
                        "score` or bench/crossover.py")
    try:
        data = json.loads(p.read_text())
    except ValueError as e:
        raise UserError(f"{p}: not valid JSON") from e
    rows = data if isinstance(data, list) else [data]
    for r in rows:
        schema_major(r, "choice-score", str(p), "pass the JSON written by `codediff score`")
    return rows
