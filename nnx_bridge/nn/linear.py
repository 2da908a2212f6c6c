"""Linear layers: `Linear` (Linen's ``Dense``) and `LinearGeneral` (``DenseGeneral``)."""

from __future__ import annotations

import typing as tp

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from nnx_bridge.context import Context
from nnx_bridge.module import Module
from nnx_bridge.nn import dtypes
from nnx_bridge.nn.params import (
    Initializer,
    check_shapes,
    default_bias_init,
    default_kernel_init,
    kernel_and_bias,
)


class Linear(Module):
    """A dense layer ``y = x @ kernel + bias`` over the last axis (Linen's ``nn.Dense``).

    Args:
      in_features: size of the last axis of the input.
      out_features: size of the last axis of the output.
      ctx: the Context the ``params`` keys come from.
      use_bias: whether to add a bias.
      dtype: computation dtype; None infers it from the input and parameters.
      param_dtype: storage dtype of the parameters.
      precision: passed to `jax.lax.dot_general`.
      kernel_init: initialiser of the kernel (default: LeCun normal, as Linen).
      bias_init: initialiser of the bias (default: zeros).
      sharding: axis names of the kernel ``(in, out)``; the bias gets the last one.

    Variables: params ``kernel`` of shape ``(in_features, out_features)`` and
    ``bias`` of shape ``(out_features,)``.

    Example:
        >>> import jax.numpy as jnp, nnx_bridge as nnx
        >>> layer = nnx.nn.Linear(3, 4, ctx=nnx.Context(0))
        >>> layer(jnp.ones((2, 3))).shape
        (2, 4)
        >>> {path: v.value.shape for path, v in layer.partition()[0].items()}
        {'bias': (4,), 'kernel': (3, 4)}
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        ctx: Context,
        use_bias: bool = True,
        dtype: tp.Any = None,
        param_dtype: tp.Any = jnp.float32,
        precision: tp.Any = None,
        kernel_init: Initializer = default_kernel_init,
        bias_init: Initializer = default_bias_init,
        sharding: tp.Sequence[str | None] | None = None,
    ):
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.use_bias = bool(use_bias)
        self.dtype = dtypes.as_dtype(dtype)
        self.precision = precision
        self.kernel, self.bias = kernel_and_bias(
            ctx,
            layer="Linear",
            what="kernel (in_features, out_features)",
            kernel_shape=(self.in_features, self.out_features),
            bias_shape=(self.out_features,) if self.use_bias else None,
            param_dtype=param_dtype,
            kernel_init=kernel_init,
            bias_init=bias_init,
            sharding=sharding,
            bias_axes=(-1,),
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """Applies the layer to ``x`` of shape ``(..., in_features)``."""
        check_shapes(
            self,
            "in_features out_features",
            kernel=(self.in_features, self.out_features),
            bias=(self.out_features,),
        )
        if jnp.ndim(x) == 0 or jnp.shape(x)[-1] != self.in_features:
            raise ValueError(
                f"Linear(in_features={self.in_features}, out_features={self.out_features}) "
                f"expects inputs whose last dimension is {self.in_features}; found an input of "
                f"shape {jnp.shape(x)}. Reshape the input, or build the layer with "
                f"in_features={jnp.shape(x)[-1] if jnp.ndim(x) else '...'}."
            )
        bias = None if self.bias is None else self.bias.value
        x, kernel, bias = dtypes.promote_dtype(x, self.kernel.value, bias, dtype=self.dtype)
        y = lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())), precision=self.precision)
        if bias is not None:
            y += jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
        return y


def _as_tuple(value: int | tp.Sequence[int], argument: str, layer: str) -> tuple[int, ...]:
    items = (value,) if isinstance(value, (int, np.integer)) else tuple(value)
    if not items or not all(isinstance(v, (int, np.integer)) for v in items):
        raise TypeError(
            f"{layer}: {argument} must be an int or a non-empty sequence of ints; found {value!r}."
        )
    return tuple(int(v) for v in items)


class LinearGeneral(Module):
    """A linear map contracting several input axes into several output axes (Linen's ``DenseGeneral``).

    The kernel has shape ``in_features + out_features`` (both as tuples) and is
    initialised as Linen does: ``kernel_init`` draws a 2-D ``(prod(in_features),
    prod(out_features))`` matrix, which is then reshaped, so fan-in and fan-out
    are those of the flattened map.

    Args:
      in_features: size(s) of the contracted input axes, in increasing axis order
        (as Linen, which sorts `axis`).
      out_features: size(s) of the output axes that replace them (at the end).
      axis: the input axis or axes to contract (default: the last one).
      ctx: the Context the ``params`` keys come from.
      use_bias: whether to add a bias of shape ``out_features``.
      dtype: computation dtype; None infers it from the input and parameters.
      param_dtype: storage dtype of the parameters.
      precision: passed to `jax.lax.dot_general`.
      kernel_init: initialiser of the flattened kernel (default: LeCun normal).
      bias_init: initialiser of the flattened bias (default: zeros).
      sharding: axis names of the kernel (one per kernel dimension); the bias
        gets the names of the output dimensions.

    Example:
        >>> import jax.numpy as jnp, nnx_bridge as nnx
        >>> layer = nnx.nn.LinearGeneral(3, (2, 5), ctx=nnx.Context(0))
        >>> layer.kernel.value.shape, layer(jnp.ones((7, 3))).shape
        ((3, 2, 5), (7, 2, 5))
    """

    def __init__(
        self,
        in_features: int | tp.Sequence[int],
        out_features: int | tp.Sequence[int],
        *,
        ctx: Context,
        axis: int | tp.Sequence[int] = -1,
        use_bias: bool = True,
        dtype: tp.Any = None,
        param_dtype: tp.Any = jnp.float32,
        precision: tp.Any = None,
        kernel_init: Initializer = default_kernel_init,
        bias_init: Initializer = default_bias_init,
        sharding: tp.Sequence[str | None] | None = None,
    ):
        self.in_features = _as_tuple(in_features, "in_features", "LinearGeneral")
        self.out_features = _as_tuple(out_features, "out_features", "LinearGeneral")
        self.axis = _as_tuple(axis, "axis", "LinearGeneral")
        if len(self.axis) != len(self.in_features):
            raise ValueError(
                f"LinearGeneral: axis={self.axis} names {len(self.axis)} input axes but "
                f"in_features={self.in_features} gives {len(self.in_features)} sizes; give one "
                f"size per contracted axis."
            )
        self.use_bias = bool(use_bias)
        self.dtype = dtypes.as_dtype(dtype)
        self.precision = precision
        n_in, n_out = len(self.in_features), len(self.out_features)
        flat = (int(np.prod(self.in_features)), int(np.prod(self.out_features)))

        def flat_kernel_init(key: jax.Array, shape: tuple[int, ...], dtype: tp.Any) -> jax.Array:
            return jnp.reshape(kernel_init(key, flat, dtype), shape)

        def flat_bias_init(key: jax.Array, shape: tuple[int, ...], dtype: tp.Any) -> jax.Array:
            return jnp.reshape(bias_init(key, flat[1:], dtype), shape)

        self.kernel, self.bias = kernel_and_bias(
            ctx,
            layer="LinearGeneral",
            what=f"kernel in_features + out_features {self.in_features + self.out_features}",
            kernel_shape=self.in_features + self.out_features,
            bias_shape=self.out_features if self.use_bias else None,
            param_dtype=param_dtype,
            kernel_init=flat_kernel_init,
            bias_init=flat_bias_init,
            sharding=sharding,
            bias_axes=range(n_in, n_in + n_out),
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """Contracts the `axis` dimensions of ``x``; the output features come last."""
        check_shapes(
            self,
            "in_features out_features",
            kernel=self.in_features + self.out_features,
            bias=self.out_features,
        )
        ndim = jnp.ndim(x)
        if any(not -ndim <= a < ndim for a in self.axis):
            raise ValueError(
                f"LinearGeneral(axis={self.axis}) got an input of rank {ndim} (shape {jnp.shape(x)}); "
                f"every axis must be in [-{ndim}, {ndim})."
            )
        axes = tuple(sorted(a % ndim for a in self.axis))
        found = tuple(jnp.shape(x)[a] for a in axes)
        if found != self.in_features:
            raise ValueError(
                f"LinearGeneral(in_features={self.in_features}, axis={self.axis}) expects input "
                f"dimensions {self.in_features} on axes {axes}; found {found} (input shape "
                f"{jnp.shape(x)}). Build the layer with in_features={found}."
            )
        bias = None if self.bias is None else self.bias.value
        x, kernel, bias = dtypes.promote_dtype(x, self.kernel.value, bias, dtype=self.dtype)
        contract = tuple(range(len(axes)))
        y = lax.dot_general(x, kernel, ((axes, contract), ((), ())), precision=self.precision)
        if bias is not None:
            y += jnp.reshape(bias, (1,) * (ndim - len(axes)) + self.out_features)
        return y
