"""Recipes: the published evaluation settings of an external model, by name (torch-free).

A recipe is a small TOML file in `codediff/recipes/` (or any `.toml` file given by path) that
says how a model's authors generated their HumanEval / MBPP answers: the prompt (a base model's
plain completion, or an instruct model's chat template with the user message and any response
prefix), the stop sequences, the sampling options (any `codediff generate` option), and the
number they published with its source. `codediff generate --recipe NAME` takes the recipe's
values as defaults (an option typed on the command line wins) and records the recipe in the
samples sidecar, so the report can print "published X, ours Y". docs/external.md walks one
model through it; `codediff recipes` lists them.

File layout (every key is checked; an unknown one is refused with its file and name):

    name = "llada-8b-instruct"            # the file's stem
    model = "GSAI-ML/LLaDA-8B-Instruct"   # the Hugging Face id the numbers are for
    kind = "dlm"                          # ar | dlm
    description = "..."
    settings_source = "where the settings below come from (repository file, commit)"
    not_published = ["settings the sources do not state"]
    not_supported = ["published settings codediff cannot reproduce"]
    [generate]                            # `codediff generate` options, by field name
    sampler = "low_confidence"
    [pending]                             # options a newer codediff adds: applied when known
    [tasks.humaneval]                     # one table per codediff task the recipe covers
    style = "chat"                        # completion | chat
    user = "Complete the following python code:\\n{prompt}"   # chat: the user message
    stop = []                             # replaces the task's stop sequences
    generate = { gen_length = 512 }       # per-task overrides of [generate]
    published = { metric = "pass@1", phase = "base", value = 47.0, source = "...", url = "..." }
"""

from __future__ import annotations

import argparse
import hashlib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from codediff.errors import UserError

RECIPE_DIR = Path(__file__).resolve().parent / "recipes"
STYLES = ("completion", "chat")
PHASES = ("base", "plus")
# task fields a chat message may name ({prompt} etc.), as the task templates use them
TASK_FIELDS = ("prompt", "text", "tests", "first_test", "entry_point", "task_id", "code")
# generate options a recipe may not set: what to run on and where the output goes
NOT_IN_RECIPES = ("model", "task", "out", "data", "limit", "task_ids", "overwrite", "progress",
                  "recipe", "device", "prompt_format")
TOP_KEYS = ("name", "model", "kind", "description", "settings_source", "not_published",
            "not_supported", "generate", "pending", "tasks")
TASK_KEYS = ("style", "prompt_format", "system", "user", "assistant_prefix", "stop",
             "generate", "published", "notes")
PUBLISHED_KEYS = ("metric", "phase", "value", "source", "url", "note")


@dataclass(frozen=True)
class TaskRecipe:
    """What a recipe says for one task."""

    task: str
    style: str = "completion"
    prompt_format: str | None = None
    system: str | None = None
    user: str | None = None
    assistant_prefix: str = ""
    stop: tuple[str, ...] | None = None  # None: the task's own stop sequences
    generate: dict[str, Any] = field(default_factory=dict)
    published: dict[str, Any] | None = None
    notes: str = ""


@dataclass(frozen=True)
class Recipe:
    name: str
    model: str
    kind: str
    description: str
    settings_source: str
    generate: dict[str, Any]
    pending: dict[str, Any]
    tasks: dict[str, TaskRecipe]
    not_published: tuple[str, ...] = ()
    not_supported: tuple[str, ...] = ()
    file: str = ""
    sha256: str = ""

    def for_task(self, task: str) -> TaskRecipe:
        if task not in self.tasks:
            raise UserError(f"recipe {self.name} has no settings for task {task!r} (it covers "
                            f"{', '.join(self.tasks)}); pass one of those to --task")
        return self.tasks[task]

    def settings(self, task: str) -> dict[str, Any]:
        """The generate options for `task`: [generate], then the task's overrides."""
        return {**self.generate, **self.for_task(task).generate}

    def record(self, task: str) -> dict[str, Any]:
        """What the samples sidecar keeps: the recipe's name, file hash, model and published
        number for this task (the report prints it beside ours)."""
        t = self.for_task(task)
        return {"name": self.name, "model": self.model, "file_sha256": self.sha256,
                "style": t.style, "published": t.published,
                "not_published": list(self.not_published),
                "not_supported": list(self.not_supported)}


# ----------------------------------------------------------------------------- loading

def available() -> dict[str, Path]:
    """Shipped recipe name -> file."""
    return {p.stem: p for p in sorted(RECIPE_DIR.glob("*.toml"))}


def load(name_or_path: str) -> Recipe:
    """A shipped recipe by name, or a recipe file by path; any problem is one UserError."""
    shipped = available()
    if name_or_path in shipped:
        path = shipped[name_or_path]
    elif name_or_path.endswith(".toml") and Path(name_or_path).is_file():
        path = Path(name_or_path)
    else:
        raise UserError(f"--recipe {name_or_path}: no such recipe; choose one of "
                        f"{', '.join(shipped)} (`codediff recipes`) or pass a recipe .toml file")
    data = path.read_bytes()
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path.name}: not valid TOML ({e}); fix the recipe file") from None
    return _parse(raw, path.name, hashlib.sha256(data).hexdigest())


def _parse(raw: dict, where: str, sha: str) -> Recipe:
    from codediff.harness.tasks import available_tasks

    _only(raw, TOP_KEYS, where)
    for key in ("name", "model", "kind", "description", "settings_source"):
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise UserError(f"{where}: `{key}` must be a non-empty text value")
    if raw["kind"] not in ("ar", "dlm"):
        raise UserError(f"{where}: kind {raw['kind']!r}: choose ar or dlm")
    if raw["name"] != Path(where).stem:
        raise UserError(f"{where}: name {raw['name']!r} differs from the file name")
    generate = _generate(raw.get("generate", {}), raw["kind"], f"{where}: generate")
    pending = raw.get("pending", {})
    if not isinstance(pending, dict):
        raise UserError(f"{where}: [pending] must be a table")
    specs = available_tasks()
    tasks_raw = raw.get("tasks")
    if not isinstance(tasks_raw, dict) or not tasks_raw:
        raise UserError(f"{where}: needs at least one [tasks.NAME] table")
    tasks = {}
    for name, t in tasks_raw.items():
        w = f"{where}: tasks.{name}"
        if name not in specs:
            raise UserError(f"{w}: no such task; choose one of {', '.join(sorted(specs))}")
        if not isinstance(t, dict):
            raise UserError(f"{w} must be a table")
        tasks[name] = _task(name, t, specs[name], raw["kind"], w)
    lists = {}
    for key in ("not_published", "not_supported"):
        v = raw.get(key, [])
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise UserError(f"{where}: `{key}` must be a list of text values")
        lists[key] = tuple(v)
    return Recipe(name=raw["name"], model=raw["model"], kind=raw["kind"],
                  description=raw["description"], settings_source=raw["settings_source"],
                  generate=generate, pending=dict(pending), tasks=tasks, file=where, sha256=sha,
                  **lists)


def _only(d: dict, allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(d) - set(allowed))
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(allowed)}")


def _generate(values: Any, kind: str, where: str) -> dict[str, Any]:
    """Check recipe values against the generate options (types, choices, bounds, kind)."""
    from codediff import options
    from codediff.config import GenerateConfig

    if not isinstance(values, dict):
        raise UserError(f"{where} must be a table")
    by_name = {f.name: f for f in options.cli_fields(GenerateConfig)}
    out = {}
    for key, value in values.items():
        f = by_name.get(key)
        if f is None or key in NOT_IN_RECIPES:
            raise UserError(f"{where}.{key}: not a generate option a recipe can set")
        if f.metadata.get("kind") not in (None, kind):
            raise UserError(f"{where}.{key}: applies to {f.metadata['kind']} models, and this "
                            f"recipe is for {kind} models")
        out[key] = options.check_value(GenerateConfig, f, value, where=f"{where}.{key}")
    return out


def _task(name: str, t: dict, spec: Any, kind: str, where: str) -> TaskRecipe:
    _only(t, TASK_KEYS, where)
    style = t.get("style", "completion")
    if style not in STYLES:
        raise UserError(f"{where}: style {style!r}: choose one of {', '.join(STYLES)}")
    fmt = t.get("prompt_format")
    if fmt is not None and fmt not in spec.formats:
        raise UserError(f"{where}: prompt_format {fmt!r}: the task has "
                        f"{', '.join(spec.formats)}")
    text = {k: t.get(k) for k in ("system", "user", "assistant_prefix")}
    for k, v in text.items():
        if v is not None and not isinstance(v, str):
            raise UserError(f"{where}: `{k}` must be a text value")
    if style == "chat" and not text["user"]:
        raise UserError(f"{where}: a chat recipe needs `user`, the user message template")
    if style == "completion" and (text["user"] or text["system"] or text["assistant_prefix"]):
        raise UserError(f"{where}: `user`, `system` and `assistant_prefix` belong to chat "
                        "recipes (style = \"chat\")")
    for k in ("system", "user", "assistant_prefix"):
        if text[k]:
            _check_fields(text[k], f"{where}.{k}")
    stop = t.get("stop")
    if stop is not None and (not isinstance(stop, list)
                             or not all(isinstance(s, str) and s for s in stop)):
        raise UserError(f"{where}: `stop` must be a list of non-empty text values")
    pub = t.get("published")
    if pub is not None:
        pub = _published(pub, spec, where)
    notes = t.get("notes", "")
    if not isinstance(notes, str):
        raise UserError(f"{where}: `notes` must be a text value")
    return TaskRecipe(task=name, style=style, prompt_format=fmt, system=text["system"],
                      user=text["user"], assistant_prefix=text["assistant_prefix"] or "",
                      stop=tuple(stop) if stop is not None else None,
                      generate=_generate(t.get("generate", {}), kind, f"{where}.generate"),
                      published=pub, notes=notes)


def _check_fields(template: str, where: str) -> None:
    import string

    try:
        names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as e:
        raise UserError(f"{where}: bad template ({e}); write a literal brace as {{{{ or }}}}") \
            from None
    bad = sorted(names - set(TASK_FIELDS))
    if bad:
        raise UserError(f"{where}: unknown field {{{bad[0]}}}; use {', '.join(TASK_FIELDS)}")


def _published(pub: Any, spec: Any, where: str) -> dict:
    w = f"{where}.published"
    if not isinstance(pub, dict):
        raise UserError(f"{w} must be a table")
    _only(pub, PUBLISHED_KEYS, w)
    metric = pub.get("metric", "pass@1")
    if not isinstance(metric, str) or not metric.startswith("pass@") \
            or not metric[5:].isdigit():
        raise UserError(f"{w}: metric {metric!r}: write pass@K")
    phase = pub.get("phase", "base")
    if phase not in PHASES or (phase == "plus" and not spec.differential):
        raise UserError(f"{w}: phase {phase!r}: base, or plus for a + task")
    value = pub.get("value")
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not 0 <= value <= 100):
        raise UserError(f"{w}: value {value!r}: a percentage between 0 and 100")
    if not isinstance(pub.get("source"), str) or not pub["source"].strip():
        raise UserError(f"{w}: `source` must say where the number is published")
    for k in ("url", "note"):
        if k in pub and not isinstance(pub[k], str):
            raise UserError(f"{w}: `{k}` must be a text value")
    return {"metric": metric, "phase": phase,
            "value": None if value is None else float(value),
            **{k: pub[k] for k in ("source", "url", "note") if k in pub}}


# ----------------------------------------------------------------------------- using one

def apply(cfg: Any) -> Any:
    """`cfg` (GenerateConfig) with the recipe's values where the user typed no option; the
    recipe itself is kept in `cfg.extra["recipe"]` for the prompts and the sidecar."""
    from codediff import options
    from codediff.config import GenerateConfig

    r = load(cfg.recipe)
    t = r.for_task(cfg.task)
    known = {f.name: f for f in options.cli_fields(GenerateConfig)}
    values = r.settings(cfg.task)
    # options a newer codediff has (the pending table names them): applied once they exist
    values.update({k: v for k, v in r.pending.items() if k in known and k not in values})
    for key, value in values.items():
        if key not in cfg.explicit:
            setattr(cfg, key, options.check_value(GenerateConfig, known[key], value,
                                                  where=f"recipe {r.name}: {key}"))
    if t.prompt_format and "prompt_format" not in cfg.explicit:
        cfg.prompt_format = t.prompt_format
    cfg.extra = {**cfg.extra, "recipe": r}
    return cfg


def chat_prompt(tokenizer: Any, t: TaskRecipe, fields: dict[str, str], where: str) -> str:
    """The prompt text of a chat recipe: the tokenizer's own chat template over the system and
    user messages, with the generation prompt, then the recipe's response prefix."""
    tok = getattr(tokenizer, "tok", tokenizer)  # codediff's HFTokenizer wraps transformers'
    if not callable(getattr(tok, "apply_chat_template", None)) \
            or not getattr(tok, "chat_template", None):
        raise UserError(f"{where}: the recipe prompts through a chat template and this model's "
                        "tokenizer has none; use a chat (instruct) model or a completion recipe")
    messages = []
    if t.system:
        messages.append({"role": "system", "content": t.system.format(**fields)})
    messages.append({"role": "user", "content": (t.user or "").format(**fields)})
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return text + t.assistant_prefix.format(**fields)


# ----------------------------------------------------------------------------- `codediff recipes`

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="show this recipe whole (a name, or a .toml "
                        "file to check)")


def _published_text(p: dict | None) -> str:
    if not p:
        return "no published number"
    v = "not transcribed" if p.get("value") is None else f"{p['value']:g}"
    return f"{p['metric']} {p['phase']} {v} ({p['source']})"


def run(args: argparse.Namespace) -> int:
    if args.name:
        r = load(args.name)
        path = available().get(args.name) or Path(args.name)
        print(path.read_text(encoding="utf-8").rstrip())
        print(f"\n# checked: {len(r.tasks)} task(s), sha256 {r.sha256[:12]}")
        return 0
    # one line per recipe and task: what it runs, and the number its authors published
    for name in available():
        r = load(name)
        for task, t in r.tasks.items():
            print(f"{name:<27} {task:<11} {r.model:<38} {_published_text(t.published)}")
    print("\n`codediff recipes NAME` shows one whole; `codediff generate --recipe NAME` uses it.")
    return 0

