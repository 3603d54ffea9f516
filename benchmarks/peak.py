"""Achievable matmul FLOP/s through XLA on this machine: the denominator of MFU.

Times ``jnp.dot`` of square N×N matrices (best of several calls, each waited for with
``block_until_ready``) for a few N, in float32 and bfloat16, on JAX's default backend.
A matmul of N×N by N×N is 2·N³ FLOPs. The best size's rate is the "peak" that
``train_step.py`` divides by; it is what XLA reaches on this machine, not the data
sheet's number.

Run: ``python benchmarks/peak.py [--sizes 512,1024,2048] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import sys

import common
import jax
import jax.numpy as jnp

CPU_SIZES = (256, 512, 1024, 2048)
ACCELERATOR_SIZES = (1024, 2048, 4096, 8192)


def default_sizes() -> tuple[int, ...]:
    return CPU_SIZES if jax.default_backend() == "cpu" else ACCELERATOR_SIZES


def matmul_rate(size: int, dtype: str, repeats: int = 5) -> dict[str, float]:
    """FLOP/s of one [N, N] @ [N, N] product in ``dtype`` (f32 accumulation for bf16)."""
    keys = jax.random.split(jax.random.key(size), 2)
    left, right = (jax.random.normal(key, (size, size), jnp.float32).astype(dtype)
                   for key in keys)
    product = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
    timing = common.best_of(lambda: product(left, right).block_until_ready(),
                            repeats=repeats, warmup=2)
    flops = 2.0 * size ** 3
    return {"size": size, "flops": flops, "best_s": timing["best_s"],
            "flops_per_s": flops / timing["best_s"],
            "median_flops_per_s": flops / timing["median_s"]}


def measure_peak(dtype: str = "float32", sizes: tuple[int, ...] | None = None,
                 repeats: int = 5) -> dict:
    """The best matmul FLOP/s over ``sizes`` (default: a few per backend).

    Args:
      dtype: "float32" or "bfloat16".
      sizes: square matrix sizes N to try.
      repeats: timed calls per size (after two warm-ups).

    Returns:
      {"dtype", "peak_flops_per_s", "best_size", "by_size": [per-size dicts]}.
    """
    by_size = [matmul_rate(size, dtype, repeats) for size in sizes or default_sizes()]
    best = max(by_size, key=lambda entry: entry["flops_per_s"])
    return {"dtype": dtype, "peak_flops_per_s": best["flops_per_s"],
            "best_size": best["size"], "by_size": by_size}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="", help="comma-separated N (default per backend)")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--repeats", type=int, default=5)
    common.add_json_flag(parser)
    args = parser.parse_args(argv)
    sizes = tuple(int(size) for size in args.sizes.split(",") if size) or None
    machine = common.describe_machine()
    print(common.machine_line(machine))
    results = [measure_peak(dtype, sizes, args.repeats) for dtype in args.dtypes.split(",")]
    rows = [(result["dtype"], entry["size"], entry["flops_per_s"] / 1e9,
             entry["median_flops_per_s"] / 1e9, "← peak" if
             entry["size"] == result["best_size"] else "")
            for result in results for entry in result["by_size"]]
    common.print_table("Matmul throughput through XLA (absolute: this machine only)",
                       ["dtype", "N", "best GFLOP/s", "median GFLOP/s", ""], rows)
    common.write_json(args.json, {"machine": machine, "peaks": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
