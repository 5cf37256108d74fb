"""Where documents come from: `stdlib`, `site-packages`, `dir:PATH`, `hf:NAME_OR_PATH[:config]`.

A source spec may end in `@WEIGHT` (e.g. `stdlib@2`) to set its share of the token mix.
Every source yields `(key, text)` pairs in a fixed order (sorted paths, dataset row order), so a
build is reproducible. Files are read as bytes and decoded strictly as UTF-8; the few that are not
UTF-8 (legacy coding cookies) are counted and dropped rather than guessed at.

`datasets` is imported only for `hf:` sources, so the other sources work without it.
"""

from __future__ import annotations

import os
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from codediff.errors import UserError

# Folders inside the stdlib tree that hold installed packages, not the standard library.
_STDLIB_SKIP = {"site-packages", "dist-packages"}
_LOCAL_DATA_SUFFIXES = {
    ".jsonl": "json", ".json": "json", ".jsonl.gz": "json", ".json.gz": "json",
    ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow",
}


@dataclass(frozen=True)
class SourceSpec:
    """One `--source` argument, parsed."""

    spec: str  # as written, without the weight
    kind: str  # "stdlib" | "site-packages" | "dir" | "hf"
    target: str = ""  # folder, file or dataset name
    config: str | None = None  # hf config name
    data_dir: str | None = None  # hf data_dir (a config part containing "/")
    weight: float = 1.0

    @property
    def local(self) -> bool:
        """Everything but a hub dataset can be read offline and in full."""
        return self.kind != "hf" or Path(self.target).exists()


def parse_source(text: str) -> SourceSpec:
    """`stdlib`, `site-packages`, `dir:PATH`, `hf:NAME_OR_PATH[:config]`, each optionally `@WEIGHT`."""
    spec, weight = text.strip(), 1.0
    if "@" in spec:
        head, tail = spec.rsplit("@", 1)
        try:
            weight = float(tail)
        except ValueError:
            pass  # an "@" inside a path or dataset name, not a weight
        else:
            if not weight > 0 or weight == float("inf"):
                raise UserError(f"--source {text}: weight must be a positive number, e.g. "
                                f"{head}@2")
            spec = head
    if spec in ("stdlib", "site-packages"):
        return SourceSpec(spec, spec, weight=weight)
    if spec.startswith("dir:") and len(spec) > 4:
        return SourceSpec(spec, "dir", target=spec[4:], weight=weight)
    if spec.startswith("hf:") and len(spec) > 3:
        rest = spec[3:]
        name, config = rest, None
        if not Path(rest).exists() and ":" in rest:
            name, config = rest.rsplit(":", 1)
            config = config or None
        data_dir = None
        if config is not None and "/" in config:
            data_dir, config = config, None  # e.g. the-stack-smol's `data/python`
        return SourceSpec(spec, "hf", target=name, config=config, data_dir=data_dir,
                          weight=weight)
    raise UserError(f"--source {text}: unknown source; use stdlib, site-packages, dir:PATH or "
                    "hf:NAME_OR_PATH[:config], optionally followed by @WEIGHT")


@dataclass
class Source:
    """A validated source, ready to be read."""

    spec: SourceSpec
    roots: list[Path] = field(default_factory=list)  # file sources
    dataset: Any = None  # hf sources: a (streaming) datasets object
    text_column: str = "content"

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"spec": self.spec.spec, "kind": self.spec.kind,
                             "weight": self.spec.weight}
        if self.roots:
            d["paths"] = [str(r) for r in self.roots]
        if self.spec.kind == "hf":
            d.update(dataset=self.spec.target, config=self.spec.config,
                     data_dir=self.spec.data_dir, text_column=self.text_column)
        return d

    def count(self) -> int | None:
        """Number of documents if cheaply known (file sources), for progress bars."""
        if self.spec.kind == "hf":
            return None
        skip = _STDLIB_SKIP if self.spec.kind == "stdlib" else set()
        return sum(1 for root in self.roots for _ in _walk_py(root, skip))

    def iter_documents(self) -> Iterator[tuple[str, bytes | str | None]]:
        """(key, content) in a fixed order; content is bytes for files; for rows it is the text
        column's string, or None where the row holds no string there (a number, null, list,
        missing column: counted as `not_text` by the filters, never passed on as it is)."""
        if self.spec.kind == "hf":
            for i, row in enumerate(self.dataset):
                value = row.get(self.text_column) if isinstance(row, dict) else None
                yield f"row{i}", value if isinstance(value, str) else None
            return
        many = len(self.roots) > 1
        for n, root in enumerate(self.roots):
            skip = _STDLIB_SKIP if self.spec.kind == "stdlib" else set()
            for rel in _walk_py(root, skip):
                try:
                    data = (root / rel).read_bytes()
                except OSError:
                    continue  # vanished or unreadable: not a document
                yield (f"{n}/{rel}" if many else rel), data


def open_source(spec: SourceSpec, text_column: str = "content") -> Source:
    """Validate a source (paths exist, dataset loads, column present) without reading it all."""
    if spec.kind == "stdlib":
        return Source(spec, [Path(sysconfig.get_paths()["stdlib"])])
    if spec.kind == "site-packages":
        paths = sysconfig.get_paths()
        roots = sorted({Path(paths["purelib"]), Path(paths["platlib"])})
        roots = [r for r in roots if r.is_dir()]
        if not roots:
            raise UserError("--source site-packages: this interpreter has no site-packages folder")
        return Source(spec, roots)
    if spec.kind == "dir":
        root = Path(spec.target).expanduser()
        if not root.is_dir():
            what = "is not a folder" if root.exists() else "does not exist"
            raise UserError(f"--source {spec.spec}: {root} {what}; pass a folder of .py files")
        return Source(spec, [root.resolve()])
    return Source(spec, dataset=_open_hf(spec, text_column), text_column=text_column)


def _walk_py(root: Path, skip_top: set[str]) -> Iterator[str]:
    """Relative posix paths of the .py files under root, sorted, skipping caches and dot folders."""
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__"
                             and not (rel_dir == Path(".") and d in skip_top))
        for name in sorted(filenames):
            if name.endswith(".py") and (Path(dirpath) / name).is_file():
                yield (rel_dir / name).as_posix()


# ----------------------------------------------------------------------------- Hugging Face

def _open_hf(spec: SourceSpec, text_column: str) -> Any:
    try:
        import datasets
    except ModuleNotFoundError as e:  # pragma: no cover - datasets is a core dependency
        raise UserError("hf: sources need the `datasets` package: `make install`") from e
    datasets.disable_progress_bars()
    path = Path(spec.target).expanduser()
    try:
        if path.exists():
            ds = _open_local(datasets, path, spec)
        else:
            if spec.target.startswith((".", "/", "~")):
                raise UserError(f"--source {spec.spec}: {spec.target} does not exist; pass an "
                                "existing folder or file, or a hub dataset name")
            ds = datasets.load_dataset(spec.target, spec.config, data_dir=spec.data_dir,
                                       split="train", streaming=True)
    except UserError:
        raise
    except Exception as e:  # datasets raises many types for "not found / no network / bad config"
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UserError(f"--source {spec.spec}: could not open the dataset ({type(e).__name__}: "
                        f"{msg[:200]}); check the name/path and config") from e
    columns = _columns(ds)
    if columns == []:
        raise UserError(f"--source {spec.spec}: the dataset is empty")
    if columns is not None and text_column not in columns:
        raise UserError(f"--source {spec.spec}: no column {text_column!r}; columns are "
                        f"{', '.join(columns)}; pass --text-column NAME")
    if columns is not None and hasattr(ds, "select_columns"):
        ds = ds.select_columns([text_column])  # do not decode the other columns
    return ds


def _open_local(datasets: Any, path: Path, spec: SourceSpec) -> Any:
    if path.is_dir() and (path / "dataset_info.json").is_file() and (path / "state.json").is_file():
        ds = datasets.load_from_disk(str(path))  # a `save_to_disk` folder
        if isinstance(ds, datasets.DatasetDict):
            if "train" not in ds:
                raise UserError(f"--source {spec.spec}: the saved dataset has splits "
                                f"{', '.join(ds)} but no 'train'")
            ds = ds["train"]
        return ds
    if path.is_file():
        name = path.name.lower()
        builder = next((b for suf, b in _LOCAL_DATA_SUFFIXES.items() if name.endswith(suf)), None)
        if builder is None:
            raise UserError(f"--source {spec.spec}: {path} is not a .jsonl/.json/.parquet/.csv "
                            "file; pass a data file or a dataset folder")
        return datasets.load_dataset(builder, data_files=str(path), split="train",
                                     streaming=True)
    # A folder of data files (parquet/jsonl/...) or a dataset repository cloned to disk.
    return datasets.load_dataset(str(path), spec.config, data_dir=spec.data_dir, split="train",
                                 streaming=True)


def _columns(ds: Any) -> list[str] | None:
    names = getattr(ds, "column_names", None)
    if names:
        return list(names)
    try:  # streaming datasets may not know their columns until the first row is read
        first = next(iter(ds.take(1)))
    except StopIteration:
        return []
    except Exception:
        return None
    return list(first)
