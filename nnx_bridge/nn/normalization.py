"""Normalisation layers: `LayerNorm`, `RMSNorm` and `BatchNorm`, with Linen's arithmetic.

Statistics are computed in at least float32 (so bfloat16 inputs are reduced in
float32), the variance by default as ``E[|x|^2] - |E[x]|^2`` clipped at zero
(``use_fast_variance=True``), and the result is cast to ``dtype`` or, when that
is None, to the promoted dtype of the input and the parameters — all as Linen.
"""

from __future__ import annotations

import typing as tp

import jax
import jax.numpy as jnp

from nnx_bridge.context import Context
from nnx_bridge.module import Module
from nnx_bridge.nn import dtypes, modes, moments
from nnx_bridge.nn.moments import Axes
from nnx_bridge.nn.params import (
    Initializer,
    check_shapes,
    default_bias_init,
    default_scale_init,
    make_param,
)
from nnx_bridge.variables import BatchStat, Param, check_sharding


def _check_features(layer: str, num_features: int, x: jax.Array, axis: int) -> None:
    shape = jnp.shape(x)
    where = "the last axis" if axis == -1 else f"axis {axis}"
    if not -len(shape) <= axis < len(shape):
        raise ValueError(
            f"{layer}(num_features={num_features}) normalises {where} of its input, but the "
            f"input has shape {shape}."
        )
    if shape[axis] != num_features:
        raise ValueError(
            f"{layer}(num_features={num_features}) expects {where} of its input to have size "
            f"{num_features}; found shape {shape}. Build the layer with num_features={shape[axis]}."
        )


def _normalize_last_axis(
    layer: LayerNorm | RMSNorm,
    x: jax.Array,
    mask: jax.Array | None,
    *,
    use_mean: bool,
    use_fast_variance: bool,
    bias: Param[jax.Array] | None,
) -> jax.Array:
    """`LayerNorm` (``use_mean``) and `RMSNorm` (no mean, no bias): features on the last axis."""
    _check_features(type(layer).__name__, layer.num_features, x, -1)
    axes = moments.axes_tuple(layer.reduction_axes, jnp.ndim(x))
    mean, var = moments.statistics(
        x,
        axes,
        dtype=layer.dtype,
        use_mean=use_mean,
        use_fast_variance=use_fast_variance,
        mask=mask,
        axis_name=layer.axis_name,
    )
    return moments.normalize(
        x, mean, var, axes, -1, epsilon=layer.epsilon, scale=layer.scale, bias=bias, dtype=layer.dtype
    )


class LayerNorm(Module):
    """Layer normalisation over the last axis (Linen's ``nn.LayerNorm``).

    Args:
      num_features: size of the last (feature) axis.
      ctx: the Context the ``params`` keys come from.
      epsilon: added to the variance.
      use_bias: whether to add a learned bias.
      use_scale: whether to multiply by a learned scale.
      reduction_axes: axes the statistics are computed over (default: the last).
      dtype: result dtype; None infers it from the input and parameters.
      param_dtype: storage dtype of the parameters.
      use_fast_variance: compute the variance as ``E[x^2] - E[x]^2`` (Linen's default).
      axis_name: a mapped axis (``pmap``/``shard_map``/``vmap``) to average statistics over.
      scale_init: initialiser of the scale (default: ones).
      bias_init: initialiser of the bias (default: zeros).
      sharding: one axis name for the feature axis of scale and bias.

    Variables: params ``scale`` and ``bias``, both of shape ``(num_features,)``.

    Example:
        >>> import jax.numpy as jnp, nnx_bridge as nnx
        >>> norm = nnx.nn.LayerNorm(3, ctx=nnx.Context(0))
        >>> print(norm(jnp.array([[1.0, 2.0, 3.0]])).round(3))
        [[-1.225  0.     1.225]]
    """

    def __init__(
        self,
        num_features: int,
        *,
        ctx: Context,
        epsilon: float = 1e-6,
        use_bias: bool = True,
        use_scale: bool = True,
        reduction_axes: Axes = -1,
        dtype: tp.Any = None,
        param_dtype: tp.Any = jnp.float32,
        use_fast_variance: bool = True,
        axis_name: str | None = None,
        scale_init: Initializer = default_scale_init,
        bias_init: Initializer = default_bias_init,
        sharding: tp.Sequence[str | None] | None = None,
    ):
        sharding = check_sharding(sharding, 1, where="LayerNorm", what="scale and bias (num_features,)")
        self.num_features = int(num_features)
        self.epsilon = float(epsilon)
        self.reduction_axes = reduction_axes if isinstance(reduction_axes, int) else tuple(reduction_axes)
        self.dtype = dtypes.as_dtype(dtype)
        self.use_fast_variance = bool(use_fast_variance)
        self.axis_name = axis_name
        shape = (self.num_features,)
        self.scale = make_param(ctx, scale_init, shape, param_dtype, sharding) if use_scale else None
        self.bias = make_param(ctx, bias_init, shape, param_dtype, sharding) if use_bias else None

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        """Normalises ``x``; ``mask`` (broadcastable to ``x``) selects the entries the statistics count."""
        check_shapes(self, "num_features", scale=(self.num_features,), bias=(self.num_features,))
        return _normalize_last_axis(
            self, x, mask, use_mean=True, use_fast_variance=self.use_fast_variance, bias=self.bias
        )


class RMSNorm(Module):
    """Root-mean-square normalisation over the last axis (Linen's ``nn.RMSNorm``).

    Like `LayerNorm` without centring and without a bias: ``x * rsqrt(mean(x^2) + epsilon) * scale``.

    Args:
      num_features: size of the last (feature) axis.
      ctx: the Context the ``params`` key comes from.
      epsilon: added to the mean square.
      use_scale: whether to multiply by a learned scale.
      reduction_axes: axes the statistics are computed over (default: the last).
      dtype: result dtype; None infers it from the input and parameters.
      param_dtype: storage dtype of the parameters.
      axis_name: a mapped axis to average statistics over.
      scale_init: initialiser of the scale (default: ones).
      sharding: one axis name for the feature axis of the scale.

    Variables: params ``scale`` of shape ``(num_features,)``.

    Example:
        >>> import jax.numpy as jnp, nnx_bridge as nnx
        >>> norm = nnx.nn.RMSNorm(2, ctx=nnx.Context(0))
        >>> y = norm(jnp.array([[3.0, 4.0]]))  # rms = sqrt((9 + 16) / 2)
        >>> [round(float(v), 3) for v in y[0]]
        [0.849, 1.131]
    """

    def __init__(
        self,
        num_features: int,
        *,
        ctx: Context,
        epsilon: float = 1e-6,
        use_scale: bool = True,
        reduction_axes: Axes = -1,
        dtype: tp.Any = None,
        param_dtype: tp.Any = jnp.float32,
        axis_name: str | None = None,
        scale_init: Initializer = default_scale_init,
        sharding: tp.Sequence[str | None] | None = None,
    ):
        sharding = check_sharding(sharding, 1, where="RMSNorm", what="scale (num_features,)")
        self.num_features = int(num_features)
        self.epsilon = float(epsilon)
        self.reduction_axes = reduction_axes if isinstance(reduction_axes, int) else tuple(reduction_axes)
        self.dtype = dtypes.as_dtype(dtype)
        self.axis_name = axis_name
        self.scale = (
            make_param(ctx, scale_init, (self.num_features,), param_dtype, sharding) if use_scale else None
        )

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        """Normalises ``x``; ``mask`` (broadcastable to ``x``) selects the entries the statistics count."""
        check_shapes(self, "num_features", scale=(self.num_features,))
        return _normalize_last_axis(self, x, mask, use_mean=False, use_fast_variance=True, bias=None)


class BatchNorm(Module):
    """Batch normalisation with running statistics (Linen's ``nn.BatchNorm``).

    In training (``use_running_average=False``) it normalises with the batch's
    statistics and updates the running ones in place:
    ``mean = momentum * mean + (1 - momentum) * batch_mean`` (likewise ``var``,
    with the biased batch variance). In evaluation (``True``) it uses the
    running statistics and changes nothing. While initialising
    (``is_initializing()``, the Linen bridge's ``init``) it behaves as Linen's:
    batch statistics of the local batch only (no ``axis_name`` mean, so
    ``jax.jit(model.init)`` runs outside ``pmap``) and no update.

    Args:
      num_features: size of the feature axis.
      ctx: the Context the ``params`` keys come from.
      use_running_average: default for the call's argument (None: the call must give it).
      axis: the feature axis (default: the last); every other axis is reduced.
      momentum: decay of the running statistics.
      epsilon: added to the variance.
      use_bias: whether to add a learned bias.
      use_scale: whether to multiply by a learned scale.
      dtype: result dtype; None infers it from the input and parameters.
      param_dtype: storage dtype of the parameters (statistics are always float32).
      use_fast_variance: compute the variance as ``E[x^2] - E[x]^2`` (Linen's default).
      axis_name: a mapped axis (``pmap``/``shard_map``/``vmap``) to average the
        batch statistics over, for cross-device batch norm.
      scale_init: initialiser of the scale (default: ones).
      bias_init: initialiser of the bias (default: zeros).
      sharding: one axis name for the feature axis of every variable.

    Variables: params ``scale`` and ``bias`` and batch_stats ``mean`` (zeros)
    and ``var`` (ones), all of shape ``(num_features,)``.

    Example:
        >>> import jax.numpy as jnp, nnx_bridge as nnx
        >>> bn = nnx.nn.BatchNorm(2, ctx=nnx.Context(0))
        >>> y = bn(jnp.array([[0.0, 1.0], [2.0, 3.0]]), use_running_average=False)
        >>> print(bn.mean.value, bn.var.value)
        [0.01 0.02] [1. 1.]
        >>> params, batch_stats, moduledef = bn.partition("params", "batch_stats")
        >>> sorted(batch_stats)
        ['mean', 'var']
    """

    def __init__(
        self,
        num_features: int,
        *,
        ctx: Context,
        use_running_average: bool | None = None,
        axis: int = -1,
        momentum: float = 0.99,
        epsilon: float = 1e-5,
        use_bias: bool = True,
        use_scale: bool = True,
        dtype: tp.Any = None,
        param_dtype: tp.Any = jnp.float32,
        use_fast_variance: bool = True,
        axis_name: str | None = None,
        scale_init: Initializer = default_scale_init,
        bias_init: Initializer = default_bias_init,
        sharding: tp.Sequence[str | None] | None = None,
    ):
        sharding = check_sharding(
            sharding, 1, where="BatchNorm", what="scale, bias, mean and var (num_features,)"
        )
        if not isinstance(axis, int):
            raise TypeError(f"BatchNorm: axis must be one int (the feature axis); found {axis!r}.")
        self.num_features = int(num_features)
        self.use_running_average = use_running_average
        self.axis = axis
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.dtype = dtypes.as_dtype(dtype)
        self.use_fast_variance = bool(use_fast_variance)
        self.axis_name = axis_name
        shape = (self.num_features,)
        self.mean = BatchStat(jnp.zeros(shape, jnp.float32), sharding=sharding)
        self.var = BatchStat(jnp.ones(shape, jnp.float32), sharding=sharding)
        self.scale = make_param(ctx, scale_init, shape, param_dtype, sharding) if use_scale else None
        self.bias = make_param(ctx, bias_init, shape, param_dtype, sharding) if use_bias else None

    def __call__(
        self, x: jax.Array, *, use_running_average: bool | None = None, mask: jax.Array | None = None
    ) -> jax.Array:
        """Normalises ``x``, updating ``mean``/``var`` unless ``use_running_average``.

        ``use_running_average`` overrides the constructor's value; one of them
        must be given. ``mask`` (broadcastable to ``x``) selects the entries
        counted in the batch statistics.
        """
        check_shapes(
            self,
            "num_features",
            mean=(self.num_features,),
            var=(self.num_features,),
            scale=(self.num_features,),
            bias=(self.num_features,),
        )
        use_running_average = modes.resolve(
            "use_running_average", self.use_running_average, use_running_average, "BatchNorm"
        )
        _check_features("BatchNorm", self.num_features, x, self.axis)
        ndim = jnp.ndim(x)
        feature_axis = self.axis % ndim
        reduction_axes = tuple(i for i in range(ndim) if i != feature_axis)
        if use_running_average:
            mean, var = self.mean.value, self.var.value
        else:
            # As Linen's: while initialising, no cross-device mean (so init runs outside
            # pmap) and the running statistics stay as constructed.
            initializing = self.is_initializing()
            mean, var = moments.statistics(
                x,
                reduction_axes,
                dtype=self.dtype,
                use_mean=True,
                use_fast_variance=self.use_fast_variance,
                mask=mask,
                axis_name=None if initializing else self.axis_name,
            )
            if not initializing:
                self.mean.value = self.momentum * self.mean.value + (1 - self.momentum) * mean
                self.var.value = self.momentum * self.var.value + (1 - self.momentum) * var
        return moments.normalize(
            x,
            mean,
            var,
            reduction_axes,
            feature_axis,
            epsilon=self.epsilon,
            scale=self.scale,
            bias=self.bias,
            dtype=self.dtype,
        )
