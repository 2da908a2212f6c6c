"""`GroupNorm` and `InstanceNorm`: per-example statistics over groups of channels.

The statistics and the normalisation are those of `nnx_bridge.nn.normalization`
(at least float32 reductions, ``E[|x|^2] - |E[x]|^2`` by default, Linen's casts),
so the results are Linen's ``nn.GroupNorm`` and ``nn.InstanceNorm``.
"""

from __future__ import annotations

import typing as tp

import jax
import jax.numpy as jnp

from nnx_bridge.context import Context
from nnx_bridge.module import Module
from nnx_bridge.nn import dtypes, moments
from nnx_bridge.nn.moments import Axes
from nnx_bridge.nn.params import Initializer, default_bias_init, default_scale_init, make_param


def _check_no_axis_index_groups(layer: str, axis_index_groups: tp.Any) -> None:
    if axis_index_groups is not None:
        raise NotImplementedError(
            f"{layer}: axis_index_groups={axis_index_groups!r} is not supported (Linen's SPMD jit "
            f"does not support it either). Average over the whole mapped axis (axis_name=...) or "
            f"split the batch with a mesh instead."
        )


class GroupNorm(Module):
    """Group normalisation (Linen's ``nn.GroupNorm``, arxiv.org/abs/1803.08494).

    The ``num_features`` channels (last axis) are split into groups; each example
    is normalised with the mean and variance of each group over ``reduction_axes``
    (default: every axis but the first, the batch axis). Give ``num_groups``
    (default 32) or ``group_size`` with ``num_groups=None``.

    Args:
      num_features: size of the last (channel) axis.
      num_groups: number of channel groups (must divide ``num_features``).
      group_size: channels per group (needs ``num_groups=None``).
      ctx: the Context the ``params`` keys come from.
      epsilon: added to the variance.
      dtype: result dtype; None infers it from the input and parameters.
      param_dtype: storage dtype of the parameters.
      use_bias: whether to add a learned bias.
      use_scale: whether to multiply by a learned scale.
      bias_init: initialiser of the bias (default: zeros).
      scale_init: initialiser of the scale (default: ones).
      reduction_axes: the axes of the statistics; must include the last one.
      axis_name: a mapped axis (``pmap``/``shard_map``/``vmap``) to average statistics over.
      axis_index_groups: not supported (must be None).
      use_fast_variance: compute the variance as ``E[x^2] - E[x]^2`` (Linen's default).

    Variables: params ``scale`` and ``bias``, both of shape ``(num_features,)``.

    Example:
        >>> import jax.numpy as jnp, nnx_bridge as nnx
        >>> norm = nnx.nn.GroupNorm(4, num_groups=2, ctx=nnx.Context(0))
        >>> y = norm(jnp.array([[0.0, 2.0, 10.0, 30.0]]))
        >>> print(y.round(3))
        [[-1. 1. -1. 1.]]
    """

    def __init__(
        self,
        num_features: int,
        num_groups: int | None = 32,
        group_size: int | None = None,
        *,
        ctx: Context,
        epsilon: float = 1e-6,
        dtype: tp.Any = None,
        param_dtype: tp.Any = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Initializer = default_bias_init,
        scale_init: Initializer = default_scale_init,
        reduction_axes: Axes | None = None,
        axis_name: str | None = None,
        axis_index_groups: tp.Any = None,
        use_fast_variance: bool = True,
    ):
        _check_no_axis_index_groups("GroupNorm", axis_index_groups)
        num_features = int(num_features)
        if (num_groups is None) == (group_size is None):
            raise ValueError(
                f"GroupNorm: give exactly one of num_groups and group_size; found "
                f"num_groups={num_groups!r}, group_size={group_size!r}. To give group_size, pass "
                f"num_groups=None as well (num_groups defaults to 32)."
            )
        if group_size is not None:
            if not isinstance(group_size, int) or group_size <= 0 or num_features % group_size:
                raise ValueError(
                    f"GroupNorm: num_features ({num_features}) is not a multiple of the group "
                    f"size ({group_size!r}). Pick a group_size that divides {num_features}."
                )
            num_groups = num_features // group_size
        elif not isinstance(num_groups, int) or num_groups <= 0 or num_features % num_groups:
            raise ValueError(
                f"GroupNorm: the number of groups ({num_groups!r}) does not divide num_features "
                f"({num_features}). Pick num_groups dividing {num_features}, or pass group_size= "
                f"with num_groups=None."
            )
        self.num_features = num_features
        self.num_groups = int(num_groups)
        self.group_size = num_features // self.num_groups
        self.epsilon = float(epsilon)
        self.dtype = dtypes.as_dtype(dtype)
        self.reduction_axes = (
            None
            if reduction_axes is None
            else reduction_axes
            if isinstance(reduction_axes, int)
            else tuple(reduction_axes)
        )
        self.axis_name = axis_name
        self.use_fast_variance = bool(use_fast_variance)
        shape = (num_features,)
        self.scale = make_param(ctx, scale_init, shape, param_dtype) if use_scale else None
        self.bias = make_param(ctx, bias_init, shape, param_dtype) if use_bias else None

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        """Normalises ``x`` (``(batch, ..., num_features)``); ``mask`` selects the entries counted."""
        x = jnp.asarray(x)
        if x.ndim < 1 or x.shape[-1] != self.num_features:
            raise ValueError(
                f"GroupNorm(num_features={self.num_features}) expects the last axis of its input "
                f"to have size {self.num_features}; found shape {x.shape}."
            )
        if self.reduction_axes is None:
            reduction_axes = tuple(range(1, x.ndim))
        else:
            reduction_axes = moments.axes_tuple(self.reduction_axes, x.ndim)
            if not reduction_axes or reduction_axes[-1] != x.ndim - 1:
                raise ValueError(
                    f"GroupNorm: reduction_axes={self.reduction_axes!r} must include the last axis "
                    f"(the channel axis) of the {x.ndim}-D input; add -1 to them."
                )
        grouped = x.shape[:-1] + (self.num_groups, self.group_size)
        if mask is not None:
            mask = jnp.reshape(mask, jnp.shape(mask)[:-1] + (self.num_groups, self.group_size))
        # In the grouped array, the channel axis becomes (group, member): reduce the members.
        mean, var = moments.statistics(
            x.reshape(grouped),
            reduction_axes[:-1] + (x.ndim,),
            dtype=self.dtype,
            use_mean=True,
            use_fast_variance=self.use_fast_variance,
            mask=mask,
            axis_name=self.axis_name,
        )
        mean = jnp.repeat(mean, self.group_size, axis=-1)
        var = jnp.repeat(var, self.group_size, axis=-1)
        return moments.normalize(
            x,
            mean,
            var,
            reduction_axes[:-1],
            -1,
            epsilon=self.epsilon,
            scale=self.scale,
            bias=self.bias,
            dtype=self.dtype,
        )


class InstanceNorm(Module):
    """Instance normalisation (Linen's ``nn.InstanceNorm``, arxiv.org/abs/1607.08022).

    Each example (axis 0 is the batch) and each feature is normalised with the
    statistics over every other axis.

    Args:
      num_features: size of the feature axis; a tuple of sizes when ``feature_axes``
        names several axes (in increasing axis order).
      ctx: the Context the ``params`` keys come from.
      epsilon: added to the variance.
      dtype: result dtype; None infers it from the input and parameters.
      param_dtype: storage dtype of the parameters.
      use_bias: whether to add a learned bias.
      use_scale: whether to multiply by a learned scale.
      bias_init: initialiser of the bias (default: zeros).
      scale_init: initialiser of the scale (default: ones).
      feature_axes: the feature axis or axes (default: the last); never axis 0.
      axis_name: a mapped axis to average statistics over.
      axis_index_groups: not supported (must be None).
      use_fast_variance: compute the variance as ``E[x^2] - E[x]^2`` (Linen's default).

    Variables: params ``scale`` and ``bias`` of shape ``num_features``.

    Example:
        >>> import jax.numpy as jnp, nnx_bridge as nnx
        >>> norm = nnx.nn.InstanceNorm(2, ctx=nnx.Context(0))
        >>> y = norm(jnp.array([[[0.0, 5.0], [2.0, 7.0]]]))  # (batch, length, features)
        >>> print(y.round(3))
        [[[-1. -1.]
          [ 1.  1.]]]
    """

    def __init__(
        self,
        num_features: int | tp.Sequence[int],
        *,
        ctx: Context,
        epsilon: float = 1e-6,
        dtype: tp.Any = None,
        param_dtype: tp.Any = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Initializer = default_bias_init,
        scale_init: Initializer = default_scale_init,
        feature_axes: Axes = -1,
        axis_name: str | None = None,
        axis_index_groups: tp.Any = None,
        use_fast_variance: bool = True,
    ):
        _check_no_axis_index_groups("InstanceNorm", axis_index_groups)
        axes = (feature_axes,) if isinstance(feature_axes, int) else tuple(feature_axes)
        shape = (int(num_features),) if isinstance(num_features, int) else tuple(int(n) for n in num_features)
        if not axes or len(shape) != len(set(axes)):
            raise ValueError(
                f"InstanceNorm: num_features={num_features!r} must give one size per feature axis "
                f"of feature_axes={feature_axes!r}; pass a tuple of {len(set(axes))} sizes."
            )
        self.num_features = shape
        self.feature_axes = axes
        self.epsilon = float(epsilon)
        self.dtype = dtypes.as_dtype(dtype)
        self.axis_name = axis_name
        self.use_fast_variance = bool(use_fast_variance)
        self.scale = make_param(ctx, scale_init, shape, param_dtype) if use_scale else None
        self.bias = make_param(ctx, bias_init, shape, param_dtype) if use_bias else None

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        """Normalises ``x``; ``mask`` (broadcastable to ``x``) selects the entries counted."""
        x = jnp.asarray(x)
        if any(not -x.ndim <= a < x.ndim for a in self.feature_axes):
            raise ValueError(
                f"InstanceNorm: feature_axes={self.feature_axes!r} do not fit an input of shape {x.shape}."
            )
        feature_axes = moments.axes_tuple(self.feature_axes, x.ndim)
        if 0 in feature_axes:
            raise ValueError(
                f"InstanceNorm: feature_axes={self.feature_axes!r} include axis 0 of the "
                f"{x.ndim}-D input, which is the batch axis. Put the batch first and name only "
                f"later axes."
            )
        found = tuple(x.shape[a] for a in feature_axes)
        if found != self.num_features:
            raise ValueError(
                f"InstanceNorm(num_features={self.num_features}) expects feature axes "
                f"{feature_axes} of sizes {self.num_features}; found {found} in shape {x.shape}."
            )
        reduction_axes = tuple(i for i in range(1, x.ndim) if i not in feature_axes)
        mean, var = moments.statistics(
            x,
            reduction_axes,
            dtype=self.dtype,
            use_mean=True,
            use_fast_variance=self.use_fast_variance,
            mask=mask,
            axis_name=self.axis_name,
        )
        return moments.normalize(
            x,
            mean,
            var,
            reduction_axes,
            feature_axes,
            epsilon=self.epsilon,
            scale=self.scale,
            bias=self.bias,
            dtype=self.dtype,
        )
