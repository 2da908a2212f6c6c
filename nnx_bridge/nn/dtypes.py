"""Dtype rules shared by the layers: Linen's promotion of inputs and parameters.

A layer computes in ``dtype`` when one is given; otherwise in the dtype that
JAX's promotion rules give for the inputs and parameters together, raised to
``float32`` when that would be an integer or bool dtype. Parameters are stored
in ``param_dtype`` and only cast for the computation.
"""

from __future__ import annotations

import typing as tp

import jax.numpy as jnp

Dtype = tp.Any


def as_dtype(dtype: Dtype | None, *, argument: str = "dtype") -> jnp.dtype | None:
    """Normalises a dtype-like (``jnp.float32``, ``"bfloat16"``, ...) to a `jnp.dtype`.

    Layers keep dtypes in this form, so two layers built with ``jnp.float32``
    and ``"float32"`` have equal ModuleDefs. ``None`` stays ``None``.

    Example:
        >>> import jax.numpy as jnp
        >>> from nnx_bridge.nn.dtypes import as_dtype
        >>> as_dtype(jnp.bfloat16), as_dtype(None)
        (dtype(bfloat16), None)
    """
    if dtype is None:
        return None
    try:
        return jnp.dtype(dtype)
    except TypeError:
        raise TypeError(
            f"{argument} must be a dtype such as jnp.float32 or 'bfloat16' (or None); found {dtype!r}."
        ) from None


def canonicalize_dtype(*args: tp.Any, dtype: Dtype | None = None, inexact: bool = True) -> jnp.dtype:
    """The dtype a computation over `args` runs in.

    Args:
      *args: arrays (``None`` entries are skipped).
      dtype: if given, it is the answer, whatever `args` are.
      inexact: require a floating-point or complex result; integer and bool
        inputs are promoted together with ``float32``.

    Returns:
      ``dtype`` if given, else the promoted dtype of `args`.

    Raises:
      ValueError: `inexact` is set and the given ``dtype`` is not inexact.

    Example:
        >>> import jax.numpy as jnp
        >>> from nnx_bridge.nn.dtypes import canonicalize_dtype
        >>> canonicalize_dtype(jnp.ones(2, jnp.bfloat16), jnp.ones(2, jnp.float32))
        dtype('float32')
        >>> canonicalize_dtype(jnp.ones(2, jnp.int32))
        dtype('float32')
    """
    if dtype is None:
        present = [jnp.asarray(a) for a in args if a is not None]
        dtype = jnp.result_type(*present)
        if inexact and not jnp.issubdtype(dtype, jnp.inexact):
            dtype = jnp.promote_types(jnp.float32, dtype)
    dtype = jnp.dtype(dtype)
    if inexact and not jnp.issubdtype(dtype, jnp.inexact):
        raise ValueError(
            f"The computation dtype must be a floating-point or complex dtype; found {dtype}. "
            f"Pass dtype=jnp.float32 (or jnp.bfloat16), or dtype=None to infer it."
        )
    return dtype


def promote_dtype(*args: tp.Any, dtype: Dtype | None = None, inexact: bool = True) -> list[tp.Any]:
    """Casts every array in `args` to `canonicalize_dtype(*args, dtype=dtype)`.

    ``None`` entries (e.g. a missing bias) are returned as ``None``.

    Example:
        >>> import jax.numpy as jnp
        >>> from nnx_bridge.nn.dtypes import promote_dtype
        >>> x, w, b = promote_dtype(jnp.ones(2, jnp.bfloat16), jnp.ones(2), None)
        >>> x.dtype, w.dtype, b
        (dtype('float32'), dtype('float32'), None)
    """
    target = canonicalize_dtype(*args, dtype=dtype, inexact=inexact)
    return [None if a is None else jnp.asarray(a, target) for a in args]
