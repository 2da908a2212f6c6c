"""`PReLU`: a leaky ReLU whose negative slope is learnt (Linen's ``nn.PReLU``)."""

from __future__ import annotations

import typing as tp

import jax
import jax.numpy as jnp

from nnx_bridge.context import Context
from nnx_bridge.module import Module
from nnx_bridge.nn import dtypes
from nnx_bridge.variables import Param


class PReLU(Module):
    """``x`` where ``x >= 0``, else ``negative_slope * x``, with a learnt scalar slope.

    Args:
      negative_slope_init: the initial slope (default 0.01, as Linen).
      dtype: computation dtype. None (the default) is Linen's rule: the slope is
        cast to the input's dtype and the output has the input's dtype.
      param_dtype: storage dtype of the slope.
      ctx: not needed (no random key is drawn); accepted so that
        ``nnx.to_linen(PReLU)``, which passes one, works.

    Variables: params ``negative_slope``, a scalar.

    Example:
        >>> import jax.numpy as jnp, nnx_bridge as nnx
        >>> act = nnx.nn.PReLU(0.1)
        >>> act(jnp.array([-2.0, 3.0])).tolist()
        [-0.2..., 3.0]
    """

    def __init__(
        self,
        negative_slope_init: float = 0.01,
        *,
        dtype: tp.Any = None,
        param_dtype: tp.Any = jnp.float32,
        ctx: Context | None = None,
    ):
        del ctx  # the initial slope is a constant
        self.dtype = dtypes.as_dtype(dtype)
        self.negative_slope = Param(jnp.asarray(negative_slope_init, dtypes.as_dtype(param_dtype)))

    def __call__(self, x: jax.Array) -> jax.Array:
        """Applies the activation elementwise."""
        slope = self.negative_slope.value
        if self.dtype is None:
            slope = jnp.asarray(slope, jnp.result_type(x))
        else:
            x, slope = dtypes.promote_dtype(x, slope, dtype=self.dtype)
        return jnp.where(x >= 0, x, slope * x)
