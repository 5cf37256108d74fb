"""MBPP+ quirks, kept with the task rather than in the judge.

1. JSON cannot hold tuples, sets or complex numbers, so EvalPlus stores some tasks' inputs as lists
   or strings; `deserialize_inputs` turns them back the way EvalPlus does before anything runs.
2. A few tasks have outputs that plain equality cannot judge; `ORACLES` names the comparison the
   sandbox uses for them (see harness/checks.py for the comparison kinds).
"""

from __future__ import annotations

from typing import Any


def _tuples(x: list) -> tuple:
    return tuple(x)


def _deep_tuple(x: Any) -> Any:
    return tuple(_deep_tuple(i) for i in x) if isinstance(x, list) else x


# Each transform maps one stored input (the argument list) to the real one.
_TRANSFORMS = {
    "args_to_tuples": lambda inp: [_tuples(a) for a in inp],
    "args_to_tuple_lists": lambda inp: [[_tuples(b) for b in a] for a in inp],
    "first_arg_tuple_list": lambda inp: [[_tuples(b) for b in inp[0]]] + inp[1:],
    "second_arg_tuple": lambda inp: [inp[0], _tuples(inp[1])] + inp[2:],
    "first_arg_sets": lambda inp: [[set(i) if isinstance(i, list) and i else {} for i in inp[0]]],
    "float_complex": lambda inp: (float(inp[0]), complex(inp[1])),
    "first_arg_tuple": lambda inp: [_tuples(inp[0])] + inp[1:],
    "args_to_tuples_of_tuples": lambda inp: [_tuples([_tuples(b) for b in a]) for a in inp],
    "first_arg_mixed_tuple": lambda inp: [
        _tuples([_tuples(i) if isinstance(i, list) else i for i in inp[0]])],
    "dict_values_tuples": lambda inp: [{k: _tuples(v) for k, v in inp[0].items()}] + inp[1:],
    "complex_arg": lambda inp: [complex(inp[0])],
    "deep_tuple": _deep_tuple,
}

_TASKS = {
    "args_to_tuples": [2, 116, 132, 143, 222, 261, 273, 394, 399, 421, 424, 429, 470, 560, 579,
                       596, 616, 630, 726, 740, 744, 809],
    "args_to_tuple_lists": [63, 64, 70, 94, 120, 237, 272, 299, 400, 409, 417, 438, 473, 614,
                            780],
    "first_arg_tuple_list": [75, 413, 444, 753],
    "second_arg_tuple": [106, 750],
    "first_arg_sets": [115],
    "float_complex": [124],
    "first_arg_tuple": [250, 307, 405, 446, 617, 720, 763, 808],
    "args_to_tuples_of_tuples": [259, 401, 445],
    "first_arg_mixed_tuple": [278],
    "dict_values_tuples": [722],
    "complex_arg": [252],
    "deep_tuple": [580, 615, 791],
}
_BY_TASK = {n: name for name, ns in _TASKS.items() for n in ns}


def deserialize_inputs(task_id: str, inputs: list) -> list:
    name = _BY_TASK.get(int(str(task_id).split("/")[-1]))
    if name is None:
        return inputs
    fn = _TRANSFORMS[name]
    return [fn(inp) for inp in inputs]


_SURFACE_AREA = '''
import math
def oracle(base_edge, height):
    slant = math.sqrt((base_edge / 2) ** 2 + height ** 2)
    return round(base_edge ** 2 + 4 * (base_edge * slant) / 2)
'''

_DIGIT_DISTANCE = '''
def oracle(a, b):
    s, t = str(a), str(b)
    width = max(len(s), len(t))
    s, t = s.zfill(width), t.zfill(width)
    return sum(abs(int(x) - int(y)) for x, y in zip(s, t))
'''

# entry point -> comparison; see harness/checks.py
ORACLES: dict[str, dict] = {
    **{name: {"kind": "set_eq"} for name in (
        "similar_elements", "find_char_long", "common_in_nested_lists", "extract_singly",
        "larg_nnum", "intersection_array", "find_dissimilar", "Diff")},
    **{name: {"kind": "not_none"} for name in ("check_str", "text_match_three",
                                                "text_starta_endb")},
    "are_equivalent": {"kind": "any"},
    "sum_div": {"kind": "equal_or", "value": 0},
    "surface_Area": {"kind": "reference", "code": _SURFACE_AREA},
    "digit_distance_nums": {"kind": "reference", "code": _DIGIT_DISTANCE},
}
