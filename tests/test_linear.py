"""linear.project, project_out_in and attend: the same products and gradients as
lax.dot_general under autodiff."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from flax_transformer import linear
from flax_transformer.config import ModelConfig
from flax_transformer.layers import Embedder


def _plain(inputs, kernel):
    return lax.dot_general(inputs, kernel, (((inputs.ndim - 1,), (0,)), ((), ())))


def _loss_and_grads(product, inputs, kernel, d_outputs):
    def loss(inputs, kernel):
        return jnp.sum(product(inputs, kernel).astype(jnp.float32) * d_outputs)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(inputs, kernel)


@pytest.mark.parametrize("shape", [(7, 5), (2, 3, 5), (2, 1, 3, 5)])
def test_project_matches_autodiff_of_the_plain_product(shape):
    keys = jax.random.split(jax.random.key(0), 3)
    inputs = jax.random.normal(keys[0], shape)                          # [..., I]
    kernel = jax.random.normal(keys[1], (5, 4))                         # [I, O]
    d_outputs = jax.random.normal(keys[2], (*shape[:-1], 4))            # [..., O]
    _assert_same_loss_and_grads(linear.project, _plain, inputs, kernel, d_outputs)


def _assert_same_loss_and_grads(product, plain, inputs, weight, d_outputs):
    expected = _loss_and_grads(plain, inputs, weight, d_outputs)
    got = _loss_and_grads(product, inputs, weight, d_outputs)
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-6)
    for got_grad, expected_grad in zip(got[1], expected[1], strict=True):
        assert got_grad.shape == expected_grad.shape
        np.testing.assert_allclose(got_grad, expected_grad, rtol=1e-5, atol=1e-5)


def _plain_out_in(inputs, kernel):
    return inputs @ kernel.T


@pytest.mark.parametrize("shape", [(7, 5), (2, 3, 5), (2, 1, 3, 5)])
def test_project_out_in_matches_autodiff_of_the_plain_product(shape):
    keys = jax.random.split(jax.random.key(5), 3)
    inputs = jax.random.normal(keys[0], shape)                          # [..., I]
    kernel = jax.random.normal(keys[1], (4, 5))                         # [O, I]
    d_outputs = jax.random.normal(keys[2], (*shape[:-1], 4))            # [..., O]
    _assert_same_loss_and_grads(linear.project_out_in, _plain_out_in, inputs, kernel,
                                d_outputs)


def test_project_out_in_weight_gradient_needs_no_transpose():
    """The point of the [O, I] layout: the weight gradient's product is the kernel's shape,
    and no transpose follows it."""
    inputs, kernel = jnp.ones((2, 3, 5)), jnp.ones((4, 5))
    jaxpr = jax.make_jaxpr(jax.grad(lambda k: jnp.sum(linear.project_out_in(inputs, k))))(
        kernel)
    equations = [*jaxpr.jaxpr.eqns, *_inner_equations(jaxpr.jaxpr)]
    shapes = [e.outvars[0].aval.shape for e in equations if e.primitive.name == "dot_general"]
    assert (4, 5) in shapes, shapes
    assert not [e for e in equations if e.primitive.name == "transpose"]


def test_project_keeps_low_precision_dtypes():
    keys = jax.random.split(jax.random.key(1), 3)
    inputs = jax.random.normal(keys[0], (6, 8), jnp.bfloat16)
    kernel = jax.random.normal(keys[1], (8, 3), jnp.bfloat16)
    d_outputs = jax.random.normal(keys[2], (6, 3))
    expected = _loss_and_grads(_plain, inputs, kernel, d_outputs)
    got = _loss_and_grads(linear.project, inputs, kernel, d_outputs)
    for got_grad, expected_grad in zip(got[1], expected[1], strict=True):
        assert got_grad.dtype == expected_grad.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.float32(got_grad), np.float32(expected_grad),
                                   rtol=2e-2, atol=2e-2)


def test_weight_gradient_is_the_transposed_product():
    """The point of the module: d_kernel comes from an [O, I] product, then a transpose."""
    inputs, kernel = jnp.ones((2, 3, 5)), jnp.ones((5, 4))
    jaxpr = jax.make_jaxpr(jax.grad(lambda k: jnp.sum(linear.project(inputs, k))))(kernel)
    shapes = [equation.outvars[0].aval.shape
              for equation in jaxpr.jaxpr.eqns if equation.primitive.name == "dot_general"]
    shapes += [equation.outvars[0].aval.shape for equation in _inner_equations(jaxpr.jaxpr)
               if equation.primitive.name == "dot_general"]
    assert (4, 5) in shapes, shapes


def _inner_equations(jaxpr):
    for equation in jaxpr.eqns:
        for value in equation.params.values():
            inner = getattr(value, "jaxpr", None)
            if inner is not None:
                inner = getattr(inner, "jaxpr", inner)
                yield from inner.eqns
                yield from _inner_equations(inner)


def test_dense_with_project_equals_plain_dense():
    dense = nn.Dense(6, dot_general=linear.dense_dot_general)
    plain = nn.Dense(6)
    inputs = jax.random.normal(jax.random.key(2), (2, 3, 4))
    params = plain.init(jax.random.key(3), inputs)

    def loss(module, params):
        return jnp.sum(jnp.tanh(module.apply(params, inputs)))

    expected = jax.grad(lambda p: loss(plain, p))(params)
    got = jax.jit(jax.grad(lambda p: loss(dense, p)))(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 got, expected)


@pytest.mark.parametrize("custom_gradient", [True, False])
def test_dense_out_in_is_nn_dense_with_the_kernel_transposed(custom_gradient):
    """Same initial numbers (transposed), outputs and gradients as flax's nn.Dense."""
    from flax_transformer.layers import DenseOutIn

    inputs = jax.random.normal(jax.random.key(2), (2, 3, 4))
    plain = nn.Dense(6, kernel_init=nn.initializers.xavier_uniform())
    out_in = DenseOutIn(6, custom_gradient=custom_gradient)
    params = plain.init(jax.random.key(3), inputs)["params"]
    params = {"kernel": params["kernel"],
              "bias": jax.random.normal(jax.random.key(4), (6,))}
    out_in_params = out_in.init(jax.random.key(3), inputs)["params"]
    assert out_in_params["kernel"].shape == (6, 4)                      # [O, I]
    np.testing.assert_array_equal(out_in_params["kernel"], params["kernel"].T)
    np.testing.assert_array_equal(out_in_params["bias"], np.zeros(6))

    def loss(module, params):
        return jnp.sum(jnp.tanh(module.apply({"params": params}, inputs)))

    expected = jax.value_and_grad(lambda p: loss(plain, p))(params)
    transposed = {"kernel": params["kernel"].T, "bias": params["bias"]}
    value, grads = jax.jit(jax.value_and_grad(lambda p: loss(out_in, p)))(transposed)
    np.testing.assert_allclose(value, expected[0], rtol=1e-6)
    np.testing.assert_allclose(grads["kernel"], expected[1]["kernel"].T, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grads["bias"], expected[1]["bias"], rtol=1e-5, atol=1e-6)


def test_dense_dot_general_leaves_other_products_to_lax():
    left, right = jnp.arange(6.0).reshape(2, 3), jnp.arange(6.0).reshape(2, 3)
    numbers = (((0,), (0,)), ((), ()))                      # [2, 3]ᵀ · [2, 3]: not Dense's
    np.testing.assert_allclose(linear.dense_dot_general(left, right, numbers),
                               lax.dot_general(left, right, numbers))


def _plain_attend(hidden, table):
    return hidden @ table.T


@pytest.mark.parametrize("shape", [(7, 5), (2, 3, 5)])
def test_attend_matches_autodiff_of_the_plain_product(shape):
    keys = jax.random.split(jax.random.key(2), 3)
    hidden = jax.random.normal(keys[0], shape)                          # [..., D]
    table = jax.random.normal(keys[1], (11, 5))                         # [V, D]
    d_logits = jax.random.normal(keys[2], (*shape[:-1], 11))            # [..., V]
    _assert_same_loss_and_grads(linear.attend, _plain_attend, hidden, table, d_logits)


def test_attend_table_gradient_is_the_transposed_product():
    """The table's gradient comes from a [D, V] product (hiddenᵀ · d_logits), then a transpose."""
    hidden, table = jnp.ones((2, 3, 5)), jnp.ones((11, 5))
    jaxpr = jax.make_jaxpr(jax.grad(lambda t: jnp.sum(linear.attend(hidden, t))))(table)
    shapes = [equation.outvars[0].aval.shape
              for equation in [*jaxpr.jaxpr.eqns, *_inner_equations(jaxpr.jaxpr)]
              if equation.primitive.name == "dot_general"]
    assert (5, 11) in shapes and (11, 5) not in shapes, shapes


def test_embedder_attend_equals_nn_embed_attend():
    hidden = jax.random.normal(jax.random.key(3), (2, 3, 8))
    outputs = {}
    for transposed in (True, False):
        config = ModelConfig(vocab_size=13, d_model=8, transposed_weight_gradients=transposed)
        embedder = Embedder(config)
        params = embedder.init(jax.random.key(4), jnp.zeros((2, 3), jnp.int32))

        def loss(params, hidden, embedder=embedder):
            return jnp.sum(jnp.sin(embedder.apply(params, hidden, method="attend")))
        outputs[transposed] = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, hidden)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 outputs[True], outputs[False])
