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
import select
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Sequence
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


# --------------------------------------------------------------------------- workers
# A benchmark that compares implementations runs each in its own process (its own threads,
# compilation and peak memory) and times them in interleaved rounds, so that a change of
# load on a shared machine hits each alike. The parent talks to a worker over stdin/stdout.

PROTOCOL = "@@bench "           # prefix of the lines a worker answers its parent with


def time_round(step: Callable[[], Any], sync: Callable[[Any], Any], steps: int) -> dict:
    """Wall and process CPU seconds of ``steps`` calls, waiting for the last one."""
    start, cpu_start = time.perf_counter(), process_cpu_s()
    result = None
    for _ in range(steps):
        result = step()
    sync(result)
    return {"round_s": time.perf_counter() - start, "cpu_s": process_cpu_s() - cpu_start}


def _reply(message: dict) -> None:
    print(PROTOCOL + json.dumps(message), flush=True)


def serve(start: Callable[[], tuple[Callable, Callable]], steps: int,
          profile: Callable[[Callable], dict] | None = None) -> int:
    """The worker's side: builds (step, sync), times the first step, then answers commands.

    Replies {"first_step_s", "warmup_s"} (or {"error"}) when ready; then "round" -> time_round,
    "profile" -> profile(step) (or {} without one), anything else -> {"peak_rss_mib"} and exit.
    """
    try:
        step, sync = start()
        begin = time.perf_counter()
        sync(step())
        first = time.perf_counter() - begin
        warmup = time_round(step, sync, steps)["round_s"]     # may include a 2nd compile
    except Exception as error:    # e.g. torch.compile without a working C++ toolchain
        lines = str(error).strip().splitlines() or [""]
        _reply({"error": f"{type(error).__name__}: {lines[0][:160]}"})
        return 0
    _reply({"first_step_s": first, "warmup_s": warmup})
    for line in sys.stdin:
        if line.strip() == "round":
            _reply(time_round(step, sync, steps))
        elif line.strip() == "profile":              # {} where no profiler applies (torch)
            _reply(profile(step) if profile is not None else {})
        else:
            _reply({"peak_rss_mib": peak_rss_mib()})
            return 0
    return 0


class Worker:
    """A child process running ``argv``; ``ask`` sends a command and reads its reply."""

    def __init__(self, argv: list[str], env: dict[str, str], timeout: float):
        self.log = tempfile.TemporaryFile()          # noqa: SIM115 (closed by close())
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self.log, env=env, bufsize=0)
        self.timeout, self.pending = timeout, b""

    def ask(self, command: str = "") -> dict:
        """Sends ``command`` (none: waits for the first reply); failures become {"error"}."""
        if command:
            self.process.stdin.write(command.encode() + b"\n")
        deadline = time.monotonic() + self.timeout
        while b"\n" not in self.pending or not self.pending.startswith(PROTOCOL.encode()):
            if b"\n" in self.pending:                 # a library's own output: skip it
                self.pending = self.pending.split(b"\n", 1)[1]
                continue
            if not select.select([self.process.stdout], [], [],
                                 max(deadline - time.monotonic(), 0))[0]:
                self.close()
                return {"error": f"timed out after {self.timeout:.0f} s"}
            chunk = os.read(self.process.stdout.fileno(), 1 << 16)
            if not chunk:
                return {"error": f"worker exited {self.process.wait()}: {self._tail()}"}
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return json.loads(line[len(PROTOCOL):])

    def _tail(self) -> str:
        self.log.seek(0)
        lines = self.log.read().decode(errors="replace").strip().splitlines() or ["no output"]
        return lines[-1][:200]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.log.close()


def run_interleaved(workers: Sequence[tuple[dict, Callable[[], Worker]]], rounds: int,
                    profile: bool = False) -> list[dict]:
    """Starts the workers one after another (compilations never overlap), then times rounds.

    Each entry is (result dict to fill, function starting its Worker). Rounds go A B C,
    A B C, ...; each result gets "first_step_s", "rounds" [{round_s, cpu_s}],
    "peak_rss_mib", and "profile" if asked, or "error".
    """
    live = []
    for result, start in workers:
        worker = start()
        result.update(worker.ask())
        print(f"  {result['impl']:<24s} " + (result["error"] if "error" in result else
              f"ready, first step {result['first_step_s']:.1f} s"), flush=True)
        if "error" in result:
            worker.close()
        else:
            live.append((worker, result))
    for _ in range(rounds):
        for worker, result in live:
            if "error" in result:
                continue
            reply = worker.ask("round")
            if "error" in reply:
                result.update(reply)
            else:
                result.setdefault("rounds", []).append(reply)
    for worker, result in live:
        if profile and "error" not in result:
            result.update(worker.ask("profile"))
        if "error" not in result:
            result.update(worker.ask("finish"))
        worker.close()
    return [result for result, _ in workers]


def profile_ops(step: Callable[[], Any], steps: int, top: int = 12,
                matmul_ops: Collection[str] = ()) -> dict:
    """Traces ``steps`` calls of a JAX step with jax.profiler: the ops that took most time.

    Ops are grouped by HLO name without its ".N" suffix (all "copy_bitcast_fusion.*"
    together); times are summed over threads, so shares are of total op time. With
    ``matmul_ops`` (the names of the ops that hold a dot), the wall time of each step is
    also split into: some matmul running, only other ops running, and no op running
    (dispatch, waits between ops).
    """
    import collections
    import glob
    import gzip
    import re

    import jax

    with tempfile.TemporaryDirectory() as folder:
        jax.profiler.start_trace(folder, create_perfetto_trace=True)
        begin = time.perf_counter()
        for _ in range(steps):
            jax.block_until_ready(step())
        wall_us = (time.perf_counter() - begin) * 1e6
        jax.profiler.stop_trace()
        path = glob.glob(os.path.join(folder, "**", "*.trace.json.gz"), recursive=True)[0]
        with gzip.open(path) as handle:
            events = json.load(handle)["traceEvents"]
    totals, counts, ops = collections.Counter(), collections.Counter(), []
    for event in events:
        name = event.get("name", "")
        # HLO ops only ("ynn_fusion.12", "copy"): not the runtime's own events
        # ("ThunkExecutor::Execute", "end: …", "PjitFunction(train_step)", "ParseArguments").
        if event.get("ph") == "X" and re.fullmatch(r"[a-z][\w\-]*(\.\d+)?", name):
            group = re.sub(r"\.\d+$", "", name)
            totals[group] += event["dur"] / 1e3 / steps                  # ms per step
            counts[group] += 1
            ops.append((event["ts"], event["ts"] + event["dur"], name in matmul_ops))
    everything = sum(totals.values()) or 1.0
    result = {"profile": [{"op": name, "ms_per_step": ms, "share": ms / everything,
                           "calls_per_step": counts[name] // steps}
                          for name, ms in totals.most_common(top)]}
    if matmul_ops:
        result["wall_split"] = dict(_wall_split(ops, wall_us, steps),
                                    step_ms=wall_us / 1e3 / steps)
    return result


def _wall_split(ops: list[tuple[float, float, bool]], wall_us: float, steps: int) -> dict:
    """ms per step with a matmul running / only other ops / no op, from (start, end,
    is_matmul) intervals in µs; "no op" is the rest of the traced wall time."""
    import collections

    edges = sorted([(start, 1, matmul) for start, _, matmul in ops] +
                   [(end, -1, matmul) for _, end, matmul in ops])
    running, last, spent = collections.Counter(), None, collections.Counter()
    for moment, change, matmul in edges:
        if last is not None:
            spent["matmul" if running[True] else "other" if running[False] else "none"] += (
                moment - last)
        running[matmul] += change
        last = moment
    us_per_step_ms = 1e3 * steps                     # µs over all steps -> ms per step
    return {"matmul_ms": spent["matmul"] / us_per_step_ms,
            "other_ms": spent["other"] / us_per_step_ms,
            "no_op_ms": (wall_us - spent["matmul"] - spent["other"]) / us_per_step_ms}
