"""Our train step against torch.nn.Transformer (eager, torch.compile) and the Flax WMT example.

Every implementation trains the same model on the same batch: the preset's shapes (base:
d_model 512, 6 + 6 layers, 8 heads, d_ff 2048; vocabulary 32,000 as the Flax WMT
example's default, embeddings shared and tied to the output), dropout 0.1, label
smoothing 0.1, Adam(0.9, 0.98, 1e-9), every row full (no padding).

1. Same function: ``torch_parity`` copies the torch model's weights into ours and checks
   the eval logits (every preset) and three training steps (tiny).
2. Each implementation runs in a worker process of its own (threads, compilation, peak
   host memory), started one after another; then the workers are timed in interleaved
   rounds (A B C D, A B C D, ...), so that a change of load hits each alike:
   - ``ours``: ``training.train_step`` through ``parallel.make_strategy`` (jit, state
     donated), rbg dropout keys;
   - ``torch eager`` / ``torch.compile``: ``torch_parity.TorchSeq2Seq`` (our dropout sites,
     post-LN) with ``torch_parity.torch_train_step``;
   - ``flax wmt``: the Flax WMT example's ``models.py`` and ``train.py``, unmodified, read
     from ``--flax-wmt`` (a checkout's ``examples/wmt``): its pre-LN model with attention
     dropout, its ``train_step`` (one-hot smoothed loss, AdamW with weight decay 0, its
     rsqrt schedule) under ``jax.pmap`` as its ``train.py`` runs it. Skipped with a note
     when the folder is not given.
3. MFU = model FLOPs (``training.train_flops_per_step``, the same for all four) per second
   ÷ the matmul peak ``peak.py`` measures at the start and the end of this run.

Run: ``python benchmarks/train_step.py --flax-wmt /path/to/flax/examples/wmt``
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import os
import statistics
import sys

import common
import numpy as np

TORCH_IMPLS = ("torch eager", "torch.compile")
IMPLS = (*TORCH_IMPLS, "flax wmt", "ours")
PRESET_VOCAB = {"base": 32000}      # the Flax WMT example's default vocabulary
DEFAULT_TOKENS = {"base": 1024, "tiny": 2048}   # 16 x 64 and 32 x 64 rows at --length 64


# --------------------------------------------------------------------------- what is trained


def bench_config(preset: str, length: int, vocab: int = 0, dtype: str = "float32",
                 dropout: float | None = None):
    """The preset at vocabulary ``vocab`` (0: PRESET_VOCAB or the preset's), jit strategy."""
    from flax_transformer.presets import get_config

    config = get_config(preset)
    vocab = vocab or PRESET_VOCAB.get(preset, config.model.vocab_size)
    model = dataclasses.replace(
        config.model, vocab_size=vocab, max_length=max(config.model.max_length, length),
        dtype=dtype, dropout_rate=config.model.dropout_rate if dropout is None else dropout)
    return dataclasses.replace(
        config, model=model, data=dataclasses.replace(config.data, vocab_size=vocab),
        train=dataclasses.replace(config.train, parallelism="mesh"))


def make_batch(rows: int, length: int, vocab_size: int, seed: int = 0) -> dict:
    """Full rows: source [B, L], target_input = BOS + target_output[:, :-1], target_output."""
    rng = np.random.default_rng(seed)
    source = rng.integers(4, vocab_size, size=(rows, length), dtype=np.int32)
    tokens = rng.integers(4, vocab_size, size=(rows, length), dtype=np.int32)
    bos = np.full((rows, 1), 2, np.int32)
    return {"source": source, "target_input": np.concatenate([bos, tokens[:, :-1]], 1),
            "target_output": tokens}


def spec_config_and_batch(spec: dict):
    config = bench_config(spec["preset"], spec["length"], spec["vocab"], spec["dtype"])
    if spec.get("scan_layers"):
        config = dataclasses.replace(
            config, model=dataclasses.replace(config.model, scan_layers=True))
    if spec.get("kernel_layout"):
        config = dataclasses.replace(config, model=dataclasses.replace(
            config.model, kernel_layout=spec["kernel_layout"]))
    if not spec.get("transposed_weight_gradients", True):
        config = dataclasses.replace(config, model=dataclasses.replace(
            config.model, transposed_weight_gradients=False))
    if not spec.get("reuse_host_memory", True):
        config = dataclasses.replace(
            config, train=dataclasses.replace(config.train, reuse_host_memory=False))
    return config, make_batch(spec["rows"], spec["length"], config.model.vocab_size)


# --------------------------------------------------------------------------- implementations
# Each returns (step, sync): step() runs one training step, sync(result) waits for it.


def ours_session(spec: dict):
    import jax

    from flax_transformer import parallel, training

    config, batch = spec_config_and_batch(spec)
    if config.train.reuse_host_memory:        # as train.py does, before the backend starts
        parallel.prepare_host_memory_reuse()
        if spec.get("async_dispatch"):         # the --async-dispatch row: as before 2026-12-02
            jax.config.update("jax_cpu_enable_async_dispatch", True)
    strategy = (parallel.PmapStrategy(config) if spec.get("pmap_strategy")
                else parallel.make_strategy(config))
    state = strategy.put_state(training.create_train_state(config, jax.random.key(0)))
    parallel.release_freed_host_memory()       # as train.py does after put_state
    batch = strategy.put_batch(batch)
    # Each step's key as train.py makes it (iterating a split key array instead cost the
    # first step 1 s: JAX unstacks the array's first chunk).
    root, steps = jax.random.key(1, impl=spec["prng"]), itertools.count(1)

    reusing = False

    def step():
        nonlocal state, reusing
        number = next(steps)
        if number == spec["steps"] + 2 and config.train.reuse_host_memory:
            reusing = parallel.reuse_freed_host_memory(True)  # after warm-up (train.py: 1st log)
        state, metrics = strategy.train_step(state, batch, parallel.step_rng(root, number))
        if reusing:
            jax.block_until_ready(metrics)   # one step in flight, as train.py keeps then
        return metrics

    step.compiled = lambda: strategy.compiled_train_step(      # for --profile
        state, batch, parallel.step_rng(root, 1))
    return step, jax.block_until_ready


def ours_profile(step, steps: int) -> dict:
    """Where the step's time goes (jax.profiler), split by whether a matmul runs, and the
    matmul floor: each of the step's dots timed alone (matmuls.py)."""
    import matmuls

    found = matmuls.census(step.compiled().as_text())
    result = common.profile_ops(step, steps, matmul_ops=set(found["ops"]))
    floor = matmuls.matmul_floor(found)
    result["matmul_floor"] = {
        "floor_s": floor["floor_s"], "dot_flops": floor["flops"],
        "dots": [{"runs": entry["count"], "dot": matmuls.describe(entry),
                  "gflop": entry["flops"] / 1e9, "alone_ms": entry["alone_s"] * 1e3}
                 for entry in floor["dots"]]}
    return result


def torch_session(spec: dict):
    import torch
    from torch_parity import TorchSeq2Seq, torch_train_step

    device = torch.device(spec["torch_device"])
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")     # TF32, as JAX's default precision
    torch.backends.mha.set_fastpath_enabled(False)
    torch.manual_seed(0)
    config, batch = spec_config_and_batch(spec)
    step = torch_train_step(config, TorchSeq2Seq(config.model), batch, 100_000, device,
                            compiled=spec["impl"] == "torch.compile")
    return step, (lambda _: torch.cuda.synchronize() if device.type == "cuda" else None)


def load_flax_wmt(folder: str):
    """The example's ``models`` and ``train`` modules, loaded unmodified from ``folder``.

    Its train.py also imports what only its data pipeline, evaluation, checkpoints and
    logging use (TensorFlow, clu, ml_collections, its own bleu/decode/input_pipeline);
    those that are missing here become empty stand-ins, never called by ``train_step``.
    """
    import importlib.util
    import types

    class Stub(types.ModuleType):
        def __getattr__(self, name):
            return Stub(name)

    def load(name):
        loader = importlib.util.spec_from_file_location(name, os.path.join(folder, f"{name}.py"))
        module = sys.modules[name] = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(module)
        return module

    import flax.io  # noqa: F401 (probes for TensorFlow itself; it must see the real answer)

    for name in ("bleu", "decode", "input_pipeline"):     # siblings; ours has a decode.py
        sys.modules[name] = Stub(name)
    for name in ("tensorflow", "clu", "ml_collections"):
        if importlib.util.find_spec(name) is None:
            sys.modules[name] = Stub(name)
    return load("models"), load("train")


def flax_wmt_session(spec: dict):
    """Its train.py's recipe: TransformerConfig, adamw, jax.pmap(train_step), as in train()."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import jax_utils
    from flax.training import common_utils

    models, recipe = load_flax_wmt(spec["flax_wmt"])
    config, batch = spec_config_and_batch(spec)
    model = config.model
    wmt = models.TransformerConfig(
        vocab_size=model.vocab_size, output_vocab_size=model.vocab_size,
        share_embeddings=True, logits_via_embedding=True, dtype=jnp.dtype(model.dtype),
        emb_dim=model.d_model, num_heads=model.num_heads, num_layers=model.num_encoder_layers,
        qkv_dim=model.d_model, mlp_dim=model.d_ff, max_len=model.max_length,
        dropout_rate=model.dropout_rate, attention_dropout_rate=model.dropout_rate,
        deterministic=False)
    tokens = jnp.ones(batch["source"].shape, jnp.float32)
    params = jax.jit(models.Transformer(wmt.replace(deterministic=True)).init)(
        jax.random.key(0), tokens, tokens)["params"]
    schedule = recipe.create_learning_rate_schedule(learning_rate=0.002, warmup_steps=1000)
    state = jax_utils.replicate(recipe.TrainState.create(
        apply_fn=models.Transformer(wmt).apply, params=params, dynamic_scale=None,
        tx=optax.adamw(schedule, b1=0.9, b2=0.98, eps=1e-9, weight_decay=0.0)))
    train_step = jax.pmap(functools.partial(recipe.train_step, config=wmt,
                                            learning_rate_fn=schedule, label_smoothing=0.1),
                          axis_name="batch", donate_argnums=(0,))
    shard = jax.device_put(common_utils.shard(
        {"inputs": batch["source"], "targets": batch["target_output"]}))    # [1, B, L]
    dropout_rngs = jax.random.split(jax.random.key(1), 1)

    def step():
        nonlocal state
        state, metrics = train_step(state, shard, dropout_rng=dropout_rngs)
        return metrics
    return step, jax.block_until_ready


def worker_main(spec: dict) -> int:
    session = {"ours": ours_session, "flax wmt": flax_wmt_session}.get(
        spec["impl"].split(" (")[0], torch_session)
    profile = functools.partial(ours_profile, steps=spec["steps"])
    return common.serve(lambda: session(spec), spec["steps"],
                        profile if spec["impl"].startswith("ours") else None)


def start_worker(spec: dict, timeout: float) -> common.Worker:
    env = dict(os.environ)
    if spec.get("xla_flags"):
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {spec['xla_flags']}"
    if spec["impl"] in TORCH_IMPLS:
        env["JAX_PLATFORMS"] = "cpu"           # jax only evaluates the schedule there
    argv = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    return common.Worker(argv, env, timeout)


# --------------------------------------------------------------------------- the run


# Flags that each add a row of ours: (flag, row name, spec entries, help).
EXTRA_ROWS = (
    ("--scan-layers", "scan_layers", {"scan_layers": True},
     "an extra row of ours with model.scan_layers (first step, step time)"),
    ("--glibc-defaults", "glibc defaults", {"reuse_host_memory": False},
     "an extra row of ours with train.reuse_host_memory off: every step maps its "
     "temporaries anew (glibc's malloc defaults)"),
    ("--autodiff-weight-gradients", "autodiff weight gradients",
     {"transposed_weight_gradients": False},
     "an extra row of ours with model.transposed_weight_gradients off: Dense weight "
     "gradients as autodiff writes them"),
    ("--in-out-kernels", "in_out kernels", {"kernel_layout": "in_out"},
     "an extra row of ours with model.kernel_layout='in_out': Dense kernels stored [I, O] "
     "(flax.linen.Dense's layout, runs saved before 2026-12-03)"),
    ("--pmap-one-device", "pmap over one device", {"pmap_strategy": True},
     "an extra row of ours with parallel.PmapStrategy over this one device, as train.py's "
     "default ran before 2026-12-03 (now pmap over one device runs the jit step)"),
    ("--async-dispatch", "asynchronous dispatch", {"async_dispatch": True},
     "an extra row of ours with JAX's asynchronous CPU dispatch, which train.py turns off "
     "while it reuses host memory"),
)


def _dest(flag: str) -> str:
    return flag.removeprefix("--").replace("-", "_")


def specs_for(preset: str, tokens: int, args) -> list[dict]:
    base = {"preset": preset, "length": args.length, "rows": max(1, tokens // args.length),
            "vocab": args.vocab, "dtype": args.dtype, "steps": args.steps,
            "prng": args.prng, "torch_device": args.torch_device, "flax_wmt": args.flax_wmt}
    specs = [dict(base, impl=impl) for impl in args.torch_impls]
    if args.flax_wmt:
        specs.append(dict(base, impl="flax wmt"))
    specs.append(dict(base, impl="ours"))
    specs += [dict(base, impl=f"ours ({row})", **entries)
              for flag, row, entries, _ in EXTRA_ROWS if getattr(args, _dest(flag))]
    specs += [dict(base, impl=f"ours ({flags})", xla_flags=flags) for flags in args.xla_variants]
    return specs


def summarize(result: dict, peak_flops_per_s: float) -> dict:
    """Best and median step time, busy cores, tokens/s, model GFLOP/s and MFU of a result."""
    from flax_transformer.training import train_flops_per_step

    if "rounds" not in result:
        return result
    walls = [entry["round_s"] / result["steps"] for entry in result["rounds"]]
    cpu = statistics.median(entry["cpu_s"] for entry in result["rounds"]) / result["steps"]
    config = bench_config(result["preset"], result["length"], result["vocab"])
    flops = train_flops_per_step(config.model, result["rows"], result["length"],
                                 result["length"])
    best = min(walls)
    return dict(result, step_s=best, median_step_s=statistics.median(walls),
                busy_cores=cpu / statistics.median(walls),
                tokens_per_s=result["rows"] * result["length"] / best,
                model_gflops=flops / best / 1e9, mfu=flops / best / peak_flops_per_s)


def ours_over_best_other(results: list[dict]) -> tuple[float | None, str]:
    """Tokens/s of ours ÷ that of the fastest other implementation of the same preset."""
    ours = [r for r in results if r["impl"] == "ours" and "tokens_per_s" in r]
    others = [r for r in results if not r["impl"].startswith("ours") and "tokens_per_s" in r]
    if not ours or not others:
        return None, "n/a"
    best = max(others, key=lambda r: r["tokens_per_s"])
    return ours[0]["tokens_per_s"] / best["tokens_per_s"], best["impl"]


def speed_table(preset: str, results: list[dict], args) -> str:
    ours = next((r for r in results if r["impl"] == "ours" and "tokens_per_s" in r), None)
    rows = []
    for r in results:
        ratio = (ours["tokens_per_s"] / r["tokens_per_s"]
                 if ours and "tokens_per_s" in r else None)
        rows.append((r["impl"], f"{r['rows']}×{r['length']}",
                     r.get("step_s", 0) * 1e3 or None, r.get("median_step_s", 0) * 1e3 or None,
                     r.get("tokens_per_s"), r.get("model_gflops"), r.get("mfu"), ratio,
                     r.get("busy_cores"), r.get("first_step_s"), r.get("warmup_s"),
                     r.get("peak_rss_mib"),
                     r.get("error", "")))
    ratio, best = ours_over_best_other(results)
    return common.print_table(
        f"{preset}, {args.dtype}: ours ÷ fastest other = {common.format_value(ratio)} "
        f"({best})",
        ["implementation", "batch B×L", "ms/step best", "ms/step median", "target tok/s",
         "model GFLOP/s", "MFU", "ours ÷ this", "busy cores", "first step s",
         "warm-up round s", "peak host MiB", "note"], rows)


def profile_tables(preset: str, result: dict, peak_flops_per_s: float) -> str:
    """The costliest ops; the step's wall time split by what runs; its matmul floor."""
    text = common.print_table(
        f"{preset}: where {result['impl']}'s time goes (jax.profiler, op time summed over "
        "threads)", ["HLO op", "ms/step", "share", "calls/step"],
        [(p["op"], p["ms_per_step"], p["share"], p["calls_per_step"])
         for p in result["profile"]])
    split, floor = result.get("wall_split"), result.get("matmul_floor")
    if not split or not floor:
        return text
    flops = floor["dot_flops"]
    floor_ms = floor["floor_s"] * 1e3
    text += common.print_table(
        f"{preset}: {result['impl']}'s step under the profiler, and its matmul floor "
        f"({flops / 1e9:.1f} GFLOP of dots)", ["part", "ms/step", "share of the step"],
        [("whole step (traced)", split["step_ms"], 1.0),
         ("a matmul running", split["matmul_ms"], split["matmul_ms"] / split["step_ms"]),
         ("only other ops running", split["other_ms"], split["other_ms"] / split["step_ms"]),
         ("no op running (dispatch, waits)", split["no_op_ms"],
          split["no_op_ms"] / split["step_ms"]),
         ("matmul floor: each dot timed alone, summed", floor_ms, floor_ms / split["step_ms"]),
         ("MFU if the step took only its floor", flops / floor["floor_s"] / peak_flops_per_s,
          None)])
    text += common.print_table(
        f"{preset}: {result['impl']}'s dots, each timed alone (jitted by itself, operands "
        "in the step's layouts)", ["runs/step", "dot", "GFLOP", "ms alone", "GFLOP/s",
                                   "ms/step"],
        [(d["runs"], d["dot"], d["gflop"], d["alone_ms"], d["gflop"] / d["alone_ms"] * 1e3,
          d["runs"] * d["alone_ms"]) for d in floor["dots"]])
    return text


def run_checks(args) -> list[dict]:
    """Logits of every preset's configuration; three training steps at 'tiny'."""
    from torch_parity import check_logits, check_training

    checks = [dict(check_logits(bench_config(preset, args.length, args.vocab, dropout=0.0)),
                   preset=preset) for preset in args.presets]
    checks.append(dict(check_training(bench_config("tiny", args.length)), preset="tiny"))
    rows = [(c["preset"], c["check"], c["max_abs_diff"], c["tolerance"], c["scale"],
             "OK" if c["ok"] else "FAIL") for c in checks]
    common.print_table("Same function: ours vs torch_parity.TorchSeq2Seq, copied weights",
                       ["preset", "check", "max abs diff", "tolerance",
                        "scale (max |logit| or loss drop)", "result"], rows)
    return checks


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    def names(text):
        return [part.strip() for part in text.split(",") if part.strip()]

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flax-wmt", default="", metavar="DIR",
                        help="the Flax WMT example's folder (models.py, train.py); "
                             "'' skips that column")
    parser.add_argument("--presets", type=names, default=["base", "tiny"])
    parser.add_argument("--tokens", type=lambda text: [int(t) for t in names(text)],
                        default=None,
                        help="target tokens per batch, one per preset (rows = tokens // L; "
                             f"default {DEFAULT_TOKENS}, else 1024)")
    parser.add_argument("--length", type=int, default=64, help="source = target length L")
    parser.add_argument("--vocab", type=int, default=0,
                        help=f"vocabulary (0: {PRESET_VOCAB} or the preset's own)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--steps", type=int, default=3, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timed rounds")
    parser.add_argument("--prng", default="rbg", help="PRNG implementation of our dropout")
    parser.add_argument("--torch-impls", type=names, default=list(TORCH_IMPLS),
                        help=f"of {TORCH_IMPLS}; '' = no PyTorch")
    parser.add_argument("--xla-variants", type=lambda text: names(text.replace(";", ",")),
                        default=[], help="';'-separated XLA_FLAGS, each an extra row of ours "
                                         "(write it with '=')")
    for flag, _, _, text in EXTRA_ROWS:
        parser.add_argument(flag, action="store_true", help=text)
    parser.add_argument("--profile", action="store_true",
                        help="trace our steps with jax.profiler: the costliest ops, the "
                             "step's wall time split by what runs, and its matmul floor")
    parser.add_argument("--worker-timeout", type=float, default=1800.0)
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    common.add_json_flag(parser)
    args = parser.parse_args(argv)
    if args.tokens is None:
        args.tokens = [DEFAULT_TOKENS.get(preset, 1024) for preset in args.presets]
    if not args.worker and len(args.tokens) != len(args.presets):
        parser.error("--tokens needs one budget per preset in --presets.")
    if args.flax_wmt and not os.path.isfile(os.path.join(args.flax_wmt, "models.py")):
        parser.error(f"--flax-wmt {args.flax_wmt} has no models.py; give the folder "
                     "examples/wmt of a google/flax checkout.")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(json.loads(args.worker))
    import peak
    import torch

    machine = common.describe_machine()
    print(common.machine_line(machine), flush=True)
    args.torch_device = "cuda" if machine["backend"] == "gpu" else "cpu"
    if not args.flax_wmt:
        print("flax wmt: skipped (no --flax-wmt folder given)")
    peaks = [peak.measure_peak(args.dtype, repeats=10)]
    checks = run_checks(args)
    text, results = "", []
    for preset, tokens in zip(args.presets, args.tokens, strict=True):
        workers = [(spec, functools.partial(start_worker, spec, args.worker_timeout))
                   for spec in specs_for(preset, tokens, args)]
        results.append(common.run_interleaved(workers, args.rounds, args.profile))
        for r in results[-1]:
            print(f"  {preset} {r['impl']:<24s} " + (r.get("error") or "best ms/step "
                  f"{min(x['round_s'] for x in r['rounds']) / r['steps'] * 1e3:.0f}"),
                  flush=True)
    peaks.append(peak.measure_peak(args.dtype, repeats=10))
    peak_flops = max(entry["peak_flops_per_s"] for entry in peaks)
    text += (f"\nLoad average at the end: {common.load_average()}. {args.dtype} matmul peak "
             f"(MFU denominator, best of the start and end of this run): "
             f"{peak_flops / 1e9:.1f} GFLOP/s (torch {torch.__version__})\n")
    print(text)
    results = [[summarize(r, peak_flops) for r in group] for group in results]
    for preset, group in zip(args.presets, results, strict=True):
        text += speed_table(preset, group, args)
        for r in group:
            if "profile" in r:
                text += profile_tables(preset, r, peak_flops)
    common.write_json(args.json, {"machine": machine, "peaks": peaks, "checks": checks,
                                  "results": results, "markdown": text, "argv": sys.argv[1:]})
    return 0 if all(check["ok"] for check in checks) else 1


if __name__ == "__main__":
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")   # workers share a GPU
    sys.exit(main())
