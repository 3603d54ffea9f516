"""training.py: the schedule, the optimizer recipe and the pure train/eval steps."""

import dataclasses
import functools
import re

import flax.jax_utils
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flax_transformer import training
from flax_transformer.config import ConfigError
from flax_transformer.model import stack_layers
from tests.helpers import kind_config, micro_config, random_batch
from tests.test_parallel import _assert_same_updates


def test_schedule_is_the_papers_formula():
    config = micro_config()
    train = dataclasses.replace(config.train, warmup_steps=4000, learning_rate_scale=1.0)
    schedule = training.learning_rate_schedule(train, 512)
    for step in (1, 100, 3999, 4000, 4001, 20000):
        expected = 512 ** -0.5 * min(step ** -0.5, step * 4000 ** -1.5)
        np.testing.assert_allclose(float(schedule(step - 1)), expected, rtol=1e-5)
    peak = float(schedule(3999))
    assert peak > float(schedule(3000)) and peak > float(schedule(6000))


def test_cooldown_anneals_the_papers_schedule_linearly_to_zero():
    config = micro_config()
    paper = dataclasses.replace(config.train, warmup_steps=100, num_steps=1000)
    cooled = dataclasses.replace(paper, cooldown_steps=400)
    reference = training.learning_rate_schedule(paper, 64)
    schedule = training.learning_rate_schedule(cooled, 64)
    for step in (1, 100, 600):                       # before the cool-down: unchanged
        np.testing.assert_allclose(float(schedule(step - 1)), float(reference(step - 1)))
    for step in (601, 800, 1000):                    # (1000 - step + 1) / 400 of the paper's
        factor = (1000 - step + 1) / 400
        np.testing.assert_allclose(float(schedule(step - 1)),
                                   factor * float(reference(step - 1)), rtol=1e-5)
    assert float(schedule(1000)) == 0.0              # past the end: nothing moves
    refusal = re.escape("cooldown_steps=2000 exceeds train.num_steps=1000")
    with pytest.raises(ConfigError, match=refusal):
        dataclasses.replace(cooled, cooldown_steps=2000).validate()


def test_optimizer_is_adam_with_the_papers_betas():
    config = micro_config()
    params = {"w": jnp.array([1.0, -2.0, 0.5])}
    grads = {"w": jnp.array([0.3, -0.1, 2.0])}
    optimizer = training.make_optimizer(config.train, config.model.d_model)
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    lr = training.learning_rate_schedule(config.train, config.model.d_model)(0)
    # After one step Adam's bias-corrected update is -lr * g / (|g| + eps).
    g = np.asarray(grads["w"])
    np.testing.assert_allclose(np.asarray(updates["w"]), -lr * g / (np.abs(g) + 1e-9), rtol=1e-5)
    assert (config.train.adam_beta1, config.train.adam_beta2, config.train.adam_epsilon) == (
        0.9, 0.98, 1e-9)


def test_train_step_learns_a_fixed_batch_and_counts_steps():
    config = micro_config(learning_rate_scale=1.0)
    state = training.create_train_state(config, jax.random.key(0))
    batch = random_batch(np.random.default_rng(0))
    step = jax.jit(lambda s, b, r: training.train_step(s, b, r, config=config))
    first = None
    for index in range(60):
        state, metrics = step(state, batch, jax.random.key(index))
        first = first or training.summarize(metrics)["loss"]
    last = training.summarize(metrics)
    assert int(state.step) == 60
    assert last["loss"] < 0.5 * first
    assert last["accuracy"] > 0.5
    weights = float(np.count_nonzero(batch["target_output"]))
    assert float(metrics["loss"][1]) == weights


def test_dropout_uses_the_rng_and_eval_is_deterministic():
    config = micro_config()
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, dropout_rate=0.3))
    state = training.create_train_state(config, jax.random.key(0))
    batch = random_batch(np.random.default_rng(1))
    run = jax.jit(lambda r: training.train_step(state, batch, r, config=config)[1]["loss"][0])
    assert float(run(jax.random.key(1))) != float(run(jax.random.key(2)))
    assert float(run(jax.random.key(1))) == float(run(jax.random.key(1)))
    evaluate = jax.jit(lambda p: training.eval_step(p, batch, config=config)["loss"][0])
    assert float(evaluate(state.params)) == float(evaluate(state.params))


def test_gradient_accumulation_applies_one_update_per_k_steps():
    config = micro_config(gradient_accumulation=2)
    state = training.create_train_state(config, jax.random.key(0))
    batch = random_batch(np.random.default_rng(2))
    step = jax.jit(lambda s, b, r: training.train_step(s, b, r, config=config))
    after_one, _ = step(state, batch, jax.random.key(0))
    after_two, _ = step(after_one, batch, jax.random.key(1))
    unchanged = jax.tree.leaves(jax.tree.map(jnp.array_equal, state.params, after_one.params))
    changed = jax.tree.leaves(jax.tree.map(jnp.array_equal, state.params, after_two.params))
    assert all(unchanged) and not all(changed)


def test_ema_tracks_parameters():
    config = micro_config(ema_decay=0.5)
    state = training.create_train_state(config, jax.random.key(0))
    batch = random_batch(np.random.default_rng(3))
    new_state, _ = training.train_step(state, batch, jax.random.key(0), config=config)
    expected = jax.tree.map(lambda old, new: 0.5 * old + 0.5 * new, state.params,
                            new_state.params)
    for got, want in zip(jax.tree.leaves(new_state.ema_params), jax.tree.leaves(expected),
                         strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_clipping_bounds_the_update():
    config = micro_config(gradient_clip_norm=1e-3)
    optimizer = training.make_optimizer(config.train, config.model.d_model)
    params = {"w": jnp.ones(3)}
    chained = optax.clip_by_global_norm(1e-3)
    clipped, _ = chained.update({"w": jnp.full(3, 10.0)}, chained.init(params))
    assert float(optax.global_norm(clipped)) == pytest.approx(1e-3, rel=1e-4)
    optimizer.init(params)  # the chain builds with clipping enabled


def test_flops_formula_matches_xla_cost_analysis():
    config = micro_config()
    state = training.create_train_state(config, jax.random.key(0))
    batch = random_batch(np.random.default_rng(4), rows=8, length=16)
    step = jax.jit(lambda s, b: training.train_step(s, b, jax.random.key(0), config=config))
    compiled = step.lower(state, batch).compile()
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    formula = training.train_flops_per_step(config.model, 8, 16, 16)
    # XLA also counts softmax, norms, the optimizer and elementwise work: same order.
    assert 0.5 * formula < analysis["flops"] < 3.0 * formula


def test_parameter_count_of_the_micro_model():
    config = micro_config()
    d, f, v = 32, 64, 64
    attention = 4 * d * d
    ffn = d * f + f + f * d + d
    norms = 2 * d
    expected = v * d + (attention + ffn + 2 * norms) + (2 * attention + ffn + 3 * norms)
    assert training.parameter_count(config.model) == expected


def test_train_step_applies_the_states_own_optimizer():
    """The optimizer is built once (create_train_state) and carried as state.tx."""
    config = micro_config()
    state = training.create_train_state(config, jax.random.key(0))
    assert jax.tree.leaves(state) == jax.tree.leaves(
        (state.step, state.params, state.opt_state, state.ema_params))  # tx is no leaf
    frozen = optax.set_to_zero()
    state = state.replace(tx=frozen, opt_state=frozen.init(state.params))
    batch = random_batch(np.random.default_rng(5))
    new_state, _ = jax.jit(lambda s, b: training.train_step(s, b, jax.random.key(0),
                                                            config=config))(state, batch)
    assert int(new_state.step) == 1 and new_state.tx is frozen
    for got, want in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(state.params),
                         strict=True):
        np.testing.assert_array_equal(got, want)


KINDS = ("encoder_decoder", "decoder_only", "encoder_only")


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_learns_a_fixed_batch(kind):
    config = kind_config(kind, learning_rate_scale=1.0)
    state = training.create_train_state(config, jax.random.key(0))
    batch = random_batch(np.random.default_rng(5))
    step = jax.jit(lambda s, b, r: training.train_step(s, b, r, config=config))
    losses = []
    for _ in range(60):
        # The same key every step: the same tokens are masked, so the batch stays fixed.
        state, metrics = step(state, batch, jax.random.key(0))
        losses.append(training.summarize(metrics)["loss"])
    assert losses[-1] < 0.5 * losses[0]
    scored = float(metrics["loss"][1])
    if kind == "encoder_only":  # Binomial(real tokens, 0.15) positions; EOS never
        real = np.count_nonzero(batch["target_output"] > 4)
        assert abs(scored - 0.15 * real) <= 5 * np.sqrt(real * 0.15 * 0.85) and scored >= 1
    else:
        assert scored == np.count_nonzero(batch["target_output"])


def test_kinds_have_their_own_parameters():
    trees = {kind: jax.eval_shape(lambda k=kind: training.init_params(
        kind_config(k).model, jax.random.key(0))) for kind in KINDS}
    assert "encoder" in trees["encoder_decoder"] and "decoder" in trees["encoder_decoder"]
    assert "decoder" in trees["decoder_only"] and "encoder" not in trees["decoder_only"]
    assert "encoder" in trees["encoder_only"] and "head_bias" in trees["encoder_only"]


def test_encoder_only_eval_scores_fixed_positions_and_needs_them():
    config = kind_config("encoder_only")
    params = training.create_train_state(config, jax.random.key(0)).params
    batch = random_batch(np.random.default_rng(6))
    first = training.add_eval_masks(batch, config, index=3)
    again = training.add_eval_masks(batch, config, index=3)
    other = training.add_eval_masks(batch, config, index=4)
    np.testing.assert_array_equal(first["mask_weights"], again["mask_weights"])
    assert not np.array_equal(first["mask_weights"], other["mask_weights"])
    metrics = training.eval_step(params, first, config=config)
    assert float(metrics["accuracy"][1]) == first["mask_weights"].sum() > 0
    with pytest.raises(ValueError, match="masked_input"):
        training.eval_step(params, batch, config=config)
    assert training.add_eval_masks(batch, kind_config("decoder_only"), 0) is batch


def test_masked_training_on_4_devices_equals_one_device():
    """The masking draws follow global rows, so pmap over 4 devices changes nothing."""
    config = kind_config("encoder_only")
    state = training.create_train_state(config, jax.random.key(0))
    batch = random_batch(np.random.default_rng(7), rows=8)
    single, single_metrics = jax.jit(
        lambda s, b, r: training.train_step(s, b, r, config=config))(state, batch,
                                                                       jax.random.key(3))
    devices = jax.local_devices()[:4]
    pmapped = jax.pmap(lambda s, b, r: training.train_step(s, b, r, config=config,
                                                           axis_name="data"),
                       axis_name="data", in_axes=(0, 0, None), devices=devices)
    shards = {key: value.reshape(4, 2, *value.shape[1:]) for key, value in batch.items()}
    replicated = flax.jax_utils.replicate(state, devices)
    multi, multi_metrics = pmapped(replicated, shards, jax.random.key(3))
    assert float(multi_metrics["loss"][1][0]) == float(single_metrics["loss"][1])
    # Sums over 4 shards round differently from one sum: compare to the update's size.
    for got, want, before in zip(jax.tree.leaves(multi.params), jax.tree.leaves(single.params),
                                 jax.tree.leaves(state.params), strict=True):
        scale = float(np.max(np.abs(np.asarray(want) - np.asarray(before)))) + 1e-12
        np.testing.assert_allclose(np.asarray(got[0]), np.asarray(want), atol=1e-3 * scale)


@pytest.mark.parametrize("kind", ("decoder_only", "encoder_only"))
def test_flops_formula_of_the_other_kinds_matches_xla(kind):
    config = kind_config(kind)
    state = training.create_train_state(config, jax.random.key(0))
    batch = random_batch(np.random.default_rng(8), rows=8, length=16)
    step = jax.jit(lambda s, b: training.train_step(s, b, jax.random.key(0), config=config))
    analysis = step.lower(state, batch).compile().cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    formula = training.train_flops_per_step(config.model, 8, 16, 16)
    assert 0.5 * formula < analysis["flops"] < 3.0 * formula


@pytest.mark.parametrize("devices, sums", ((1, False), (4, True)))
def test_the_step_sums_across_devices_only_when_there_are_several(devices, sums):
    """pmap over one device (a machine with one CPU or GPU) has nothing to sum.

    XLA:CPU keeps even a one-device all-reduce, with its own copy of every gradient.
    """
    config = micro_config()
    state = training.train_state_shapes(config)
    batch = random_batch(np.random.default_rng(0), rows=2)
    jaxpr = jax.make_jaxpr(
        lambda s, b, r: training.train_step(s, b, r, config=config, axis_name="data"),
        axis_env=[("data", devices)])(state, batch, jax.random.key(0))
    assert ("psum" in str(jaxpr)) == sums


def test_a_scanned_model_starts_from_and_trains_like_its_unrolled_twin():
    """scan_layers: the same initial numbers (stacked) and the same steps."""
    config = micro_config(learning_rate_scale=1.0)
    config = dataclasses.replace(config, model=dataclasses.replace(
        config.model, num_encoder_layers=2, num_decoder_layers=3))
    scanned = dataclasses.replace(config, model=dataclasses.replace(config.model,
                                                                    scan_layers=True))
    states = [training.create_train_state(c, jax.random.key(0)) for c in (config, scanned)]
    stacked = stack_layers(states[0].params, config.model)
    assert jax.tree.structure(states[1].params) == jax.tree.structure(stacked)
    for leaf, expected in zip(jax.tree.leaves(states[1].params), jax.tree.leaves(stacked),
                              strict=True):
        np.testing.assert_array_equal(leaf, expected)
    batch = random_batch(np.random.default_rng(0))
    losses = [[], []]
    for index, c in enumerate((config, scanned)):
        step = jax.jit(lambda s, b, c=c: training.train_step(s, b, jax.random.key(0), config=c))
        for _ in range(3):
            states[index], metrics = step(states[index], batch)
            losses[index].append(training.summarize(metrics)["loss"])
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
    assert losses[0][-1] < losses[0][0]
    for leaf, expected in zip(jax.tree.leaves(states[1].params),
                              jax.tree.leaves(stack_layers(states[0].params, config.model)),
                              strict=True):
        np.testing.assert_allclose(leaf, expected, atol=1e-5)


@pytest.mark.parametrize("kind", ["encoder_decoder", "decoder_only"])
def test_transposed_weight_gradients_train_like_autodiffs(kind):
    """model.transposed_weight_gradients (linear.py) changes how the Dense weight
    gradients are computed, not what they are: the same gradients and the same steps."""
    config = kind_config(kind, learning_rate_scale=1.0, adam_epsilon=1e-6)
    assert config.model.transposed_weight_gradients
    autodiff = dataclasses.replace(config, model=dataclasses.replace(
        config.model, transposed_weight_gradients=False))
    batch = random_batch(np.random.default_rng(1))
    start = training.create_train_state(config, jax.random.key(0))
    initial = jax.device_get(start.params)
    programs = [str(jax.make_jaxpr(functools.partial(
        training.train_step, batch=batch, rng=jax.random.key(3), config=c))(start))
        for c in (config, autodiff)]                   # linear.project's barrier, or not
    assert "optimization_barrier" in programs[0] and "optimization_barrier" not in programs[1]
    params, losses = [], []
    for c in (config, autodiff):
        state = start
        step = jax.jit(lambda s, b, c=c: training.train_step(s, b, jax.random.key(3), config=c))
        run = []
        for _ in range(3):
            state, metrics = step(state, batch)
            run.append(training.summarize(metrics)["loss"])
        params.append(jax.device_get(state.params))
        losses.append(run)
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
    assert losses[0][-1] < losses[0][0]
    _assert_same_updates(params[0], params[1], initial)


def _copied_parameters(config) -> list[str]:
    """Entry parameters of the compiled, state-donating step that XLA copies whole."""
    state = training.create_train_state(config, jax.random.key(0))
    batch = random_batch(np.random.default_rng(0))
    step = jax.jit(functools.partial(training.train_step, config=config), donate_argnums=0)
    text = step.lower(state, batch, jax.random.key(1)).compile().as_text()
    entry = text[text.index("ENTRY"):]
    parameters = set(re.findall(r"(%?[\w.\-]+) = f32\[\d+(?:,\d+)*\]\S* parameter\(", entry))
    return [name for name in re.findall(r"= f32\[[\d,]*\]\S* copy\((%?[\w.\-]+)\)", entry)
            if name in parameters]


@pytest.mark.parametrize("kind", ["encoder_decoder", "decoder_only"])
def test_the_step_updates_parameters_in_place(kind, monkeypatch):
    """No weight is copied before its update (training._after): without the ordering,
    XLA copies every parameter whose old value a backward matmul also reads."""
    config = kind_config(kind)
    assert _copied_parameters(config) == []
    monkeypatch.setattr(training, "_after", lambda params, grad_norm: params)
    assert len(_copied_parameters(config)) >= 4      # the check sees the copies it forbids


@pytest.mark.parametrize("value", [0.0, 3.5, np.inf, np.nan])
def test_ordering_the_update_leaves_parameters_bitwise_equal(value):
    params = {"w": jnp.array([-0.0, 0.0, 1.5, -2.0, np.inf, -np.inf, 1e-45], jnp.float32),
              "h": jnp.array([-0.0, 2.0], jnp.bfloat16)}
    ordered = jax.jit(training._after)(params, jnp.float32(value))
    for leaf, expected in zip(jax.tree.leaves(ordered), jax.tree.leaves(params), strict=True):
        assert leaf.dtype == expected.dtype
        np.testing.assert_array_equal(np.asarray(leaf).view(np.uint8),
                                      np.asarray(expected).view(np.uint8))
