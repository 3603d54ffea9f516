"""x · W for the Dense layers and the tied output projection, with weight gradients in the
form matmul libraries favour.

A Dense layer computes ``outputs[..., O] = inputs[..., I] · kernel[I, O]``. Its weight
gradient sums over every position: ``d_kernel[I, O] = Σ_t inputs[t, I] · d_outputs[t, O]``.
XLA:CPU (jax 0.10) keeps ``d_outputs`` as [O, T] in memory there, so the product it emits
for autodiff's form has *both* operands transposed. YNNPACK, which runs the step's other
matmuls, does not take that form, and Eigen runs it at about a third of their rate.
``project`` computes the transpose instead, ``d_kernel[O, I]ᵀ = (d_outputs[O, T] ·
inputs[T, I])ᵀ``: a plain product of the layouts that are already there. An optimisation
barrier keeps XLA's simplifier from folding the transpose back into the product; XLA then
fuses the transpose of the small [O, I] result into the optimizer's update.

``attend`` does the same for the tied output projection, hidden · tableᵀ.

``project_out_in`` is the product for kernels stored [O, I] (``model.kernel_layout =
"out_in"``, as ``torch.nn.Linear`` stores them): the weight gradient ``dY[O, T] · X[T, I]``
is then the kernel's own layout, with no transpose left for the optimizer to read with a
stride (base step on two CPU cores: about 10 % faster).

The forward products and the input gradients are autodiff's own; the values are the same
up to float rounding (tests/test_linear.py).
"""

from __future__ import annotations

import functools

import jax
from jax import lax

Array = jax.Array


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def project(inputs: Array, kernel: Array, precision=None) -> Array:
    """inputs [..., I] · kernel [I, O] -> [..., O]."""
    return lax.dot_general(inputs, kernel, (((inputs.ndim - 1,), (0,)), ((), ())),
                           precision=precision)


def _project_forward(inputs, kernel, precision):
    return project(inputs, kernel, precision), (inputs, kernel)


def _project_backward(precision, residuals, d_outputs):
    inputs, kernel = residuals                                          # [..., I], [I, O]
    d_inputs = lax.dot_general(d_outputs, kernel,                      # [..., O]·[I, O]ᵀ
                               (((d_outputs.ndim - 1,), (1,)), ((), ())), precision=precision)
    positions = tuple(range(d_outputs.ndim - 1))
    d_kernel_t = lax.dot_general(d_outputs, inputs,                     # [O, I]
                                 ((positions, positions), ((), ())), precision=precision)
    d_kernel = lax.optimization_barrier(d_kernel_t).T                   # [I, O]
    return d_inputs.astype(inputs.dtype), d_kernel.astype(kernel.dtype)


project.defvjp(_project_forward, _project_backward)


def product_out_in(inputs: Array, kernel: Array, precision=None) -> Array:
    """inputs [..., I] · kernel [O, I]ᵀ -> [..., O], differentiated by autodiff."""
    return lax.dot_general(inputs, kernel, (((inputs.ndim - 1,), (1,)), ((), ())),
                           precision=precision)


# The same product with the weight gradient written as dY[O, T] · X[T, I] (below).
project_out_in = jax.custom_vjp(product_out_in, nondiff_argnums=(2,))


def _project_out_in_forward(inputs, kernel, precision):
    return project_out_in(inputs, kernel, precision), (inputs, kernel)


def _project_out_in_backward(precision, residuals, d_outputs):
    inputs, kernel = residuals                                          # [..., I], [O, I]
    d_inputs = lax.dot_general(d_outputs, kernel,                      # [..., O]·[O, I]
                               (((d_outputs.ndim - 1,), (0,)), ((), ())), precision=precision)
    positions = tuple(range(d_outputs.ndim - 1))
    d_kernel = lax.dot_general(d_outputs, inputs,                       # [O, I]
                               ((positions, positions), ((), ())), precision=precision)
    return d_inputs.astype(inputs.dtype), d_kernel.astype(kernel.dtype)


project_out_in.defvjp(_project_out_in_forward, _project_out_in_backward)


@jax.custom_vjp
def attend(hidden: Array, table: Array) -> Array:
    """hidden [..., D] · table [V, D]ᵀ -> [..., V]: the tied output projection.

    Its table gradient is ``d_table[V, D] = Σ_t d_logits[t, V] · hidden[t, D]``. For
    autodiff's form XLA:CPU first copies d_logits [T, V] into [V, T] (125 MiB in a base
    step, vocabulary 32,000); here the product is ``(hidden[D, T] · d_logits[T, V])ᵀ``,
    whose only transposed operand is the small hidden [T, D], and XLA fuses the transpose
    of the [D, V] result into the sum with the embedding's other gradients.
    """
    return lax.dot_general(hidden, table, (((hidden.ndim - 1,), (1,)), ((), ())))


def _attend_forward(hidden, table):
    return attend(hidden, table), (hidden, table)


def _attend_backward(residuals, d_logits):
    hidden, table = residuals                                           # [..., D], [V, D]
    d_hidden = lax.dot_general(d_logits, table,                         # [..., V]·[V, D]
                               (((d_logits.ndim - 1,), (0,)), ((), ())))
    positions = tuple(range(d_logits.ndim - 1))
    d_table_t = lax.dot_general(hidden, d_logits, ((positions, positions), ((), ())))  # [D, V]
    d_table = lax.optimization_barrier(d_table_t).T                     # [V, D]
    return d_hidden.astype(hidden.dtype), d_table.astype(table.dtype)


attend.defvjp(_attend_forward, _attend_backward)


def dense_dot_general(inputs: Array, kernel: Array, dimension_numbers, precision=None,
                      preferred_element_type=None) -> Array:
    """``project`` with ``lax.dot_general``'s signature, for ``nn.Dense(dot_general=...)``.

    Only the product nn.Dense asks for (last axis of the inputs with the kernel's first)
    is accepted; any other falls back to ``lax.dot_general``.
    """
    standard = (((inputs.ndim - 1,), (0,)), ((), ()))
    if (tuple(map(tuple, dimension_numbers[0])), tuple(map(tuple, dimension_numbers[1]))) \
            != standard or kernel.ndim != 2 or preferred_element_type is not None:
        return lax.dot_general(inputs, kernel, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type)
    return project(inputs, kernel, precision)
