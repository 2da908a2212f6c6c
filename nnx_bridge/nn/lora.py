"""Low-rank adaptation: `LoRA`, `LoRALinear` and their parameter type `LoRAParam` (flax.nnx's).

The factors are `LoRAParam`s, a `Param` subclass (collection ``params``), so a
type filter tells them from the base weights: ``nnx.labels(params, {"lora":
nnx.nn.LoRAParam}, default="frozen")`` freezes everything else under optax.
"""

from __future__ import annotations

import typing as tp

import jax
import jax.numpy as jnp
from jax.nn import initializers

from nnx_bridge.context import Context
from nnx_bridge.module import Module
from nnx_bridge.nn import dtypes
from nnx_bridge.nn.linear import Linear
from nnx_bridge.nn.params import Initializer
from nnx_bridge.variables import Param, Variable

A = tp.TypeVar("A")

#: flax.nnx's default initialiser of the fan-in factor ``lora_a``.
default_a_initializer: Initializer = initializers.he_uniform()
#: flax.nnx's default initialiser of the fan-out factor ``lora_b`` (zeros: LoRA starts as a no-op).
default_b_initializer: Initializer = initializers.zeros


class LoRAParam(Param[A]):
    """A LoRA factor: a `Param` (collection ``params``) of its own type, for type filters.

    Example:
        >>> import jax.numpy as jnp, nnx_bridge as nnx
        >>> p = nnx.nn.LoRAParam(jnp.zeros((3, 2)))
        >>> p.collection, isinstance(p, nnx.Param)
        ('params', True)
    """


def _check_param_type(lora_param_type: tp.Any) -> tp.Any:
    if not (
        isinstance(lora_param_type, type)
        and issubclass(lora_param_type, Variable)
        and getattr(lora_param_type, "_fixed_collection", None) is not None
    ):
        raise TypeError(
            f"LoRA: lora_param_type must be a Variable class with a fixed collection (such as "
            f"nnx.nn.LoRAParam or nnx.Param); found {lora_param_type!r}. Subclass one: "
            f"class MyLoRAParam(nnx.nn.LoRAParam): ..."
        )
    return lora_param_type


class LoRA(Module):
    """A low-rank update ``x @ lora_a @ lora_b``, optionally added to a base module (flax.nnx's ``LoRA``).

    Args:
      in_features: size of the last axis of the input.
      lora_rank: the rank of the update.
      out_features: size of the last axis of the output.
      ctx: the Context the ``params`` keys come from (``lora_a`` first).
      base_module: a module called on the (promoted) input and added to the update.
      dtype: computation dtype; None infers it from the input and factors.
      param_dtype: storage dtype of the factors.
      a_initializer: initialiser of ``lora_a`` (default: He uniform).
      b_initializer: initialiser of ``lora_b`` (default: zeros).
      lora_param_type: the Variable class of the factors (default `LoRAParam`).

    Variables: ``lora_a`` of shape ``(in_features, lora_rank)`` and ``lora_b`` of
    shape ``(lora_rank, out_features)``, and the base module's under ``base_module``.

    Example:
        >>> import jax.numpy as jnp, nnx_bridge as nnx
        >>> ctx = nnx.Context(0)
        >>> lora = nnx.nn.LoRA(3, 2, 4, base_module=nnx.nn.Linear(3, 4, ctx=ctx), ctx=ctx)
        >>> lora.lora_a.value.shape, lora.lora_b.value.shape, lora(jnp.ones((5, 3))).shape
        ((3, 2), (2, 4), (5, 4))
    """

    def __init__(
        self,
        in_features: int,
        lora_rank: int,
        out_features: int,
        *,
        ctx: Context,
        base_module: Module | None = None,
        dtype: tp.Any = None,
        param_dtype: tp.Any = jnp.float32,
        a_initializer: Initializer = default_a_initializer,
        b_initializer: Initializer = default_b_initializer,
        lora_param_type: type[Variable[tp.Any]] = LoRAParam,
    ):
        param_type = _check_param_type(lora_param_type)
        if base_module is not None and not callable(base_module):
            raise TypeError(
                f"LoRA: base_module must be a callable module; found {type(base_module).__name__}."
            )
        self.in_features = int(in_features)
        self.lora_rank = int(lora_rank)
        self.out_features = int(out_features)
        self.dtype = dtypes.as_dtype(dtype)
        self.base_module = base_module
        self.lora_a = param_type(
            a_initializer(ctx.make_rng("params"), (self.in_features, self.lora_rank), param_dtype)
        )
        self.lora_b = param_type(
            b_initializer(ctx.make_rng("params"), (self.lora_rank, self.out_features), param_dtype)
        )

    def __call__(self, x: jax.Array, **kwargs: tp.Any) -> jax.Array:
        """``x @ lora_a @ lora_b`` (plus ``base_module(x, **kwargs)``) for ``x`` ``(..., in_features)``."""
        if jnp.ndim(x) == 0 or jnp.shape(x)[-1] != self.in_features:
            raise ValueError(
                f"LoRA(in_features={self.in_features}, lora_rank={self.lora_rank}, out_features="
                f"{self.out_features}) expects inputs whose last dimension is {self.in_features}; "
                f"found shape {jnp.shape(x)}."
            )
        x, lora_a, lora_b = dtypes.promote_dtype(x, self.lora_a.value, self.lora_b.value, dtype=self.dtype)
        out = x @ lora_a @ lora_b
        if self.base_module is not None:
            out += self.base_module(x, **kwargs)
        return out


class LoRALinear(Linear):
    """A `Linear` layer plus a `LoRA` update, ``lora`` (flax.nnx's ``LoRALinear``).

    The base variables are `Linear`'s (``kernel``, ``bias``), so a Linear's
    weights load unchanged; the factors are ``lora/lora_a`` and ``lora/lora_b``.

    Args:
      in_features: size of the last axis of the input.
      out_features: size of the last axis of the output.
      lora_rank: the rank of the update.
      ctx: the Context the ``params`` keys come from.
      lora_dtype: computation dtype of the update.
      lora_param_dtype: storage dtype of the factors.
      a_initializer: initialiser of ``lora_a`` (default: He uniform).
      b_initializer: initialiser of ``lora_b`` (default: zeros).
      lora_param_type: the Variable class of the factors (default `LoRAParam`).
      **kwargs: `Linear`'s other arguments (``use_bias``, ``dtype``, ``param_dtype``, ...).

    Example:
        >>> import jax.numpy as jnp, nnx_bridge as nnx
        >>> layer = nnx.nn.LoRALinear(3, 4, lora_rank=2, ctx=nnx.Context(0))
        >>> sorted(layer.partition()[0])
        ['bias', 'kernel', 'lora/lora_a', 'lora/lora_b']
        >>> layer(jnp.ones((5, 3))).shape
        (5, 4)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        lora_rank: int,
        ctx: Context,
        lora_dtype: tp.Any = None,
        lora_param_dtype: tp.Any = jnp.float32,
        a_initializer: Initializer = default_a_initializer,
        b_initializer: Initializer = default_b_initializer,
        lora_param_type: type[Variable[tp.Any]] = LoRAParam,
        **kwargs: tp.Any,
    ):
        super().__init__(in_features, out_features, ctx=ctx, **kwargs)
        self.lora = LoRA(
            in_features,
            lora_rank,
            out_features,
            ctx=ctx,
            dtype=lora_dtype,
            param_dtype=lora_param_dtype,
            a_initializer=a_initializer,
            b_initializer=b_initializer,
            lora_param_type=lora_param_type,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """``Linear(x) + lora(x)``."""
        y = super().__call__(x)
        y += self.lora(x)
        return y
