"""Turn raw model output into the program that gets judged, with tree-sitter.

Model output is messy: markdown fences, chat chatter before or after the code, test code and
`print` calls at top level, a half-written last function where generation stopped. The sanitiser
1. takes the code out of markdown fences (the block that defines the entry point, else the longest);
2. if the program does not parse, cuts the completion at the task's first stop sequence, then at
   the first line tree-sitter cannot parse;
3. keeps imports and the top-level definitions (functions, classes, assignments) reachable from the
   entry point, the names the tests use and the prompt's own definitions; drops other top-level
   statements (`print(...)`, `assert`, `if __name__ == "__main__":` blocks, stray expressions).
A program that already is clean comes out with the same meaning.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from functools import lru_cache

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
_IMPORT_TYPES = {"import_statement", "import_from_statement", "future_import_statement"}


@lru_cache(maxsize=1)
def _parser():
    import tree_sitter_python
    from tree_sitter import Language, Parser

    return Parser(Language(tree_sitter_python.language()))


@dataclass
class Sanitized:
    program: str
    changed: bool
    notes: list[str]


def extract_fenced(text: str, entry_point: str = "") -> str | None:
    """The code inside markdown fences, or None when there are none."""
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(text)]
    if not blocks:
        return None
    code = [b for lang, b in blocks if lang in ("", "python", "py", "python3")] or \
        [b for _, b in blocks]
    if entry_point:
        pat = re.compile(rf"^\s*(async\s+)?def\s+{re.escape(entry_point)}\s*\(", re.M)
        with_entry = [b for b in code if pat.search(b)]
        if with_entry:
            return with_entry[0]
    return max(code, key=len)


def _parses(src: str) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid escapes etc. are the sample's business
        try:
            compile(src, "<sanitize>", "exec")
        except (SyntaxError, ValueError):
            return False
    return True


def _cut_at_stop(text: str, stops: list[str]) -> str:
    cut = len(text)
    for s in stops:
        i = text.find(s)
        if i != -1:
            cut = min(cut, i)
    return text[:cut]


def _cut_at_first_error(src: str) -> str:
    """Longest prefix made of whole lines before the first top-level statement that fails."""
    tree = _parser().parse(src.encode())
    first_bad = None
    for node in tree.root_node.children:
        if node.type == "ERROR" or node.has_error:
            first_bad = node.start_byte
            break
    if first_bad is None:
        return src
    prefix = src.encode()[:first_bad].decode(errors="ignore")
    lines = prefix.splitlines(keepends=True)
    while lines and not _parses("".join(lines)):
        lines.pop()
    return "".join(lines)


def _identifiers(node) -> set[str]:
    out: set[str] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if n.type == "identifier":
            out.add(n.text.decode())
        stack.extend(n.children)
    return out


def _defined_names(node) -> set[str]:
    if node.type == "decorated_definition":
        node = node.child_by_field_name("definition") or node.children[-1]
    if node.type in ("function_definition", "class_definition"):
        name = node.child_by_field_name("name")
        return {name.text.decode()} if name is not None else set()
    if node.type == "expression_statement" and node.children:
        first = node.children[0]
        if first.type in ("assignment", "augmented_assignment"):
            left = first.child_by_field_name("left")
            return _identifiers(left) if left is not None else set()
    return set()


def _is_main_guard(node) -> bool:
    if node.type != "if_statement":
        return False
    cond = node.child_by_field_name("condition")
    return cond is not None and "__name__" in cond.text.decode()


def keep_needed(src: str, roots: set[str], keep_names: set[str]) -> str:
    """Imports + definitions reachable from `roots`; `keep_names` are kept whatever happens."""
    tree = _parser().parse(src.encode())
    nodes = [n for n in tree.root_node.children if n.type != "comment"]
    defs: dict[str, list] = {}
    for n in nodes:
        for name in _defined_names(n):
            defs.setdefault(name, []).append(n)
    if not (roots & set(defs)):
        roots = set(defs)  # entry point not found: keep every definition
    wanted, todo = set(), list(roots | (keep_names & set(defs)))
    while todo:
        name = todo.pop()
        if name in wanted or name not in defs:
            continue
        wanted.add(name)
        for n in defs[name]:
            todo.extend(_identifiers(n) - wanted)
    kept = []
    for n in nodes:
        if n.type in _IMPORT_TYPES:
            kept.append(n)
        elif _is_main_guard(n):
            continue
        elif _defined_names(n) & wanted:
            kept.append(n)
        elif n.type == "expression_statement" and n.children and \
                n.children[0].type == "string" and not kept:
            kept.append(n)  # a module docstring (the MBPP+ prompt) is harmless
    return "\n".join(n.text.decode() for n in kept) + "\n"


def sanitize(text: str, *, entry_point: str, prompt: str = "", completion: bool = True,
             stop: list[str] | None = None, test_names: set[str] | None = None) -> Sanitized:
    """The program for one sample. `completion=True`: `text` continues `prompt`."""
    notes: list[str] = []
    body = text.replace("\r\n", "\n")
    fenced = extract_fenced(body, entry_point)
    if fenced is not None:
        notes.append("code taken from markdown fence")
        body = fenced
        # a fenced block is a whole function: prompt + block redefines it after the stub
        program = (prompt + "\n" + body) if (completion and prompt) else body
    else:
        program = prompt + body if completion else body
    if not _parses(program):
        cut = _cut_at_stop(body, stop or [])
        candidate = (prompt + cut if completion and fenced is None else
                     (prompt + "\n" + cut if completion else cut))
        if cut != body and _parses(candidate):
            notes.append("cut at stop sequence")
            program = candidate
        else:
            fixed = _cut_at_first_error(program)
            if fixed.strip() and _parses(fixed):
                notes.append("cut at first unparsable line")
                program = fixed
    if _parses(program):
        prompt_names: set[str] = set()
        if prompt and _parses(prompt + "\n    pass\n"):
            tree = _parser().parse((prompt + "\n    pass\n").encode())
            for n in tree.root_node.children:
                prompt_names |= _defined_names(n)
        roots = {entry_point} | (test_names or set())
        pruned = keep_needed(program, roots, prompt_names)
        if _parses(pruned):
            if pruned.strip() != program.strip():
                notes.append("dropped top-level statements not needed by the entry point")
            program = pruned
    return Sanitized(program=program, changed=program != (prompt + text if completion else text),
                     notes=notes)


def names_used(code: str) -> set[str]:
    """Identifiers a piece of test code refers to (to keep helpers the tests call directly)."""
    try:
        tree = _parser().parse(code.encode())
    except Exception:  # noqa: BLE001 - test code is trusted; be lenient
        return set()
    return _identifiers(tree.root_node)
