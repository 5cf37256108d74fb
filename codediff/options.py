"""Typed settings: one @dataclass per command is the single source of an option's default,
choices, bounds, help text and validation (torch-free).

A field's metadata (built by `option`) says how it appears on the command line:

    n_layer: int = option(6, help="transformer blocks", min=1)
    sampler: str = option("low_confidence", help="...", choices=SAMPLERS, kind="dlm")

`add_arguments(parser, cls)` turns the fields into argparse options (`--n-layer`; booleans get
`--x/--no-x`); --help shows each option's real default, its choices and which ones are
required. `from_args(cls, args)` builds the dataclass and checks every value against its field,
raising one `UserError` that names the flag and the fix ("--n-head 0: must be at least 1").
`explicit(args)` is the set of fields the user actually typed, so an option that only applies
to one model kind can be refused when it was set for the other (`check_kind`).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import re
import tempfile
import types
import typing
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from codediff.errors import UserError

_EXPLICIT = "_explicit_options"


# ----------------------------------------------------------------------------- counts

class CountError(UserError, argparse.ArgumentTypeError):
    """A malformed count (usable both as a UserError and as an argparse type error)."""


_SUFFIX = {"K": 10**3, "M": 10**6, "G": 10**9, "B": 10**9, "T": 10**12}


def parse_count(text: str | int | float) -> int:
    """'300M', '1.5B', '250k', '1e6', '1_000_000' -> an int (decimal suffixes, exact).

    The one parser of token, byte and document counts: a fraction of a unit is an error,
    never rounded."""
    if isinstance(text, bool):
        raise CountError(f"{text!r} is not a count like 5M, 250k or 1000000")
    if isinstance(text, int):
        return text
    s = str(text).strip().upper().replace("_", "").replace(",", "")
    mult = 1
    if s and s[-1] in _SUFFIX:
        mult, s = _SUFFIX[s[-1]], s[:-1]
    try:
        value = Decimal(s) * mult
    except InvalidOperation:
        raise CountError(f"{text!r} is not a count like 5M, 250k or 1000000") from None
    if not value.is_finite() or value != value.to_integral_value():
        raise CountError(f"{text!r} is not a whole number (write e.g. 1500 or 1.5K)")
    return int(value)


# ----------------------------------------------------------------------------- fields

def option(default: Any = dataclasses.MISSING, *, help: str, choices: Iterable | None = None,
           min: float | None = None, max: float | None = None, above: float | None = None,
           below: float | None = None,
           flag: str | None = None, short: str | None = None, kind: str | None = None,
           count: bool = False, default_text: str | None = None, metavar: str | None = None,
           aliases: tuple[str, ...] = (), false_aliases: tuple[str, ...] = (),
           nargs: str | None = None, group: str | None = None,
           factory: Any = None, cli: bool = True, required: bool = False,
           negatable: bool = True) -> Any:
    """A dataclass field with command-line metadata.

    min/max: inclusive bounds; above/below: exclusive bounds. kind: 'ar' or 'dlm' when the option
    only applies to that model kind. count: parsed by `parse_count` (5M, 250k). default_text:
    how --help shows a default that is computed elsewhere. false_aliases: hidden extra flags
    that set a boolean to False (e.g. --quiet for --no-progress). cli=False: not an option.
    required: a required flag although the field has a default (fields without a default are
    required anyway). negatable=False: a boolean switch without a --no- form (--overwrite)."""
    meta = {"help": help, "choices": tuple(choices) if choices is not None else None,
            "min": min, "max": max, "above": above, "below": below, "flag": flag,
            "short": short, "kind": kind,
            "count": count, "default_text": default_text, "metavar": metavar,
            "aliases": aliases, "false_aliases": false_aliases, "nargs": nargs,
            "group": group, "cli": cli, "required": required, "negatable": negatable}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def cli_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", False)]


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _base_type(cls: type, f: dataclasses.Field) -> tuple[type, bool]:
    """(scalar type, may be None) of a field, resolving string annotations."""
    t = _hints(cls)[f.name]
    optional = False
    if isinstance(t, types.UnionType) or typing.get_origin(t) is typing.Union:
        args = [a for a in typing.get_args(t) if a is not type(None)]
        optional = len(args) < len(typing.get_args(t))
        t = args[0]
    origin = typing.get_origin(t)
    if origin in (list, tuple):
        t = typing.get_args(t)[0]
    return t, optional


def _show(v: Any) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v))
    return str(v)


def _required(f: dataclasses.Field) -> bool:
    return f.metadata.get("required") or (f.default is dataclasses.MISSING
                                           and f.default_factory is dataclasses.MISSING)


def _help(f: dataclasses.Field, default_override: Any = dataclasses.MISSING,
          default_text: str | None = None) -> str:
    m = f.metadata
    text = m["help"]
    default = f.default if default_override is dataclasses.MISSING else default_override
    if _required(f) and default_override is dataclasses.MISSING:
        tail = "required"
    elif default_text:
        tail = f"default: {default_text}"
    elif m.get("default_text"):
        tail = f"default: {m['default_text']}"
    elif default is None or default is dataclasses.MISSING:
        tail = ""
    else:
        tail = f"default: {_show(default)}"
    bounds = _bounds_text(m)
    if m.get("choices") and m.get("metavar"):
        bounds = ("choices: " + ", ".join(map(str, m["choices"]))
                  + (f"; {bounds}" if bounds else ""))
    parts = [p for p in (tail, bounds) if p]
    if parts:
        text = f"{text} ({'; '.join(parts)})"
    return text.replace("%", "%%")


def _bounds_text(m: dict) -> str:
    lo = ">= " + _show(m["min"]) if m.get("min") is not None else None
    if m.get("above") is not None:
        lo = "> " + _show(m["above"])
    hi = "<= " + _show(m["max"]) if m.get("max") is not None else None
    if m.get("below") is not None:
        hi = "< " + _show(m["below"])
    return " and ".join(p for p in (lo, hi) if p)


class _Store(argparse.Action):
    """store, and remember that the user set this option."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        _mark(namespace, self.dest)


class _Bool(argparse.BooleanOptionalAction):
    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, values, option_string)
        _mark(namespace, self.dest)


class _Set(argparse.Action):
    """A flag without a value that sets a boolean to `value` and marks it as given."""

    value: bool

    def __init__(self, option_strings, dest, **kw):
        kw.pop("nargs", None)
        super().__init__(option_strings, dest, nargs=0, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, self.value)
        _mark(namespace, self.dest)


class _True(_Set):
    """A switch that sets a boolean to True (no --no- form)."""

    value = True


class _False(_Set):
    """A hidden alias that sets a boolean to False (e.g. --quiet = --no-progress)."""

    value = False


def _mark(namespace: argparse.Namespace, dest: str) -> None:
    seen = set(getattr(namespace, _EXPLICIT, ()))
    seen.add(dest)
    setattr(namespace, _EXPLICIT, seen)


def explicit(args: argparse.Namespace) -> set[str]:
    """Fields the user set on the command line."""
    return set(getattr(args, _EXPLICIT, ()))


def _converter(cls: type, f: dataclasses.Field):
    t, _ = _base_type(cls, f)
    if f.metadata.get("count"):
        return parse_count
    if t is int:
        def to_int(text: str) -> int:
            try:
                return int(text)
            except ValueError:
                pass
            try:  # 1e3 and 2_000 are fine; 1.5 is not a whole number
                d = Decimal(text.replace("_", ""))
                if d.is_finite() and d == d.to_integral_value():
                    return int(d)
            except InvalidOperation:
                pass
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
        return to_int
    if t is float:
        def to_float(text: str) -> float:
            try:
                return float(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        return to_float
    return str


def add_arguments(parser: argparse.ArgumentParser | Any, cls: type, *,
                  defaults: dict[str, Any] | None = None,
                  groups: dict[str, Any] | None = None,
                  texts: dict[str, str] | None = None, unset: bool = False) -> None:
    """One argparse option per field of `cls` (in field order).

    defaults: used (and shown) instead of the field defaults. texts: how --help shows the
    default of a field whose default is decided elsewhere. unset: leave an option the user did
    not give as None in the namespace (--help still shows the field's default); for commands
    that layer several sources (`codediff train`: preset < TOML < command line).
    groups: metadata group name -> argument group to put the field in."""
    defaults = defaults or {}
    for f in cli_fields(cls):
        m = f.metadata
        target = (groups or {}).get(m.get("group"), parser)
        names = [s for s in (m.get("short"),) if s] + [flag_of(f), *m.get("aliases", ())]
        required = _required(f)
        default = defaults.get(f.name, dataclasses.MISSING)
        real = (f.default if f.default is not dataclasses.MISSING
                else f.default_factory() if f.default_factory is not dataclasses.MISSING
                else None)
        value_default = real if default is dataclasses.MISSING else default
        if unset:
            value_default = None
        t, _ = _base_type(cls, f)
        help_ = _help(f, default, (texts or {}).get(f.name))
        if t is bool:
            action = _Bool if m.get("negatable", True) else _True
            target.add_argument(*names, dest=f.name, action=action, default=value_default,
                                help=help_)
            for alias in m.get("false_aliases", ()):
                target.add_argument(alias, dest=f.name, action=_False, help=argparse.SUPPRESS)
            continue
        kw: dict[str, Any] = {"dest": f.name, "action": _Store, "help": help_,
                              "type": _converter(cls, f)}
        if required:
            kw["required"] = True
        else:
            kw["default"] = value_default
        if m.get("choices"):
            if m.get("metavar"):
                kw["metavar"] = m["metavar"]
            else:
                kw["choices"] = m["choices"]
        elif m.get("metavar"):
            kw["metavar"] = m["metavar"]
        if m.get("nargs"):
            kw["nargs"] = m["nargs"]
        target.add_argument(*names, **kw)


def check_value(cls: type, f: dataclasses.Field, value: Any, where: str | None = None) -> Any:
    """Check (and for TOML values, convert) one value; returns it. `where` names its source
    (default: the flag)."""
    m = f.metadata
    name = where or flag_of(f)
    t, optional = _base_type(cls, f)
    if value is None:
        if optional or f.default is None:
            return None
        raise UserError(f"{name}: needs a value")
    if isinstance(value, (list, tuple)) and m.get("nargs"):
        return [check_value(cls, f, v, where) for v in value]
    if m.get("count") and not isinstance(value, bool):
        value = parse_count(value) if not isinstance(value, int) else value
    if t is bool:
        if not isinstance(value, bool):
            raise UserError(f"{name} {value!r}: must be true or false")
    elif t is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise UserError(f"{name} {value!r}: must be a whole number")
    elif t is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{name} {value!r}: must be a number")
        value = float(value)
        if value != value:
            raise UserError(f"{name} nan: must be a number")
    elif t is str and not isinstance(value, str):
        raise UserError(f"{name} {value!r}: must be a text value")
    if m.get("choices") and value not in m["choices"]:
        raise UserError(f"{name} {value}: choose one of {', '.join(map(str, m['choices']))}")
    if m.get("min") is not None and value < m["min"]:
        raise UserError(f"{name} {value}: must be at least {_show(m['min'])}")
    if m.get("above") is not None and value <= m["above"]:
        raise UserError(f"{name} {value}: must be above {_show(m['above'])}")
    if m.get("max") is not None and value > m["max"]:
        raise UserError(f"{name} {value}: must be at most {_show(m['max'])}")
    if m.get("below") is not None and value >= m["below"]:
        raise UserError(f"{name} {value}: must be below {_show(m['below'])}")
    return value


def check(obj: Any) -> None:
    """Check every command-line field of a settings object against its metadata."""
    for f in cli_fields(type(obj)):
        setattr(obj, f.name, check_value(type(obj), f, getattr(obj, f.name)))


def values_of(cls: type, args: argparse.Namespace, only: Iterable[str] | None = None
              ) -> dict[str, Any]:
    """The namespace's values of `cls`'s fields (all, or those named in `only`)."""
    names = {f.name for f in cli_fields(cls)}
    if only is not None:
        names &= set(only)
    return {n: getattr(args, n) for n in names if hasattr(args, n)}


def from_args(cls: type, args: argparse.Namespace, **extra: Any) -> Any:
    """Build and check `cls` from parsed arguments (+ extra fields)."""
    values = values_of(cls, args)
    for f in cli_fields(cls):
        if f.name in values:
            values[f.name] = check_value(cls, f, values[f.name])
    try:
        return cls(**values, **extra)
    except (TypeError, ValueError) as e:
        raise UserError(str(e)) from None


def check_kind(cls: type, set_by_user: Iterable[str], model_kind: str, model: str) -> None:
    """Refuse options the user set that only apply to the other model kind."""
    wrong = [f for f in cli_fields(cls)
             if f.name in set(set_by_user) and f.metadata.get("kind") not in (None, model_kind)]
    if not wrong:
        return
    flags = ", ".join(flag_of(f) for f in wrong)
    other = wrong[0].metadata["kind"]
    verb = "applies" if len(wrong) == 1 else "apply"
    article = "an" if model_kind[0] in "aeiou" else "a"
    raise UserError(f"{flags} {verb} to {other} models only, and {model} is {article} "
                    f"{model_kind} model; drop {flags}")


# ----------------------------------------------------------------------------- paths

def check_out(path: str | os.PathLike, *, folder: bool, flag: str = "--out",
              overwrite: bool | None = None, reusable: bool = False) -> Path:
    """Check an output path before any work: its nearest existing folder is writable, nothing
    on the way is a file, and what is there already has the expected kind.

    The overwrite rule (README "Outputs"): a command's rerun with the same settings resumes or
    finds its output complete (`reusable=True`: train, generate, evaluate decide that
    themselves); any other existing output (an empty folder aside) needs --overwrite
    (`overwrite` False refuses it; None: this command has no --overwrite and never replaces)."""
    p = Path(path)
    want = "folder" if folder else "file"
    if str(path) == "" or p.name in ("", ".", ".."):
        raise UserError(f"{flag} {path!r}: give a {want} name")
    if p.exists() or p.is_symlink():
        if folder and not p.is_dir():
            raise UserError(f"{flag} {path}: is a file, but a folder is expected; "
                            "choose another path")
        if not folder and p.is_dir():
            raise UserError(f"{flag} {path}: is a folder; give a file name inside it")
        empty_folder = folder and not any(p.iterdir())
        if not reusable and overwrite is not True and not empty_folder:
            fix = "pass --overwrite to replace it or " if overwrite is False else ""
            raise UserError(f"{flag} {path}: already exists; {fix}choose another path")
    parent = p.parent
    while not parent.exists():
        if parent.is_symlink():
            raise UserError(f"{flag} {path}: {parent} is a broken link; choose another path")
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{flag} {path}: {parent} is a file, not a folder; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK) or not _can_create_in(parent):
        raise UserError(f"{flag} {path}: cannot write in {parent}; choose a writable path")
    return p


def _can_create_in(folder: Path) -> bool:
    # os.access says yes to root on read-only or virtual file systems (/sys, /proc): try it
    try:
        probe = tempfile.mkdtemp(prefix=".codediff-probe-", dir=folder)
    except OSError:
        return False
    os.rmdir(probe)
    return True


_DEVICE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")


def check_device(device: str | None, flag: str = "--device") -> None:
    """`cpu`, `cuda`, `cuda:N` or `mps`, and the device must exist (imports torch)."""
    if device is None or device == "auto":
        return
    if not _DEVICE.match(device):
        raise UserError(f"{flag} {device}: choose cpu, cuda or cuda:N (or leave it out to pick "
                        "automatically)")
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"{flag} {device}: no CUDA GPU is visible on this machine; use "
                            f"{flag} cpu or leave {flag} out")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise UserError(f"{flag} {device}: only {torch.cuda.device_count()} GPU(s) are "
                            "visible; choose a smaller index")
    if device == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"{flag} mps: not available here; use {flag} cpu")
