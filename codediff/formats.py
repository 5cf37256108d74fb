"""The files codediff's stages exchange, in code: docs/formats.md says the same in prose.

One place for every schema string, for writing files atomically with the user's umask, for
reading a versioned file (an unknown major version is refused with one line), and for the one
resumable store every long command uses: rows appended to a JSONL file under an identity that a
resumed run must share field by field.

Torch-free: the harness and the reports import it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from codediff.errors import UserError

# ----------------------------------------------------------------------------- schemas

# kind -> the major versions this codediff reads; the last one is what it writes. A field may be
# added without a new major; a field removed, renamed or given another meaning needs one.
MAJORS: dict[str, tuple[int, ...]] = {
    "corpus": (1,),          # corpus dir manifest.json
    "run": (1, 2),           # run dir run.json; 2: `unique_tokens` became `epoch_tokens`
    "checkpoint": (1, 2),    # the `codediff` block of a checkpoint's config.json; 2: as run
    "samples": (1, 2),       # samples.meta.json; 2: `sampler` -> `settings`, as run in `model`
    "results": (1,),         # results dir results.json
    "results-run": (1,),     # results dir run.json: what the verdicts were judged with
    "codechoice": (1,),      # each row of the code-choice JSONL
    "choice-score": (1,),    # `codediff score` output
    "sweep": (1,),           # sweep dir sweep.json: the spec, the nested corpora, the cells
    "sweep-cell": (1,),      # sweep dir cells/<id>/cell.json: what one cell trains
    "sweep-eval": (1,),      # sweep dir cells/<id>/eval/tokens-<N>.json: one checkpoint's scores
    "crossover": (1,),       # sweep dir crossover.json: where mdm first beats ar, per metric
}


def schema(kind: str) -> str:
    """The schema string this codediff writes for `kind`, e.g. "codediff.run/2"."""
    return f"codediff.{kind}/{MAJORS[kind][-1]}"


def first_schema(kind: str) -> str:
    """The oldest schema string of `kind` (what a file from before its `schema` field is)."""
    return f"codediff.{kind}/{MAJORS[kind][0]}"


CORPUS_SCHEMA = schema("corpus")
RUN_SCHEMA = schema("run")
CHECKPOINT_SCHEMA = schema("checkpoint")
SAMPLES_SCHEMA = schema("samples")
RESULTS_SCHEMA = schema("results")
RESULTS_RUN_SCHEMA = schema("results-run")
CODECHOICE_SCHEMA = schema("codechoice")
CHOICE_SCORE_SCHEMA = schema("choice-score")
SWEEP_SCHEMA = schema("sweep")
SWEEP_CELL_SCHEMA = schema("sweep-cell")
SWEEP_EVAL_SCHEMA = schema("sweep-eval")
CROSSOVER_SCHEMA = schema("crossover")


def schema_major(obj: Any, kind: str, where: str, fix: str,
                 default: str | None = None) -> int:
    """The major version of `obj`'s schema, checked to be a `kind` this codediff reads.

    `where` names the file for the message, `fix` says what to do about a file of another kind;
    `default` is assumed when the object has no schema field (files older than the field)."""
    s = obj.get("schema", default) if isinstance(obj, dict) else None
    name, _, major = s.rpartition("/") if isinstance(s, str) else ("", "", "")
    if name != f"codediff.{kind}" or not major.isdigit():
        raise UserError(f"{where}: schema {s!r} is not a codediff {kind} file "
                        f"({schema(kind)}); {fix}")
    if int(major) not in MAJORS[kind]:
        known = ", ".join(f"codediff.{kind}/{m}" for m in MAJORS[kind])
        raise UserError(f"{where}: schema {s} is not supported by this codediff (it reads "
                        f"{known}); upgrade codediff")
    return int(major)


def read_json(path: str | os.PathLike, kind: str, fix: str,
              default: str | None = None) -> tuple[dict, int]:
    """(object, major) of a JSON file of schema `kind`; any problem is one UserError line."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such file; {fix}")
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{p}: not valid JSON ({e}); {fix}") from None
    return obj, schema_major(obj, kind, str(p), fix, default)


# ----------------------------------------------------------------------------- one name per quantity

def _major(obj: dict, default: int = 1) -> int:
    s = obj.get("schema") if isinstance(obj, dict) else None
    major = s.rpartition("/")[2] if isinstance(s, str) else ""
    return int(major) if major.isdigit() else default


def _epoch_tokens(obj: dict) -> dict:
    out = dict(obj)
    if "epoch_tokens" not in out and "unique_tokens" in out:
        out["epoch_tokens"] = out.pop("unique_tokens")
    return out


def run_record(obj: dict) -> dict:
    """A run.json of any major in the current layout. `epoch_tokens` is the tokens of one pass
    over the packed training windows (windows x seq_len); run/1 called it `unique_tokens`, the
    name of the corpus's exact U (run/2 keeps U as `corpus.unique_tokens`)."""
    return _epoch_tokens(obj) if _major(obj) == 1 else dict(obj)


def unique_tokens_of(run: dict) -> int | None:
    """U of the corpus a run (a `run_record`) trained on: run/2 records it under `corpus`; for a
    run/1 record, one pass over its packed windows (`epoch_tokens`), which is U to within the
    last window's cut."""
    return (run.get("corpus") or {}).get("unique_tokens") or run.get("epoch_tokens")


def checkpoint_meta(meta: dict) -> dict:
    """A checkpoint's `codediff` block of any major in the current layout (as run_record;
    checkpoint/2 has `epoch_tokens` and the corpus's U as `unique_tokens`)."""
    return _epoch_tokens(meta) if _major(meta) == 1 else dict(meta)


def samples_meta(meta: dict) -> dict:
    """A samples sidecar of any major in the current layout: the sampling options under
    `settings` (samples/1 had them under `sampler`, beside the sampler's own `sampler` name),
    and the model's `epoch_tokens` (samples/1: `unique_tokens`, as run/1)."""
    out = dict(meta)
    if _major(out) != 1:
        return out
    if "settings" not in out and isinstance(out.get("sampler"), dict):
        out["settings"] = out.pop("sampler")
    if isinstance(out.get("model"), dict):
        out["model"] = _epoch_tokens(out["model"])
    return out


# ----------------------------------------------------------------------------- writing

def _umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask sets it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a plainly created file gets (0644 under umask 022)."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    """The mode a plainly created folder gets (0755 under umask 022)."""
    return 0o777 & ~_umask()


def make_temp_dir(final: str | os.PathLike) -> Path:
    """A new empty folder beside `final`, to be renamed onto it once complete. mkdtemp makes it
    0700; it gets the umask's mode so the renamed folder reads like any other."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    os.chmod(tmp, dir_mode())
    return tmp


@contextlib.contextmanager
def building_dir(final: str | os.PathLike) -> Iterator[Path]:
    """A new folder beside `final` to fill; when the block ends without error it replaces
    `final` (an old one is removed first), otherwise it is deleted: readers never see a
    half-written folder under the final name."""
    final = Path(final)
    tmp = make_temp_dir(final)
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` so that readers see the old file or the whole new one, never half:
    a temporary file in the same folder, fsynced, then renamed over the target. The file gets
    the umask's mode (mkstemp alone would leave it 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> None:
    """atomic_write_text of `obj` as JSON and a final newline."""
    atomic_write_text(path, json.dumps(obj, indent=indent, default=str) + "\n")


# ----------------------------------------------------------------------------- identities

# What each resumable output is made with: a resumed command must agree on every field (a
# dotted name reaches into a nested object). Fields outside these, and the sub-fields in
# IDENTITY_IGNORES, may differ (they say how the work was done, not what it is).
IDENTITIES: dict[str, tuple[str, ...]] = {
    "results dir": ("task", "dataset_sha256", "samples_sha256", "prompt_format", "sanitize",
                    "timeout", "limits", "sandbox", "harness_version",
                    # + tasks only: the per-input time limits decide verdicts
                    "min_time_limit", "time_limit_factor"),
    "samples": ("model", "task", "dataset", "prompt_format", "problems", "settings"),
    "run dir": ("objective", "model", "train", "corpus", "seq_len", "steps"),
    # a sweep: the corpus every cell is cut from; a cell: everything its run dir is made with
    "sweep": ("corpus",),
    "sweep cell": ("id", "unique_tokens", "preset", "objective", "variant", "seed",
                   "total_tokens", "overrides", "corpus_manifest_sha256"),
}
IDENTITY_IGNORES: dict[str, tuple[str, ...]] = {
    # torchrun ranks, and a resumed run, may use other GPUs
    "samples": ("model.device",),
    # a moved corpus is the same corpus (manifest_sha256 says which); how a run is computed
    # may change (codediff.train.RESUMABLE_CHANGES adds the train.* fields)
    "run dir": ("corpus.path", "corpus.unique_tokens"),  # U: fixed by manifest_sha256
}


def identity_diff(old: dict, new: dict, fields: Iterable[str],
                  ignore: Iterable[str] = ()) -> list[str]:
    """'name (old -> new)' for every identity field (and nested sub-field) that differs."""
    skip = set(ignore)

    def diff(a: Any, b: Any, name: str) -> list[str]:
        if name in skip:
            return []
        if isinstance(a, dict) and isinstance(b, dict):
            out: list[str] = []
            for k in sorted(set(a) | set(b)):
                out += diff(a.get(k, _MISSING), b.get(k, _MISSING), f"{name}.{k}")
            return out
        if a == b:
            return []
        return [f"{name} ({_short(a)} -> {_short(b)})"]

    out: list[str] = []
    for f in fields:
        out += diff(old.get(f, _MISSING), new.get(f, _MISSING), f)
    return out


class _Missing:
    def __repr__(self) -> str:
        return "missing"


_MISSING = _Missing()


def _short(v: Any) -> str:
    s = repr(v) if isinstance(v, str | _Missing) else json.dumps(v, default=str)
    return s if len(s) <= 40 else s[:37] + "..."


# ----------------------------------------------------------------------------- the store

class JsonlStore:
    """Rows appended to a JSONL file, resumable after a kill at any moment.

    Each `append` writes whole lines, flushed and fsynced, so a kill can cut at most the last
    line; `trim` cuts such a torn tail off before appending again and `rows` ignores it. With a
    `header` the store has an identity: a JSON file (`header_path`) holding `header`, whose
    IDENTITIES[kind] fields a resumed run must repeat; `claim` writes it on the first run and on
    a resume refuses, naming every differing field, a header made with other settings.
    """

    def __init__(self, path: str | os.PathLike, *, kind: str | None = None,
                 header_path: str | os.PathLike | None = None, header: dict | None = None,
                 ignore: Iterable[str] = (), noun: str = "", fix: str = "rerun with the same "
                 "options", own_dir: bool = False, fsync_every_s: float = 0.0):
        self.path = Path(path)
        self.kind = kind
        self.header_path = Path(header_path) if header_path is not None else None
        self.header = header
        self.fields = IDENTITIES[kind] if kind else ()
        if header is not None:
            missing = [f for f in self.fields if f not in header]
            if missing:  # a programming error: the identity is declared in IDENTITIES
                raise ValueError(f"{kind} header lacks identity fields {missing}")
        self.ignore = (*IDENTITY_IGNORES.get(kind or "", ()), *ignore)
        self.noun = noun or f"a {kind} made with other settings"
        self.fix = fix
        self.own_dir = own_dir  # the header lives in a folder that only this store may fill
        # a flushed line survives a killed process; fsync guards against a lost machine. Stores
        # whose rows are cheap to redo (a verdict) fsync at most this often instead of per row.
        self.fsync_every_s = fsync_every_s
        self._synced = 0.0
        self._file = None

    # -- identity
    def differences(self) -> list[str] | None:
        """None when no header is on disk yet; else the identity fields that differ."""
        if self.header_path is None or not self.header_path.is_file():
            return None
        try:
            old = json.loads(self.header_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            old = {}
        if not isinstance(old, dict):
            old = {}
        schema_name = (self.header or {}).get("schema")
        if isinstance(schema_name, str):
            kind = schema_name.removeprefix("codediff.").rpartition("/")[0]
            schema_major(old, kind, str(self.header_path), f"{self.fix} or choose another --out")
        return identity_diff(old, self.header or {}, self.fields, self.ignore)

    def check(self, where: str) -> bool:
        """Refuse (one UserError line naming every differing field) a header on disk made with
        other settings, or, for a store that owns its folder, a non-empty folder without one.
        True when the header on disk matches (a resume). `where` starts the message."""
        diffs = self.differences()
        if diffs:
            more = f"; {len(diffs) - 6} more" if len(diffs) > 6 else ""
            raise UserError(f"{where} holds {self.noun} (" + "; ".join(diffs[:6]) + more
                            + f"); {self.fix}, or choose another --out")
        if diffs is None:
            folder = self.header_path.parent
            if self.own_dir and folder.is_dir() and any(folder.iterdir()):
                raise UserError(f"{where}: the folder is not empty and is not a {self.kind} "
                                "of codediff; choose a new or empty --out")
            return False
        return True

    def claim(self, where: str) -> None:
        """check(), then write the header when there is none yet (the first run)."""
        if not self.check(where):
            atomic_write_json(self.header_path, self.header)

    # -- rows
    def rows(self) -> list[dict]:
        """The complete rows on disk, in order (a torn last line is left out; a malformed line
        before it is an error naming its line number)."""
        if not self.path.is_file():
            return []
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        lines = data[:end].split(b"\n")[:-1]
        rows: list[dict] = []
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (ValueError, UnicodeDecodeError):
                row = None
            if not isinstance(row, dict):
                raise UserError(f"{self.path}:{i}: not a JSON object (the file was changed by "
                                "hand?); fix or delete that line")
            rows.append(row)
        return rows

    def trim(self) -> None:
        """Cut a line torn by a kill off the end of the file, so appending starts clean."""
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(end)
                f.flush()
                os.fsync(f.fileno())

    def rewrite(self, rows: Iterable[dict], ensure_ascii: bool = True) -> None:
        """Replace the file by `rows`, atomically."""
        atomic_write_text(self.path, "".join(json.dumps(r, ensure_ascii=ensure_ascii) + "\n"
                                             for r in rows))

    def open(self) -> JsonlStore:
        """Trim a torn tail and open the file for appending (use as a context manager)."""
        self.trim()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
        return self

    def append(self, rows: Iterable[dict], ensure_ascii: bool = True) -> None:
        """Write whole lines, flushed and fsynced (opens the file first if needed)."""
        if self._file is None:
            self.open()
        text = "".join(json.dumps(r, ensure_ascii=ensure_ascii) + "\n" for r in rows)
        self._file.write(text)
        self._file.flush()
        now = time.monotonic()
        if now - self._synced >= self.fsync_every_s:
            os.fsync(self._file.fileno())
            self._synced = now

    def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    def __enter__(self) -> JsonlStore:
        return self if self._file is not None else self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks (corpora and task data can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_json_or_none(path: str | os.PathLike) -> dict | None:
    """A JSON object from a file, or None when it is missing, unreadable or not an object (for
    scanning folders a killed job may have left half-written)."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) else None
