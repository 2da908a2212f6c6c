"""The arithmetic of the normalisation layers: axes, statistics, normalisation.

`LayerNorm`, `RMSNorm`, `BatchNorm`, `GroupNorm` and `InstanceNorm` all take
their statistics with `statistics` (at least float32 reductions, one collective
for all statistics under a mapped axis) and apply them with `normalize`, which
casts as Linen casts, so each layer's results are Linen's bit for bit.
"""

from __future__ import annotations

import typing as tp

import jax
import jax.numpy as jnp
from jax import lax

from nnx_bridge.nn import dtypes
from nnx_bridge.variables import Param

Axes = int | tp.Sequence[int]


def axes_tuple(axes: Axes, ndim: int) -> tuple[int, ...]:
    """`axes` (one int or several, negative allowed) as sorted non-negative axes of an ``ndim``-D array.

    Example:
        >>> from nnx_bridge.nn.moments import axes_tuple
        >>> axes_tuple(-1, 3), axes_tuple((2, 0, -1), 3)
        ((2,), (0, 2))
    """
    axes = (axes,) if isinstance(axes, int) else tuple(axes)
    return tuple(sorted({a % ndim for a in axes}))


def _abs_sq(x: jax.Array) -> jax.Array:
    if jnp.iscomplexobj(x):
        return lax.square(lax.real(x)) + lax.square(lax.imag(x))
    return lax.square(x)


def statistics(
    x: jax.Array,
    axes: tuple[int, ...],
    *,
    dtype: tp.Any,
    use_mean: bool,
    use_fast_variance: bool,
    mask: jax.Array | None,
    axis_name: str | None,
) -> tuple[jax.Array, jax.Array]:
    """Mean and (biased) variance of ``x`` over ``axes``, in at least float32.

    Args:
      x: the input.
      axes: the axes to reduce.
      dtype: the layer's computation dtype (the reduction uses at least float32).
      use_mean: False gives a zero mean and the mean square as variance (RMSNorm).
      use_fast_variance: the variance as ``E[|x|^2] - |E[x]|^2`` (else ``E[|x - E[x]|^2]``).
      mask: which entries count (broadcastable to ``x``), or None for all.
      axis_name: a mapped axis to average the statistics over, or None.

    Example:
        >>> import jax.numpy as jnp
        >>> from nnx_bridge.nn.moments import statistics
        >>> mean, var = statistics(jnp.array([[1.0, 3.0]]), (1,), dtype=None, use_mean=True,
        ...                        use_fast_variance=False, mask=None, axis_name=None)
        >>> mean.tolist(), var.tolist()
        ([2.0], [1.0])
    """
    x = jnp.asarray(x)
    x = x.astype(jnp.promote_types(x.dtype if dtype is None else dtype, jnp.float32))
    where = None if mask is None else jnp.asarray(mask, dtype=bool)

    def means(*arrays: jax.Array) -> list[jax.Array]:
        out = [a.mean(axes, where=where) for a in arrays]
        if axis_name is not None:  # one collective for all statistics
            stacked = lax.pmean(jnp.stack(out), axis_name)
            out = [stacked[i] for i in range(len(out))]
        return out

    if not use_mean:
        (var,) = means(_abs_sq(x))
        return jnp.zeros_like(var), var
    if use_fast_variance:
        mean, mean_sq = means(x, _abs_sq(x))
        return mean, jnp.maximum(0.0, mean_sq - _abs_sq(mean))
    (mean,) = means(x)
    (var,) = means(_abs_sq(x - jnp.expand_dims(mean, axes)))
    return mean, var


def normalize(
    x: jax.Array,
    mean: jax.Array,
    var: jax.Array,
    reduction_axes: tuple[int, ...],
    feature_axes: int | tuple[int, ...],
    *,
    epsilon: float,
    scale: Param[jax.Array] | None,
    bias: Param[jax.Array] | None,
    dtype: tp.Any,
) -> jax.Array:
    """``(x - mean) * rsqrt(var + epsilon) * scale + bias``, cast as Linen casts it.

    Args:
      x: the input.
      mean: its mean over `reduction_axes` (those axes removed).
      var: its variance over `reduction_axes`.
      reduction_axes: the axes the statistics were taken over.
      feature_axes: the axis or axes `scale` and `bias` span.
      epsilon: added to the variance.
      scale: the layer's scale Param, or None.
      bias: the layer's bias Param, or None.
      dtype: the result dtype; None infers it from ``x``, scale and bias.

    Example:
        >>> import jax.numpy as jnp
        >>> from nnx_bridge.nn.moments import normalize, statistics
        >>> x = jnp.array([[1.0, 3.0]])
        >>> mean, var = statistics(x, (1,), dtype=None, use_mean=True, use_fast_variance=True,
        ...                        mask=None, axis_name=None)
        >>> normalize(x, mean, var, (1,), 0, epsilon=0.0, scale=None, bias=None, dtype=None).tolist()
        [[-1.0, 1.0]]
    """
    feature_shape = [1] * x.ndim
    for axis in (feature_axes,) if isinstance(feature_axes, int) else feature_axes:
        feature_shape[axis] = x.shape[axis]
    y = x - jnp.expand_dims(mean, reduction_axes)
    multiplier = lax.rsqrt(jnp.expand_dims(var, reduction_axes) + epsilon)
    operands = [x]
    if scale is not None:
        scale_value = scale.value.reshape(feature_shape)
        multiplier = multiplier * scale_value
        operands.append(scale_value)
    y = y * multiplier
    if bias is not None:
        bias_value = bias.value.reshape(feature_shape)
        y = y + bias_value
        operands.append(bias_value)
    return jnp.asarray(y, dtypes.canonicalize_dtype(*operands, dtype=dtype))
