"""Our train step against torch.nn.Transformer: steps/s, target tokens/s and MFU, side by side.

For each preset's shapes ('tiny', 'base'; post-LN, dropout 0.1, label smoothing 0.1,
Adam(0.9, 0.98, 1e-9) on the paper's schedule) this script

1. checks that both sides compute the same function: ``torch_parity.TorchSeq2Seq`` with
   its weights copied into ours gives the same logits (eval mode), and a few training
   steps without dropout give the same losses (same loss, optimizer and schedule);
2. times one fixed batch (a budget of target tokens, every row full) through our
   compiled ``train_step`` (``parallel.make_strategy``: jit with donation) under several
   PRNG implementations for dropout, through PyTorch eager, and through
   ``torch.compile`` (reported "n/a" with the reason when it fails);
3. times our step at sequence lengths 64 → 128 → 256 for the same token budget.

Each implementation runs in its own worker process (same batch from the same seed), so
that its peak host memory, threads and compile time are its own. The workers of a group
start one after another (their compilations never overlap), then are timed in interleaved
rounds, so that a change of load on a shared machine hits each alike. MFU divides the
model FLOPs (``training.train_flops_per_step``) per second by the matmul peak ``peak.py``
measures at the start and the end of the same run. Both models untie their embeddings and
output projection (``share_embeddings=False, tie_output=False``), as ``TorchSeq2Seq`` does.

Run: ``python benchmarks/train_step.py [--presets tiny,base] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time

import common
import numpy as np

PRNG_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")
TORCH_IMPLS = ("torch eager", "torch.compile")
PROTOCOL = "@@bench "          # prefix of the lines a worker answers its parent with


# --------------------------------------------------------------------------- shared setup


def bench_config(preset: str, length: int, dropout: float | None = None,
                 dtype: str = "float32"):
    """The preset with untied embeddings, room for ``length`` positions, jit strategy.

    ``dtype`` is the compute dtype (parameters stay float32): "bfloat16" is mixed
    precision, compared with torch.autocast.
    """
    from flax_transformer.config import get_config

    config = get_config(preset)
    model = dataclasses.replace(
        config.model, share_embeddings=False, tie_output=False,
        max_length=max(config.model.max_length, length), dtype=dtype,
        dropout_rate=config.model.dropout_rate if dropout is None else dropout)
    train = dataclasses.replace(config.train, parallelism="mesh")
    return dataclasses.replace(config, model=model, train=train)


def make_batch(batch_size: int, length: int, vocab_size: int, seed: int = 0) -> dict:
    """Full rows (no padding): source [B, S], target_input = BOS + tokens, target_output."""
    rng = np.random.default_rng(seed)
    source = rng.integers(4, vocab_size, size=(batch_size, length), dtype=np.int32)
    tokens = rng.integers(4, vocab_size, size=(batch_size, length), dtype=np.int32)
    bos = np.full((batch_size, 1), 2, np.int32)
    return {"source": source, "target_input": np.concatenate([bos, tokens[:, :-1]], 1),
            "target_output": tokens}


def device_peak_mib() -> float | None:
    """Peak accelerator memory of this process (MiB), None on a CPU."""
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**20
    return None


def time_round(step, sync, steps: int) -> dict:
    """Wall and process CPU seconds of ``steps`` calls, waiting for the last one."""
    start, cpu_start = time.perf_counter(), common.process_cpu_s()
    result = None
    for _ in range(steps):
        result = step()
    sync(result)
    return {"round_s": time.perf_counter() - start,
            "cpu_s": common.process_cpu_s() - cpu_start}


# --------------------------------------------------------------------------- ours


def ours_step_fn(config, batch_np: dict, prng_impl: str, total_steps: int):
    """A closure running one donated train step per call on a fixed batch."""
    import jax

    from flax_transformer import parallel, training

    strategy = parallel.make_strategy(config)
    state = strategy.put_state(training.create_train_state(config, jax.random.key(0)))
    batch = strategy.put_batch(batch_np)
    keys = list(jax.random.split(jax.random.key(1, impl=prng_impl), total_steps))
    holder = {"state": state, "count": 0}

    def step():
        key = keys[holder["count"] % total_steps]
        holder["state"], metrics = strategy.train_step(holder["state"], batch, key)
        holder["count"] += 1
        return holder["state"], metrics
    return step


def ours_session(spec: dict):
    """(step, sync, finish) of our train step on the spec's batch, in this process."""
    import jax

    config = bench_config(spec["preset"], spec["length"], dtype=spec.get("dtype", "float32"))
    batch = make_batch(spec["batch_size"], spec["length"], config.model.vocab_size)
    step = ours_step_fn(config, batch, spec["prng_impl"], 64)

    def finish() -> dict:
        return {"device_peak_mib": device_peak_mib()}
    return step, jax.block_until_ready, finish


def profile_steps(step, steps: int, top: int = 12) -> list[dict]:
    """Traces ``steps`` calls with jax.profiler; the ops that took the most time.

    Ops are grouped by HLO name without its ".N" suffix (all "copy_bitcast_fusion.*"
    together); times are summed over threads, so shares are of total op time.
    """
    import collections
    import glob
    import gzip
    import re

    import jax

    with tempfile.TemporaryDirectory() as folder:
        jax.profiler.start_trace(folder, create_perfetto_trace=True)
        for _ in range(steps):
            jax.block_until_ready(step())
        jax.profiler.stop_trace()
        path = glob.glob(os.path.join(folder, "**", "*.trace.json.gz"), recursive=True)[0]
        with gzip.open(path) as handle:
            events = json.load(handle)["traceEvents"]
    totals, counts = collections.Counter(), collections.Counter()
    for event in events:
        name = event.get("name", "")
        if event.get("ph") == "X" and not re.match(r"[$]|ThunkExecutor|Slinky|PjRt|Tfrt", name):
            group = re.sub(r"\.\d+$", "", name)
            totals[group] += event["dur"] / 1e3 / steps                  # ms per step
            counts[group] += 1
    everything = sum(totals.values()) or 1.0
    return [{"op": name, "ms_per_step": ms, "share": ms / everything,
             "calls_per_step": counts[name] // steps} for name, ms in totals.most_common(top)]


# --------------------------------------------------------------------------- torch


def torch_device(spec: dict | None = None):
    """The device of JAX's backend: "cuda" when JAX runs on a GPU, else "cpu"."""
    import torch

    if spec is not None:
        return torch.device(spec["torch_device"])
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def torch_model(config, shapes: dict | None = None):
    """TorchSeq2Seq with our dropout sites (embeddings, every sub-layer output) switched on.

    torch's attention-weight and FFN-hidden dropouts stay 0 (ours has neither), and the
    attention biases our model lacks are frozen at zero (see freeze_missing_biases).
    """
    import torch
    from torch import nn
    from torch_parity import TorchSeq2Seq

    class TrainableSeq2Seq(TorchSeq2Seq):
        def __init__(self, model_config):
            super().__init__(model_config)
            rate = model_config.dropout_rate
            self.embedding_dropout = nn.Dropout(rate)
            layers = [*self.transformer.encoder.layers, *self.transformer.decoder.layers]
            for layer in layers:
                for name in ("dropout1", "dropout2", "dropout3"):
                    if hasattr(layer, name):
                        getattr(layer, name).p = rate

        def embed(self, embedding, tokens):
            return self.embedding_dropout(super().embed(embedding, tokens))

    torch.manual_seed(0)
    model = TrainableSeq2Seq(config.model)
    freeze_missing_biases(model, shapes if shapes is not None else our_shapes(config))
    return model


def our_shapes(config, length: int = 8) -> dict:
    """Our parameter tree as ShapeDtypeStructs (traced, nothing computed)."""
    import jax

    from flax_transformer.training import init_params

    return jax.eval_shape(lambda: init_params(config.model, jax.random.key(0), length))


def freeze_missing_biases(model, shapes: dict) -> None:
    """Zero and freeze torch's attention biases where our projections have none."""
    import torch

    ours_has_bias = "bias" in shapes["encoder"]["layer_0"]["self_attention"]["query"]
    if ours_has_bias:
        return
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.MultiheadAttention):
                for bias in (module.in_proj_bias, module.out_proj.bias):
                    bias.zero_()
                    bias.requires_grad_(False)


def torch_loss(logits, targets, smoothing: float):
    """Our losses.label_smoothed_cross_entropy in torch: (sum over tokens, token count)."""
    import math

    vocab_size = logits.shape[-1]
    confidence, low = 1.0 - smoothing, smoothing / (vocab_size - 1)
    normalizer = -(confidence * math.log(confidence)
                   + (vocab_size - 1) * low * math.log(low + 1e-20))
    weights = (targets != 0).float()
    log_probs = logits.float().log_softmax(-1)                               # [B, T, V]
    target_log_probs = log_probs.gather(-1, targets[..., None])[..., 0]      # [B, T]
    per_token = (-(confidence - low) * target_log_probs - low * log_probs.sum(-1)
                 - normalizer)
    return (per_token * weights).sum(), weights.sum()


def torch_step_fn(config, model, batch_np: dict, compiled: bool, total_steps: int,
                  device=None):
    """A closure running one Adam step of the paper's schedule per call; returns the loss."""
    import jax
    import torch

    from flax_transformer.training import learning_rate_schedule

    device = device or torch_device()
    model = model.to(device).train()
    batch = {key: torch.from_numpy(value.astype(np.int64)).to(device)
             for key, value in batch_np.items()}
    train = config.train
    rates = np.asarray(jax.vmap(learning_rate_schedule(train, config.model.d_model))(
        np.arange(total_steps + 1)))        # our schedule, evaluated once for every step
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1.0,
                                 betas=(train.adam_beta1, train.adam_beta2),
                                 eps=train.adam_epsilon)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda count: float(rates[min(count, total_steps)]))

    autocast = config.model.dtype == "bfloat16"

    def loss_fn(source, target_input, target_output):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(source, target_input)
        return torch_loss(logits, target_output, train.label_smoothing)
    loss_fn = torch.compile(loss_fn) if compiled else loss_fn

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss_sum, weight = loss_fn(batch["source"], batch["target_input"],
                                   batch["target_output"])
        (loss_sum / weight.clamp(min=1.0)).backward()
        optimizer.step()
        scheduler.step()
        return loss_sum.detach()
    return step


def torch_session(spec: dict):
    """(step, sync, finish) of the torch train step on the spec's batch, in this process."""
    import torch

    device = torch_device(spec)
    on_gpu = device.type == "cuda"
    if on_gpu:
        torch.set_float32_matmul_precision("high")   # TF32, as JAX's default precision
    torch.backends.mha.set_fastpath_enabled(False)
    config = bench_config(spec["preset"], spec["length"], dtype=spec.get("dtype", "float32"))
    batch = make_batch(spec["batch_size"], spec["length"], config.model.vocab_size)
    step = torch_step_fn(config, torch_model(config), batch, spec["impl"] == "torch.compile",
                         10_000, device)

    def finish() -> dict:
        return {"device_peak_mib": torch.cuda.max_memory_allocated() / 2**20
                if on_gpu else None}
    return step, (lambda _: torch.cuda.synchronize() if on_gpu else None), finish


# --------------------------------------------------------------------------- parity


def copied_models(config, rows: int, length: int, seed: int = 0):
    """A torch model and our params holding its weights, plus a padded random batch."""
    import jax
    import torch
    from torch_parity import copy_weights, random_batch, randomize_norms_and_biases

    from flax_transformer.model import Transformer

    source, target = random_batch(np.random.default_rng(seed), rows, length, length,
                                  config.model.vocab_size)
    ours = Transformer(config.model)
    shapes = jax.eval_shape(ours.init, jax.random.key(0), source, target)["params"]
    model = torch_model(config, shapes)
    randomize_norms_and_biases(model, torch.Generator().manual_seed(seed))
    params = copy_weights(model, shapes)      # re-zeroes the biases we do not have
    return model, ours, params, source.astype(np.int32), target.astype(np.int32)


def check_logits(config, tolerance: float, rows: int = 3, length: int = 12) -> dict:
    """Eval-mode logits of both models at non-pad target positions: max |difference|."""
    import jax
    import torch

    model, ours, params, source, target = copied_models(config, rows, length)
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(source.astype(np.int64)),
                                torch.from_numpy(target.astype(np.int64))).numpy()
    with jax.default_matmul_precision("highest"):
        logits = np.asarray(jax.jit(ours.apply)({"params": params}, source, target))
    non_pad = target != 0
    difference = float(np.max(np.abs(logits[non_pad] - expected[non_pad])))
    return {"check": "eval logits", "max_abs_diff": difference, "tolerance": tolerance,
            "scale": float(np.max(np.abs(expected[non_pad]))), "ok": difference < tolerance}


def check_training(config, steps: int = 3, rows: int = 4, length: int = 12) -> dict:
    """Losses of a few steps (dropout 0, short warm-up) from the same weights and batch.

    The warm-up of 50 steps makes the updates large enough that a wrong optimizer,
    schedule or loss would show as a loss gap far above float32 rounding.
    """
    import jax
    import torch

    from flax_transformer import training

    train = dataclasses.replace(config.train, warmup_steps=50)
    config = dataclasses.replace(config, train=train)
    model, _, params, source, target = copied_models(config, rows, length)
    batch = {"source": source, "target_input": target,
             "target_output": np.concatenate([target[:, 1:], 0 * target[:, :1]], 1)}
    torch_step = torch_step_fn(config, model, batch, compiled=False, total_steps=steps,
                               device=torch.device("cpu"))
    state = training.create_train_state(config, jax.random.key(0))
    optimizer = training.make_optimizer(train, config.model.d_model)
    state = state.replace(params=params, opt_state=optimizer.init(params))
    our_step = jax.jit(lambda state: training.train_step(state, batch, jax.random.key(0),
                                                         config=config))
    weight = float((batch["target_output"] != 0).sum())
    ours, theirs = [], []
    with jax.default_matmul_precision("highest"):
        for _ in range(steps):
            state, metrics = our_step(state)
            ours.append(float(metrics["loss"][0]) / weight)
            theirs.append(float(torch_step()) / weight)
    gap = max(abs(a - b) for a, b in zip(ours, theirs, strict=True))
    change = abs(ours[-1] - ours[0])
    return {"check": f"train losses, {steps} steps", "max_abs_diff": gap,
            "tolerance": 1e-4 * change, "scale": change, "ok": gap < 1e-4 * change,
            "ours": ours, "torch": theirs}


# --------------------------------------------------------------------------- workers


def _reply(message: dict) -> None:
    """One protocol line on stdout; other output of the libraries is ignored."""
    print(PROTOCOL + json.dumps(message), flush=True)


def worker_main(spec_text: str) -> int:
    """Serves one implementation in this process: ready, then "round"/"profile"/"finish"."""
    spec = json.loads(spec_text)
    try:
        session = torch_session if spec["impl"] in TORCH_IMPLS else ours_session
        step, sync, finish = session(spec)
        start = time.perf_counter()
        sync(step())
        first = time.perf_counter() - start
        time_round(step, sync, spec["steps"])                                # warm-up
    except Exception as error:    # e.g. torch.compile without a working C++ toolchain
        lines = str(error).strip().splitlines() or [""]
        _reply({"error": f"{type(error).__name__}: {lines[0][:160]}"})
        return 0
    _reply({"first_step_s": first})
    for line in sys.stdin:
        if line.strip() == "round":
            _reply(time_round(step, sync, spec["steps"]))
        elif line.strip() == "profile":
            try:
                _reply({"profile": profile_steps(step, spec["steps"])})
            except Exception as error:    # a profiler that cannot trace costs no numbers
                _reply({"profile_error": f"{type(error).__name__}: {error}"[:200]})
        else:
            _reply(dict(finish(), peak_rss_mib=common.peak_rss_mib()))
            return 0
    return 0


class Worker:
    """A child process serving one spec; ``ask`` sends a command and reads its reply."""

    def __init__(self, spec: dict, timeout: float):
        environment = dict(os.environ)
        if spec.get("xla_flags"):
            environment["XLA_FLAGS"] = f"{environment.get('XLA_FLAGS', '')} {spec['xla_flags']}"
        if spec["impl"] in TORCH_IMPLS:
            environment["JAX_PLATFORMS"] = "cpu"   # jax only evaluates the schedule there
        self.log = tempfile.TemporaryFile()          # noqa: SIM115 (closed by close())
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=environment,
            bufsize=0)
        self.timeout, self.pending = timeout, b""

    def ask(self, command: str = "") -> dict:
        """Sends ``command`` (none: waits for the first reply); errors become {"error"}."""
        if command:
            self.process.stdin.write(command.encode() + b"\n")
        deadline = time.monotonic() + self.timeout
        while True:
            while b"\n" not in self.pending:
                remaining = deadline - time.monotonic()
                if not select.select([self.process.stdout], [], [], max(remaining, 0))[0]:
                    self.close()
                    return {"error": f"timed out after {self.timeout:.0f} s"}
                chunk = os.read(self.process.stdout.fileno(), 1 << 16)
                if not chunk:
                    return {"error": f"worker exited {self.process.wait()}: {self._tail()}"}
                self.pending += chunk
            line, self.pending = self.pending.split(b"\n", 1)
            if line.startswith(PROTOCOL.encode()):
                return json.loads(line[len(PROTOCOL):])

    def _tail(self) -> str:
        self.log.seek(0)
        lines = self.log.read().decode(errors="replace").strip().splitlines() or ["no output"]
        return lines[-1][:160]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.log.close()


def start_workers(specs: list[dict], args) -> tuple[list[dict], list[tuple[Worker, dict]]]:
    """Starts the workers one after another, so that their compilations do not overlap."""
    results, live = [], []
    for spec in specs:
        worker = Worker(spec, args.worker_timeout)
        result = dict(spec, **worker.ask())
        results.append(result)
        if "error" in result:
            worker.close()
            print(f"  {_label(spec)} {result['error']}", flush=True)
        else:
            live.append((worker, result))
            print(f"  {_label(spec)} ready, first step {result['first_step_s']:.1f} s",
                  flush=True)
    return results, live


def measure_group(specs: list[dict], args) -> list[dict]:
    """Times the specs' steps in interleaved rounds: A B C, A B C, ...

    A change in the machine's load during the run then slows every implementation alike,
    instead of whichever happened to run at that time.
    """
    results, live = start_workers(specs, args)
    for _ in range(args.rounds):
        for worker, result in live:
            if "error" not in result:
                reply = worker.ask("round")
                if "error" in reply:
                    result.update(reply)
                else:
                    result.setdefault("rounds", []).append(reply)
    for worker, result in live:
        if "error" not in result:
            if result.get("trace"):
                result.update(worker.ask("profile"))
            result.update(worker.ask("finish"))
        worker.close()
        summarize(result, args)
    return results


def _label(spec: dict) -> str:
    return f"{spec['preset']:5s} L={spec['length']:<4d} {spec['impl']:28s}"


def summarize(result: dict, args) -> None:
    """Adds step times (best/median round), busy cores, throughput and MFU; prints a line."""
    rounds = result.get("rounds", [])
    if "error" not in result and rounds:
        from flax_transformer.training import train_flops_per_step

        walls = [entry["round_s"] / result["steps"] for entry in rounds]
        result["step_s"], result["median_step_s"] = min(walls), statistics.median(walls)
        cpu = statistics.median(entry["cpu_s"] for entry in rounds) / result["steps"]
        result["busy_cores"] = cpu / result["median_step_s"]
        config = bench_config(result["preset"], result["length"])
        result["model_flops"] = train_flops_per_step(config.model, result["batch_size"],
                                                     result["length"], result["length"])
        result["steps_per_s"] = 1.0 / result["step_s"]
        result["tokens_per_s"] = result["batch_size"] * result["length"] / result["step_s"]
        result["mfu"] = result["model_flops"] / result["step_s"] / args.peak_flops_per_s
    print(f"  {_label(result)} " + (f"{result['step_s'] * 1e3:9.1f} ms/step"
                                     if "step_s" in result else result.get("error", "")),
          flush=True)


def case(preset: str, impl: str, tokens: int, length: int, args, **extra) -> dict:
    return {"preset": preset, "impl": impl, "length": length,
            "batch_size": max(1, tokens // length), "steps": args.steps,
            "torch_device": args.torch_device, "dtype": args.dtype, **extra}


# --------------------------------------------------------------------------- runs


def run_checks(args) -> list[dict]:
    """Logit parity for every preset, training parity (loss, Adam, schedule) at 'tiny'."""
    checks = []
    for preset in args.presets:
        config = bench_config(preset, args.length, dropout=0.0)
        checks.append(dict(check_logits(config, args.tolerance), preset=preset))
    if not args.skip_train_check:
        config = bench_config("tiny", args.length, dropout=0.0)
        checks.append(dict(check_training(config), preset="tiny"))
    return checks


def ours_variants(args) -> list[tuple[str, str]]:
    """(PRNG implementation, extra XLA flags) of every run of our step."""
    variants = [(prng, "") for prng in args.prng_impls]
    flag_sets = [flags.strip() for flags in args.xla_variants.split(";") if flags.strip()]
    return variants + [(args.prng_impls[-1], flags) for flags in flag_sets]


def run_presets(args) -> list[dict]:
    """Every implementation on every preset's fixed batch."""
    results = []
    for preset, tokens in zip(args.presets, args.tokens, strict=True):
        specs = []
        for prng, flags in ours_variants(args):
            name = f"ours ({prng})" + (f" XLA_FLAGS={flags}" if flags else "")
            specs.append(case(preset, name, tokens, args.length, args, prng_impl=prng,
                              xla_flags=flags, trace=args.profile))
        specs += [case(preset, impl, tokens, args.length, args) for impl in args.torch_impls]
        results += measure_group(specs, args)
    return results


def fastest_ours(results: list[dict], preset: str) -> dict | None:
    timed = [r for r in results if r["preset"] == preset and r["impl"].startswith("ours")
             and "step_s" in r]
    return min(timed, key=lambda r: r["step_s"]) if timed else None


def run_sweep(args, results: list[dict]) -> list[dict]:
    """Our fastest variant at each sweep length, for the same token budget."""
    if not args.sweep_lengths:
        return []
    preset = args.sweep_preset
    best = fastest_ours(results, preset)
    prng = best["prng_impl"] if best else args.prng_impls[0]
    flags = best.get("xla_flags", "") if best else ""
    tokens = args.sweep_tokens or dict(zip(args.presets, args.tokens, strict=True)).get(
        preset, 1024)
    name = best["impl"] if best else f"ours ({prng})"
    return measure_group([case(preset, name, tokens, length, args, prng_impl=prng,
                               xla_flags=flags) for length in args.sweep_lengths], args)


def attention_share(model_config, length: int) -> float:
    """Share of the model FLOPs that grows with length² (scores and mixing), S = T = length.

    FLOPs(L) = a·L + b·L² per example; two lengths give a, the rest is attention's.
    """
    from flax_transformer.training import train_flops_per_step

    flops = train_flops_per_step(model_config, 1, length, length)
    doubled = train_flops_per_step(model_config, 1, 2 * length, 2 * length)
    linear_per_token = 2 * flops / length - doubled / (2 * length)
    return 1.0 - linear_per_token * length / flops


# --------------------------------------------------------------------------- tables


def _ratio(result: dict, results: list[dict], impl: str) -> float | None:
    reference = [r for r in results if r["preset"] == result["preset"] and r["impl"] == impl
                 and "tokens_per_s" in r]
    if "tokens_per_s" not in result or not reference:
        return None
    return result["tokens_per_s"] / reference[0]["tokens_per_s"]


def _ms(result: dict, key: str) -> float | None:
    return result[key] * 1e3 if key in result else None


def print_check_table(checks: list[dict]) -> str:
    rows = [(c["preset"], c["check"], c["max_abs_diff"], c["tolerance"], c["scale"],
             "OK" if c["ok"] else "FAIL") for c in checks]
    return common.print_table(
        "Same function: our Transformer vs torch.nn.Transformer with copied weights",
        ["preset", "check", "max abs diff", "tolerance", "scale (max |logit| or loss drop)",
         "result"], rows)


def print_speed_table(results: list[dict], dtype: str) -> str:
    rows = [(r["preset"], r["impl"], f"{r['batch_size']}×{r['length']}",
             _ms(r, "step_s"), _ms(r, "median_step_s"), r.get("steps_per_s"),
             r.get("tokens_per_s"), r.get("mfu"), _ratio(r, results, "torch eager"),
             _ratio(r, results, "torch.compile"), r.get("busy_cores"), r.get("first_step_s"),
             r.get("peak_rss_mib"), r.get("device_peak_mib"), r.get("error", ""))
            for r in results]
    return common.print_table(
        f"Train step, {dtype} (post-LN, dropout 0.1, label smoothing 0.1, Adam + paper "
        "schedule)",
        ["preset", "implementation", "batch B×L", "ms/step best", "ms/step median",
         "steps/s", "target tok/s", "MFU", "× torch eager", "× torch.compile",
         "busy cores", "first step s", "peak host MiB", "peak device MiB", "note"], rows)


def print_sweep_table(sweep: list[dict], preset: str) -> str:
    if not sweep or "step_s" not in sweep[0]:
        return ""
    first = sweep[0]
    rows = []
    for r in sweep:
        config = bench_config(preset, r["length"])
        rows.append((r["length"], f"{r['batch_size']}×{r['length']}", _ms(r, "step_s"),
                     r.get("tokens_per_s"), r.get("mfu"),
                     r["step_s"] / first["step_s"] if "step_s" in r else None,
                     r.get("model_flops", 0) / first["model_flops"],
                     attention_share(config.model, r["length"])))
    return common.print_table(
        f"Step time vs sequence length at a fixed token budget ({preset}, {first['impl']})",
        ["length L", "batch B×L", "ms/step", "target tok/s", "MFU", "time × (vs first)",
         "model FLOPs × (vs first)", "attention share of FLOPs"], rows)


def print_profile_tables(results: list[dict], presets: list[str]) -> str:
    text = ""
    for preset in presets:
        best = fastest_ours(results, preset)
        if best is None or "profile" not in best:
            continue
        rows = [(p["op"], p["ms_per_step"], p["share"], p["calls_per_step"])
                for p in best["profile"]]
        text += common.print_table(
            f"Where our step's time goes ({preset}, {best['impl']}, jax.profiler)",
            ["HLO op (fusion kind)", "ms/step (summed over threads)", "share of op time",
             "calls/step"], rows)
    return text


def targets(results: list[dict], preset: str) -> list[dict]:
    best = fastest_ours(results, preset)
    if best is None:
        return []
    measured = [("MFU", best.get("mfu"), 0.5),
                ("× torch eager tokens/s", _ratio(best, results, "torch eager"), 1.8),
                ("× torch.compile tokens/s", _ratio(best, results, "torch.compile"), 1.5)]
    return [{"preset": preset, "implementation": best["impl"], "metric": name,
             "measured": value, "target": target,
             "met": None if value is None else value >= target}
            for name, value, target in measured]


def print_target_table(rows: list[dict]) -> str:
    table = [(t["preset"], t["implementation"], t["metric"], t["measured"], t["target"],
              {None: "n/a", True: "met", False: "missed"}[t["met"]]) for t in rows]
    return common.print_table("Targets", ["preset", "ours", "metric", "measured", "target",
                                          "result"], table)


# --------------------------------------------------------------------------- main


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", type=_names, default=["tiny", "base"])
    parser.add_argument("--tokens", type=_ints, default=[2048, 512],
                        help="target tokens per batch, one per preset (rows = tokens // L)")
    parser.add_argument("--length", type=int, default=64, help="source = target length L")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="compute dtype (bfloat16: ours with model.dtype, torch with "
                             "autocast); MFU is against the matmul peak of this dtype")
    parser.add_argument("--steps", type=int, default=2, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=3,
                        help="timed rounds, interleaved across implementations (best is kept)")
    parser.add_argument("--prng-impls", type=_names, default=["threefry2x32", "rbg"],
                        help=f"PRNG implementations for our dropout, of {PRNG_IMPLS}")
    parser.add_argument("--xla-variants", default="",
                        help="';'-separated XLA_FLAGS sets, each an extra run of our step "
                             "(with the last --prng-impls); write it with '=', e.g. "
                             "--xla-variants=--xla_cpu_use_onednn=true")
    parser.add_argument("--torch-impls", type=_names, default=list(TORCH_IMPLS),
                        help=f"of {TORCH_IMPLS}; '' = ours only")
    parser.add_argument("--sweep-lengths", type=_ints, default=[64, 128, 256])
    parser.add_argument("--sweep-preset", default="base")
    parser.add_argument("--sweep-tokens", type=int, default=0,
                        help="token budget of the sweep (0 = the sweep preset's --tokens)")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest |logit difference| of the parity check")
    parser.add_argument("--skip-train-check", action="store_true")
    parser.add_argument("--profile", action="store_true",
                        help="trace our steps with jax.profiler and print the costliest ops")
    parser.add_argument("--worker-timeout", type=float, default=900.0)
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    common.add_json_flag(parser)
    args = parser.parse_args(argv)
    if not args.worker and len(args.tokens) != len(args.presets):
        parser.error("--tokens needs one budget per preset in --presets.")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args.worker)
    import peak
    import torch

    torch.backends.mha.set_fastpath_enabled(False)   # the plain math path is the reference
    machine = common.describe_machine()
    print(common.machine_line(machine), flush=True)
    args.torch_device = "cuda" if machine["backend"] == "gpu" else "cpu"
    peaks = [peak.measure_peak(args.dtype, repeats=10)]
    args.peak_flops_per_s = peaks[0]["peak_flops_per_s"]
    print(f"{args.dtype} matmul peak: {args.peak_flops_per_s / 1e9:.1f} GFLOP/s", flush=True)
    checks = run_checks(args)
    text = print_check_table(checks)
    results = run_presets(args)
    sweep = run_sweep(args, results)
    peaks.append(peak.measure_peak(args.dtype, repeats=10))    # the peak again, at the end
    args.peak_flops_per_s = max(entry["peak_flops_per_s"] for entry in peaks)
    for result in results + sweep:
        if "model_flops" in result:
            result["mfu"] = result["model_flops"] / result["step_s"] / args.peak_flops_per_s
    text += (f"\n{args.dtype} matmul peak (MFU denominator, best of the start and the end of "
             f"this run): {args.peak_flops_per_s / 1e9:.1f} GFLOP/s\n")
    print(text.splitlines()[-1])
    goals = targets(results, "base" if "base" in args.presets else args.presets[-1])
    text += print_speed_table(results, args.dtype) + print_sweep_table(sweep, args.sweep_preset)
    text += print_profile_tables(results, args.presets)
    text += print_target_table(goals)
    common.write_json(args.json, {
        "machine": machine, "peaks": peaks, "checks": checks, "results": results,
        "sweep": sweep, "targets": goals, "markdown": text, "argv": sys.argv[1:]})
    return 0 if all(check["ok"] for check in checks) else 1


if __name__ == "__main__":
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")   # workers share a GPU
    sys.exit(main())
