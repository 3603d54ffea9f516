"""The matmuls of a compiled XLA program, each timed by itself: what a step cannot beat.

``census(hlo_text)`` reads the text of a compiled program (``jitted.lower(...).compile()
.as_text()``) and lists every ``dot`` it executes: the operands' shapes and physical
layouts, the dimension numbers, how many times a step runs it (fusions, calls and while
loops with a known trip count followed from ENTRY) and its FLOPs. It also names the
instructions the runtime executes that hold a dot (a ``dot``, or a fusion such as
``ynn_fusion.12`` around one), which is what a profile's op names are.

``time_alone(entry)`` runs one such dot by itself, jitted, on random operands of the same
physical layouts, best of a few calls; ``matmul_floor(census(...))`` times them all. The
sum over the census is the step's *matmul floor*: the time its matmuls take when nothing
else runs, at the rate this machine's matmul library reaches for those shapes. The floor
bounds the MFU a step can have (model FLOPs ÷ floor ÷ peak) whatever is done about
everything that is not a matmul.

Run on its own: ``python benchmarks/matmuls.py program.hlo`` prints the census and floor.
"""

from __future__ import annotations

import collections
import functools
import math
import re
import sys
from collections.abc import Iterator

_COMPUTATION = re.compile(r"^(ENTRY )?%(\S+) .*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = (.*)$")
_ARRAY = re.compile(r"^(\w+)\[([\d,]*)\](?:\{([\d,]*)[^}]*\})?")
_DIMS = re.compile(r"(lhs_batch_dims|rhs_batch_dims|lhs_contracting_dims|"
                   r"rhs_contracting_dims)=\{([\d,]*)\}")
_CALLEES = re.compile(r"(?:calls|to_apply|body|condition)=%([\w.\-]+)")
_BRANCHES = re.compile(r"(?:branch_computations|called_computations)=\{([^}]*)\}")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part)


def _array(text: str) -> tuple[str, tuple[int, ...], tuple[int, ...]] | None:
    """(dtype, dims, minor_to_major) of an array shape ``f32[4,8]{1,0}``; None for tuples."""
    match = _ARRAY.match(text)
    if not match:
        return None
    dims = _ints(match.group(2))
    layout = _ints(match.group(3) or "") or tuple(reversed(range(len(dims))))
    return match.group(1), dims, layout


def _operands(rest: str) -> tuple[str, list[str]]:
    """Opcode and operand names of an instruction's text after its shape."""
    shape_end = _skip_shape(rest)
    opcode, _, tail = rest[shape_end:].strip().partition("(")
    depth = 1
    for index, char in enumerate(tail):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0:
            return opcode.strip(), re.findall(r"%([\w.\-]+)", tail[:index])
    return opcode.strip(), re.findall(r"%([\w.\-]+)", tail)


def _skip_shape(text: str) -> int:
    """Index just past the result shape at the start of ``text`` (arrays or tuples)."""
    depth = 0
    for index, char in enumerate(text):
        if char in "({[":
            depth += 1
        elif char in ")}]":
            depth -= 1
        elif char == " " and depth == 0:
            return index
    return len(text)


def _computations(hlo_text: str) -> Iterator[tuple[str, bool, list[str]]]:
    """(name, is_entry, instruction lines) of each computation in the text."""
    name, entry, lines = None, False, []
    for line in hlo_text.splitlines():
        match = _COMPUTATION.match(line)
        if match and name is None:
            name, entry, lines = match.group(2), bool(match.group(1)), []
        elif line.startswith("}") and name is not None:
            yield name, entry, lines
            name = None
        elif name is not None:
            lines.append(line)


def census(hlo_text: str) -> dict:
    """Every dot a step of the compiled program runs.

    Returns:
      {"dots": [{"lhs", "rhs" (dtype, dims, minor_to_major), "dims" {lhs_batch_dims, ...},
      "count", "flops"} per distinct dot, most FLOPs first], "ops": names of the executed
      instructions that hold a dot, "flops": total dot FLOPs, "unknown_trip_counts": while
      loops counted once because the text gives no trip count}.
    """
    dots, edges, holders, entry = {}, collections.defaultdict(list), {}, None
    unknown_trips = []
    for name, is_entry, lines in _computations(hlo_text):
        entry = name if is_entry else entry
        shapes, found = {}, []
        for line in lines:
            match = _INSTRUCTION.match(line)
            if not match:
                continue
            instruction, rest = match.groups()
            shape = _array(rest)
            if shape:
                shapes[instruction] = shape
            opcode, operands = _operands(rest)
            if opcode == "dot":
                dims = {key: _ints(value) for key, value in _DIMS.findall(rest)}
                found.append((shapes[operands[0]], shapes[operands[1]], dims, shape))
                holders.setdefault(name, set()).add(instruction)
            callees = _CALLEES.findall(rest) + [
                callee.strip().lstrip("%") for group in _BRANCHES.findall(rest)
                for callee in group.split(",") if callee.strip()]
            trips = _TRIP_COUNT.search(rest)
            times = int(trips.group(1)) if opcode == "while" and trips else 1
            for callee in callees:
                edges[name].append((callee, times, instruction, opcode))
                unknown_trips.append(opcode == "while" and not trips)
        dots[name] = found
    if entry is None:
        raise ValueError("no ENTRY computation in the HLO text")

    runs: collections.Counter = collections.Counter()
    ops: set[str] = set()

    @functools.cache
    def holds_dot(computation: str) -> bool:
        return bool(dots.get(computation)) or any(
            holds_dot(callee) for callee, *_ in edges.get(computation, ()))

    def count(computation: str, times: int, executed: bool) -> None:
        """Adds the runs of ``computation`` and its callees. ``executed``: its instructions
        are the runtime's ops (ENTRY and the bodies of while, call and conditional; not
        a fusion's or a reduction's computation, whose caller is the op)."""
        runs[computation] += times
        if executed:
            ops.update(holders.get(computation, ()))
        for callee, multiple, instruction, opcode in edges.get(computation, ()):
            nested = executed and opcode in ("while", "call", "conditional")
            count(callee, times * multiple, nested)
            if executed and not nested and holds_dot(callee):
                ops.add(instruction)

    count(entry, 1, True)
    merged: dict = {}
    for computation, found in dots.items():
        for lhs, rhs, dims, out in found:
            key = (lhs, rhs, tuple(sorted(dims.items())))
            entry_dict = merged.setdefault(key, {"lhs": lhs, "rhs": rhs, "dims": dims,
                                                 "out": out, "count": 0,
                                                 "flops": _flops(lhs, rhs, dims)})
            entry_dict["count"] += runs[computation]
    listed = sorted((d for d in merged.values() if d["count"]),
                    key=lambda d: -d["flops"] * d["count"])
    return {"dots": listed, "ops": sorted(ops),
            "flops": sum(d["flops"] * d["count"] for d in listed),
            "unknown_trip_counts": sum(unknown_trips)}


def _flops(lhs, rhs, dims) -> float:
    """2 · batch · M · K · N of a dot."""
    _, left, _ = lhs
    _, right, _ = rhs
    batch = math.prod(left[i] for i in dims.get("lhs_batch_dims", ()))
    contract = math.prod(left[i] for i in dims.get("lhs_contracting_dims", ()))
    free_left = math.prod(left) // max(batch * contract, 1)
    free_right = math.prod(right) // max(
        batch * math.prod(right[i] for i in dims.get("rhs_contracting_dims", ())), 1)
    return 2.0 * batch * contract * free_left * free_right


def time_alone(entry: dict, repeats: int = 5) -> float:
    """Best seconds of one call of the dot, jitted by itself, operands in their layouts."""
    import common
    import jax
    import jax.numpy as jnp

    def physical(shape, key):
        dtype, dims, minor_to_major = shape
        order = tuple(reversed(minor_to_major))       # major-to-minor: row-major storage
        stored = jax.random.normal(key, tuple(dims[i] for i in order), jnp.float32)
        return stored.astype(dtype_of(dtype)), order

    def dtype_of(name):
        return {"f32": jnp.float32, "bf16": jnp.bfloat16, "f16": jnp.float16,
                "f64": jnp.float64}.get(name, jnp.float32)

    keys = jax.random.split(jax.random.key(0), 2)
    (left, left_order), (right, right_order) = (physical(entry["lhs"], keys[0]),
                                                physical(entry["rhs"], keys[1]))
    dims = entry["dims"]
    numbers = ((dims.get("lhs_contracting_dims", ()), dims.get("rhs_contracting_dims", ())),
               (dims.get("lhs_batch_dims", ()), dims.get("rhs_batch_dims", ())))
    out_dtype = dtype_of(entry["out"][0]) if entry.get("out") else None

    def product(a, b):                      # back to the logical dimension order, then dot
        a = jnp.transpose(a, tuple(left_order.index(i) for i in range(a.ndim)))
        b = jnp.transpose(b, tuple(right_order.index(i) for i in range(b.ndim)))
        return jax.lax.dot_general(a, b, numbers, preferred_element_type=out_dtype)

    run = jax.jit(product)
    return common.best_of(lambda: run(left, right).block_until_ready(),
                          repeats=repeats, warmup=2)["best_s"]


def matmul_floor(found: dict, repeats: int = 5) -> dict:
    """A ``census`` with each distinct dot timed alone ("alone_s") and their sum weighted by
    runs per step ("floor_s")."""
    for entry in found["dots"]:
        entry["alone_s"] = time_alone(entry, repeats)
    found["floor_s"] = sum(entry["alone_s"] * entry["count"] for entry in found["dots"])
    return found


def describe(entry: dict) -> str:
    """``f32[1024,512] · f32[512,512] contract [1]/[0]``: operands (" col" where a layout is
    not row-major), contracting dimensions, and batch dimensions if any."""
    def text(shape):
        dtype, dims, minor_to_major = shape
        layout = "" if minor_to_major == tuple(reversed(range(len(dims)))) else " col"
        return f"{dtype}[{','.join(map(str, dims))}]{layout}"
    dims = entry["dims"]
    return (f"{text(entry['lhs'])} · {text(entry['rhs'])} contract "
            f"{list(dims.get('lhs_contracting_dims', ()))}/"
            f"{list(dims.get('rhs_contracting_dims', ()))}"
            + (f" batch {list(dims['lhs_batch_dims'])}" if dims.get("lhs_batch_dims") else ""))


def main(argv: list[str]) -> int:
    import common

    with open(argv[0]) as handle:
        found = matmul_floor(census(handle.read()))
    rows = [(entry["count"], describe(entry), entry["flops"] / 1e9, entry["alone_s"] * 1e3,
             entry["flops"] / entry["alone_s"] / 1e9, entry["count"] * entry["alone_s"] * 1e3)
            for entry in found["dots"]]
    common.print_table(
        f"matmul floor {found['floor_s'] * 1e3:.0f} ms for {found['flops'] / 1e9:.1f} GFLOP",
        ["runs", "dot", "GFLOP", "ms alone", "GFLOP/s", "ms per step"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
