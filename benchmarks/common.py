"""What every benchmark shares: the machine's description, timing, memory, tables, JSON.

The scripts in ``benchmarks/`` are run by hand (``python benchmarks/NAME.py``), so this
module is imported as ``common`` from the scripts' own folder.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any


def cpu_model() -> str:
    """The processor's name from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> str:
    """The 1/5/15-minute load averages, as ``uptime`` prints them."""
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "n/a"


def describe_machine() -> dict[str, Any]:
    """Processor, cores, load, Python/JAX (and torch, if imported) versions, JAX devices."""
    import jax

    devices = jax.devices()
    machine = {
        "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "load_average": load_average(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": f"{len(devices)} × {devices[0].device_kind}",
    }
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        machine["torch"] = torch.__version__
        machine["torch_threads"] = torch.get_num_threads()
    return machine


def machine_line(machine: dict[str, Any]) -> str:
    """One Markdown line describing the machine, printed above every table."""
    return "Machine: " + ", ".join(f"{key} {value}" for key, value in machine.items())


def process_cpu_s() -> float:
    """CPU seconds used so far by every thread of this process (user + system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def best_of(run: Callable[[], Any], *, repeats: int, warmup: int = 1) -> dict[str, float]:
    """Seconds of ``run()`` (which must wait for its own result): best and median of repeats.

    Best-of-N is the least noisy estimate on a shared machine; the median shows the noise.
    ``cpu_s`` is the median CPU time of the process per repeat (all threads): divided by
    the wall time it says how many cores were busy, and it moves less than the wall time
    when other programs compete for the cores.
    """
    for _ in range(warmup):
        run()
    times, cpu_times = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), process_cpu_s()
        run()
        times.append(time.perf_counter() - start)
        cpu_times.append(process_cpu_s() - cpu_start)
    return {"best_s": min(times), "median_s": statistics.median(times),
            "cpu_s": statistics.median(cpu_times)}


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB.

    Reads VmHWM from /proc/self/status on Linux: ru_maxrss would also count the parent's
    memory for a child started by fork + exec (the kernel carries it across exec).
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024                  # kB -> MiB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20


def format_value(value: Any) -> str:
    """Numbers to 3 significant digits (integers as they are), None as 'n/a'."""
    if value is None:
        return "n/a"
    if isinstance(value, int):          # bool too
        return str(value)
    if isinstance(value, float):
        if value == 0 or 0.01 <= abs(value) < 1e5:
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        return f"{value:.3e}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table; cells go through format_value."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        lines.append("| " + " | ".join(format_value(cell) for cell in row) + " |")
    return "\n".join(lines)


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Prints a titled Markdown table and returns its text."""
    text = f"\n### {title}\n\n{markdown_table(headers, rows)}\n"
    print(text, flush=True)
    return text


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", metavar="PATH", default="",
                        help="also write the results as JSON to PATH")


def write_json(path: str, payload: dict[str, Any]) -> None:
    """Writes payload (plus nothing else) as indented JSON, creating the folder."""
    if not path:
        return
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "w") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True, default=str)
    print(f"wrote {path}")
