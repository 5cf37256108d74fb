"""The layers and the one namespace: what imports what, and what the wheel installs.

The judge (`codediff.harness`) and the reports (`codediff.reports`) read and write files only:
they import without torch and never reach into training or sampling. The wheel installs one
top-level package, `codediff`; the product's folders harness/, reports/ and tasks/ land inside it.
"""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from codediff.cli import COMMANDS

ROOT = Path(__file__).resolve().parent.parent

# codediff modules that need torch or belong to training / generation
HEAVY = ("codediff.train", "codediff.model", "codediff.objectives", "codediff.data",
         "codediff.generate", "codediff.backends", "codediff.likelihood",
         "codediff.checkpoints", "codediff.codechoice_score", "codediff.export",
         "codediff.rope_kernel", "codediff.corpus")


def _modules(package: str, folder: str) -> list[str]:
    return [f"{package}.{m.name}" for m in pkgutil.iter_modules([str(ROOT / folder)])]


def _imports_of(path: Path) -> set[str]:
    """Every module named by an import statement anywhere in the file (lazy imports too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def _is_heavy(name: str) -> bool:
    if name == "torch" or name.startswith("torch."):
        return True
    if name.startswith("codediff.sampling.") or name == "codediff.sampling":
        return True
    return any(name == h or name.startswith(h + ".") for h in HEAVY)


@pytest.mark.parametrize("folder", ["harness", "reports"])
def test_judge_and_reports_never_name_torch_training_or_sampling(folder):
    bad = {f"{p.name}: {n}" for p in sorted((ROOT / folder).glob("*.py"))
           for n in _imports_of(p) if _is_heavy(n)}
    assert not bad, f"{folder}/ imports heavy modules: {sorted(bad)}"


def test_judge_and_reports_import_without_torch():
    mods = (_modules("codediff.harness", "harness") + _modules("codediff.reports", "reports")
            + ["codediff.cli", "codediff.errors", "codediff.sampling", "codediff.tasks"])
    mods = [m for m in mods if not m.endswith("._zygote")]  # the sandbox's own interpreter
    code = ("import importlib, json, sys\n"
            f"for m in {mods!r}:\n    importlib.import_module(m)\n"
            "print(json.dumps(sorted(k for k in sys.modules if k == 'torch' "
            "or k.startswith(('torch.', 'codediff.train', 'codediff.model', "
            "'codediff.sampling.', 'codediff.generate', 'codediff.backends')))))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout) == []


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_help_is_torch_free(command):
    code = ("import sys\nfrom codediff.cli import main\n"
            f"try:\n    main([{command!r}, '--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'\nprint('ok')")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.rstrip().endswith("ok"), r.stderr[-2000:]


def test_the_wheel_installs_one_top_level_package(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "-q", "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = tmp_path.glob("codediff-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"codediff"}
    for must in ("codediff/harness/evaluate.py", "codediff/harness/_zygote.py",
                 "codediff/reports/render.py", "codediff/reports/templates/report.html",
                 "codediff/tasks/humaneval.toml", "codediff/tasks/quirks_mbpp_plus.py",
                 "codediff/hf_export/modeling_codediff.py", "codediff/sampling/__init__.py"):
        assert must in names, must
    # every source file of the four folders is in the wheel (a new subpackage must be listed
    # in pyproject's [tool.setuptools] packages)
    mapping = {"codediff": "codediff", "harness": "codediff/harness",
               "reports": "codediff/reports", "tasks": "codediff/tasks"}
    for folder, dest in mapping.items():
        for src in (ROOT / folder).rglob("*.py"):
            rel = src.relative_to(ROOT / folder).as_posix()
            if "__pycache__" not in rel:
                assert f"{dest}/{rel}" in names, f"{folder}/{rel} is missing from the wheel"
