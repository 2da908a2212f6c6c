"""Dot-product attention and attention masks as pure functions, with Linen's signatures.

Everything here is written on ``jax.numpy``/``jax.lax`` and computes exactly
what ``flax.linen``'s functions of the same names compute (same operations in
the same order), so results agree bit for bit.
"""

from __future__ import annotations

import functools
import typing as tp

import jax
import jax.numpy as jnp
from jax import random

from nnx_bridge.nn import dtypes

Array = jax.Array
Einsum = tp.Callable[..., jax.Array]


class _Sower(tp.Protocol):
    def sow(self, collection: str, name: str, value: tp.Any) -> tp.Any: ...


def _einsum(precision: tp.Any, dot_general: tp.Callable[..., Array] | None) -> Einsum:
    return functools.partial(
        jnp.einsum,
        precision=precision,
        _dot_general=jax.lax.dot_general if dot_general is None else dot_general,
    )


def _check_same(what: str, function: str, **shapes: tuple[int, ...]) -> None:
    if len(set(shapes.values())) > 1:
        found = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(
            f"{function}: {what} must be equal; found {found}. Queries, keys and values are "
            f"laid out as (batch..., length, num_heads, depth)."
        )


def dot_product_attention_weights(
    query: Array,
    key: Array,
    bias: Array | None = None,
    mask: Array | None = None,
    broadcast_dropout: bool = True,
    dropout_rng: Array | None = None,
    dropout_rate: float = 0.0,
    deterministic: bool = False,
    dtype: tp.Any = None,
    precision: tp.Any = None,
    module: _Sower | None = None,
    force_fp32_for_softmax: bool = False,
    einsum_dot_general: tp.Callable[..., Array] | None = None,
    einsum: Einsum | None = None,
) -> Array:
    """The attention weights ``softmax(q k^T / sqrt(depth) + bias)``, masked, with dropout.

    Args:
      query: ``(batch..., q_length, num_heads, depth)``.
      key: ``(batch..., kv_length, num_heads, depth)``.
      bias: added to the logits; broadcastable to ``(batch..., num_heads, q_length, kv_length)``.
      mask: same broadcasting; where it is ``False`` (or 0) the logit becomes the
        dtype's lowest value.
      broadcast_dropout: one dropout mask shared by all batch and head dimensions.
      dropout_rng: key for the dropout mask.
      dropout_rate: probability of dropping a weight.
      deterministic: no dropout when True.
      dtype: computation dtype; None promotes the inputs' dtypes.
      precision: precision of the einsum.
      module: if given, the weights are recorded with
        ``module.sow("intermediates", "attention_weights", weights)`` (before dropout).
      force_fp32_for_softmax: compute the softmax in float32 (the weights stay float32).
      einsum_dot_general: the ``dot_general`` the einsum uses.
      einsum: replaces ``jnp.einsum`` altogether (then leave ``precision`` and
        ``einsum_dot_general`` unset).

    Returns:
      ``(batch..., num_heads, q_length, kv_length)``.

    Example:
        >>> import jax.numpy as jnp
        >>> from nnx_bridge.nn import dot_product_attention_weights
        >>> w = dot_product_attention_weights(jnp.ones((2, 3, 4, 8)), jnp.ones((2, 5, 4, 8)))
        >>> w.shape, float(w.sum(-1).mean())
        ((2, 4, 3, 5), 1.0)
    """
    if (precision is not None or einsum_dot_general is not None) and einsum is not None:
        raise ValueError(
            "dot_product_attention_weights: got einsum= together with precision= or "
            "einsum_dot_general=; they exclude each other. Give the einsum the precision it "
            "needs itself, or leave einsum=None."
        )
    if einsum is None:
        einsum = _einsum(precision, einsum_dot_general)
    query, key = dtypes.promote_dtype(query, key, dtype=dtype)
    dtype = query.dtype
    _check_same("ranks", "dot_product_attention_weights", query=(query.ndim,), key=(key.ndim,))
    _check_same(
        "batch dimensions, heads and depths",
        "dot_product_attention_weights",
        query=query.shape[:-3] + query.shape[-2:],
        key=key.shape[:-3] + key.shape[-2:],
    )

    scaled = query / jnp.sqrt(query.shape[-1]).astype(dtype)
    logits = einsum("...qhd,...khd->...hqk", scaled, key)
    if bias is not None:
        logits = logits + bias
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(dtype).min)
    if force_fp32_for_softmax and dtype != jnp.float32:
        weights = jax.nn.softmax(logits.astype(jnp.float32))
    else:
        weights = jax.nn.softmax(logits).astype(dtype)

    if module is not None:
        module.sow("intermediates", "attention_weights", weights)

    if not deterministic and dropout_rate > 0.0:
        if dropout_rng is None:
            raise ValueError(
                f"dot_product_attention: dropout_rate={dropout_rate} with deterministic=False "
                f"needs a dropout_rng key; pass one, or deterministic=True."
            )
        keep_prob = 1.0 - dropout_rate
        if broadcast_dropout:
            shape = (1,) * (key.ndim - 2) + weights.shape[-2:]
        else:
            shape = weights.shape
        keep = random.bernoulli(dropout_rng, keep_prob, shape)
        weights = weights * (keep.astype(dtype) / jnp.asarray(keep_prob, dtype=dtype))
    return weights


def dot_product_attention(
    query: Array,
    key: Array,
    value: Array,
    bias: Array | None = None,
    mask: Array | None = None,
    broadcast_dropout: bool = True,
    dropout_rng: Array | None = None,
    dropout_rate: float = 0.0,
    deterministic: bool = False,
    dtype: tp.Any = None,
    precision: tp.Any = None,
    module: _Sower | None = None,
    force_fp32_for_softmax: bool = False,
    einsum_dot_general: tp.Callable[..., Array] | None = None,
    qk_attn_weights_einsum: Einsum | None = None,
    attn_weights_value_einsum: Einsum | None = None,
) -> Array:
    """Attention of ``query`` over ``key``/``value``: the weights (see
    `dot_product_attention_weights`) times the values, per head.

    Args:
      query: ``(batch..., q_length, num_heads, depth)``.
      key: ``(batch..., kv_length, num_heads, depth)``.
      value: ``(batch..., kv_length, num_heads, v_depth)``.
      bias, mask, broadcast_dropout, dropout_rng, dropout_rate, deterministic, dtype,
        precision, module, force_fp32_for_softmax, einsum_dot_general: as for
        `dot_product_attention_weights`.
      qk_attn_weights_einsum: replaces the einsum of the weights; give it together with
        ``attn_weights_value_einsum``, which replaces the einsum with the values.

    Returns:
      ``(batch..., q_length, num_heads, v_depth)``.

    Example:
        >>> import jax.numpy as jnp
        >>> from nnx_bridge.nn import dot_product_attention
        >>> q = k = v = jnp.ones((2, 5, 4, 8))
        >>> dot_product_attention(q, k, v).shape
        (2, 5, 4, 8)
    """
    if (qk_attn_weights_einsum is None) != (attn_weights_value_einsum is None):
        raise ValueError(
            "dot_product_attention: qk_attn_weights_einsum and attn_weights_value_einsum go "
            "together; give both, or neither."
        )
    if (precision is not None or einsum_dot_general is not None) and qk_attn_weights_einsum is not None:
        raise ValueError(
            "dot_product_attention: got qk_attn_weights_einsum/attn_weights_value_einsum together "
            "with precision= or einsum_dot_general=; they exclude each other. Leave one of them unset."
        )
    query, key, value = dtypes.promote_dtype(query, key, value, dtype=dtype)
    dtype = query.dtype
    _check_same("ranks", "dot_product_attention", query=(query.ndim,), key=(key.ndim,), value=(value.ndim,))
    _check_same(
        "batch dimensions and heads",
        "dot_product_attention",
        query=query.shape[:-3] + query.shape[-2:-1],
        key=key.shape[:-3] + key.shape[-2:-1],
        value=value.shape[:-3] + value.shape[-2:-1],
    )
    _check_same("lengths", "dot_product_attention", key=key.shape[-3:-2], value=value.shape[-3:-2])

    weights = dot_product_attention_weights(
        query,
        key,
        bias,
        mask,
        broadcast_dropout,
        dropout_rng,
        dropout_rate,
        deterministic,
        dtype,
        precision,
        module,
        force_fp32_for_softmax,
        einsum_dot_general=einsum_dot_general,
        einsum=qk_attn_weights_einsum,
    )
    if attn_weights_value_einsum is None:
        attn_weights_value_einsum = _einsum(precision, einsum_dot_general)
    return attn_weights_value_einsum("...hqk,...khd->...qhd", weights, value)


def make_attention_mask(
    query_input: Array,
    key_input: Array,
    pairwise_fn: tp.Callable[..., tp.Any] = jnp.multiply,
    extra_batch_dims: int = 0,
    dtype: tp.Any = jnp.float32,
) -> Array:
    """``pairwise_fn(query_input[..., :, None], key_input[..., None, :])`` with a head axis.

    Args:
      query_input: ``(batch..., q_length)``, e.g. ``tokens > 0`` for padding.
      key_input: ``(batch..., kv_length)``.
      pairwise_fn: broadcasting comparison of a query entry with a key entry.
      extra_batch_dims: leading singleton axes to add.
      dtype: dtype of the mask.

    Returns:
      ``(1,) * extra_batch_dims + (batch..., 1, q_length, kv_length)``.

    Example:
        >>> import jax.numpy as jnp
        >>> from nnx_bridge.nn import make_attention_mask
        >>> tokens = jnp.array([[5, 7, 0]])
        >>> make_attention_mask(tokens > 0, tokens > 0)[0, 0].tolist()
        [[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    """
    mask = pairwise_fn(jnp.expand_dims(query_input, axis=-1), jnp.expand_dims(key_input, axis=-2))
    mask = jnp.expand_dims(mask, axis=-3)
    mask = jnp.expand_dims(mask, axis=tuple(range(extra_batch_dims)))
    return mask.astype(dtype)


def make_causal_mask(x: Array, extra_batch_dims: int = 0, dtype: tp.Any = jnp.float32) -> Array:
    """Position ``i`` may attend to positions ``j <= i``.

    Args:
      x: ``(batch..., length)``; only its shape is used.
      extra_batch_dims: leading singleton axes to add.
      dtype: dtype of the mask.

    Returns:
      ``(1,) * extra_batch_dims + (batch..., 1, length, length)``.

    Example:
        >>> import jax.numpy as jnp
        >>> from nnx_bridge.nn import make_causal_mask
        >>> make_causal_mask(jnp.zeros((1, 3)))[0, 0].tolist()
        [[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]
    """
    positions = jnp.broadcast_to(jnp.arange(x.shape[-1], dtype=jnp.int32), x.shape)
    return make_attention_mask(
        positions, positions, jnp.greater_equal, extra_batch_dims=extra_batch_dims, dtype=dtype
    )


def combine_masks(*masks: Array | None, dtype: tp.Any = jnp.float32) -> Array | None:
    """The logical AND of the masks that are not None (None if all are).

    Args:
      *masks: masks of equal rank, broadcastable together; None entries are skipped.
      dtype: dtype of the result.

    Returns:
      The combined mask, or None.

    Example:
        >>> import jax.numpy as jnp
        >>> from nnx_bridge.nn import combine_masks
        >>> combine_masks(jnp.array([1, 1, 0]), None, jnp.array([0, 1, 1])).tolist()
        [0.0, 1.0, 0.0]
        >>> combine_masks(None, None) is None
        True
    """
    given = [mask for mask in masks if mask is not None]
    if not given:
        return None
    ranks = tuple(jnp.ndim(mask) for mask in given)
    if len(set(ranks)) > 1:
        raise ValueError(
            f"combine_masks: the masks must have the same rank; found ranks {ranks}. Add "
            f"singleton axes (e.g. jnp.expand_dims) so that every mask has the same number of axes."
        )
    combined = given[0]
    for mask in given[1:]:
        combined = jnp.logical_and(combined, mask)
    return jnp.asarray(combined).astype(dtype)
