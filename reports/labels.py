"""One label per result: tables, matrices and charts are keyed by it, so two results must never
share one (two samples files from the same checkpoint would otherwise overwrite each other)."""

from __future__ import annotations

from pathlib import Path

from codediff.reports.load import Result

from codediff.errors import UserError


def make_unique(results: list[Result], explicit: list[bool]) -> None:
    """Give colliding default labels distinct suffixes; refuse colliding labels set by the user.

    A default label (`run@checkpoint (objective)`) is widened with what differs between the
    results: the samples file's name, then the results dir's name, then a number."""
    seen: dict[str, Path] = {}
    for r, given in zip(results, explicit, strict=True):
        if given and r.label in seen:
            raise UserError(f"two results are labelled {r.label!r} ({seen[r.label]} and "
                            f"{r.path}); give each LABEL=DIR a different label")
        if given:
            seen[r.label] = r.path
    groups: dict[str, list[Result]] = {}
    for r in results:
        groups.setdefault(r.label, []).append(r)
    for label, group in groups.items():
        if len(group) < 2:
            continue
        for widen in (_samples_stem, lambda r: r.path.name, None):
            names = [widen(r) if widen else str(i + 1) for i, r in enumerate(group)]
            if all(names) and len(set(names)) == len(names):
                break
        for r, name in zip(group, names, strict=True):
            r.label = f"{label} · {name}"
    labels = [r.label for r in results]
    dup = {x for x in labels if labels.count(x) > 1}
    if dup:  # a widened default met a label the user gave
        raise UserError(f"two results are labelled {sorted(dup)[0]!r}; give each LABEL=DIR a "
                        "different label")


def _samples_stem(r: Result) -> str:
    name = str((r.data.get("samples") or {}).get("file") or "")
    return Path(name).stem if name else ""
