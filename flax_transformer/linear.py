"""x · W for the Dense layers, with its weight gradient in the form matmul libraries favour.

A Dense layer computes ``outputs[..., O] = inputs[..., I] · kernel[I, O]``. Its weight
gradient sums over every position: ``d_kernel[I, O] = Σ_t inputs[t, I] · d_outputs[t, O]``.
XLA:CPU (jax 0.10) keeps ``d_outputs`` as [O, T] in memory there, so the product it emits
for autodiff's form has *both* operands transposed. YNNPACK, which runs the step's other
matmuls, does not take that form, and Eigen runs it at about a third of their rate.
``project`` computes the transpose instead, ``d_kernel[O, I]ᵀ = (d_outputs[O, T] ·
inputs[T, I])ᵀ``: a plain product of the layouts that are already there. An optimisation
barrier keeps XLA's simplifier from folding the transpose back into the product; XLA then
fuses the transpose of the small [O, I] result into the optimizer's update.

The forward product and the input gradient are autodiff's own; the values are the same
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
