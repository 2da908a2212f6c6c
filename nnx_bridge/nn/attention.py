"""Multi-head dot-product attention with Linen's parameter layout and arithmetic."""

from __future__ import annotations

import typing as tp

import jax
import jax.numpy as jnp
from jax import random

from nnx_bridge.context import Context
from nnx_bridge.module import Module
from nnx_bridge.nn import dtypes
from nnx_bridge.nn.dropout import dropout_key
from nnx_bridge.nn.linear import LinearGeneral
from nnx_bridge.nn.normalization import LayerNorm
from nnx_bridge.nn.params import Initializer, check_sharding, default_bias_init, default_kernel_init


def dot_product_attention(query: jax.Array, key: jax.Array, value: jax.Array, *,
                          bias: jax.Array | None = None, mask: jax.Array | None = None,
                          dropout_rng: jax.Array | None = None, dropout_rate: float = 0.0,
                          broadcast_dropout: bool = True, deterministic: bool = True,
                          dtype: tp.Any = None, precision: tp.Any = None,
                          force_fp32_for_softmax: bool = False) -> jax.Array:
    """``softmax(q k^T / sqrt(depth) + bias, masked) v`` per head, as Linen computes it.

    Args:
      query: ``(batch..., q_length, num_heads, depth)``.
      key: ``(batch..., kv_length, num_heads, depth)``.
      value: ``(batch..., kv_length, num_heads, v_depth)``.
      bias: added to the logits; broadcastable to ``(batch..., num_heads, q_length, kv_length)``.
      mask: boolean, same broadcasting; ``False`` entries get the dtype's lowest value.
      dropout_rng: key for dropout on the attention weights.
      dropout_rate: probability of dropping an attention weight.
      broadcast_dropout: share the dropout mask across batch and head dimensions.
      deterministic: skip dropout.
      dtype: computation dtype; None promotes the inputs' dtypes.
      precision: passed to the einsums.
      force_fp32_for_softmax: compute the softmax in float32 for low-precision inputs.

    Returns:
      ``(batch..., q_length, num_heads, v_depth)``.

    Example:
        >>> import jax.numpy as jnp
        >>> from nnx_bridge.nn import dot_product_attention
        >>> q = k = v = jnp.ones((2, 5, 4, 8))
        >>> dot_product_attention(q, k, v).shape
        (2, 5, 4, 8)
    """
    query, key, value = dtypes.promote_dtype(query, key, value, dtype=dtype)
    dtype = query.dtype
    if not (query.ndim == key.ndim == value.ndim and query.shape[:-3] == key.shape[:-3] == value.shape[:-3]
            and query.shape[-2] == key.shape[-2] == value.shape[-2] and query.shape[-1] == key.shape[-1]
            and key.shape[-3] == value.shape[-3]):
        raise ValueError(
            f"dot_product_attention expects query (batch..., q_len, heads, depth), key (batch..., "
            f"kv_len, heads, depth) and value (batch..., kv_len, heads, v_depth) with equal batch "
            f"dims and heads; found shapes {query.shape}, {key.shape}, {value.shape}."
        )
    query = query / jnp.sqrt(query.shape[-1]).astype(dtype)
    weights = jnp.einsum("...qhd,...khd->...hqk", query, key, precision=precision)
    if bias is not None:
        weights = weights + bias
    if mask is not None:
        weights = jnp.where(mask, weights, jnp.finfo(dtype).min)
    if force_fp32_for_softmax and dtype != jnp.float32:
        weights = jax.nn.softmax(weights.astype(jnp.float32))
    else:
        weights = jax.nn.softmax(weights).astype(dtype)
    if not deterministic and dropout_rate > 0.0:
        if dropout_rng is None:
            raise ValueError(
                "dot_product_attention: dropout_rate > 0 and deterministic=False need a "
                "dropout_rng key; pass one, or deterministic=True."
            )
        keep_prob = 1.0 - dropout_rate
        shape = (1,) * (key.ndim - 2) + weights.shape[-2:] if broadcast_dropout else weights.shape
        keep = random.bernoulli(dropout_rng, keep_prob, shape)
        weights = weights * (keep.astype(dtype) / jnp.asarray(keep_prob, dtype=dtype))
    return jnp.einsum("...hqk,...khd->...qhd", weights, value, precision=precision)


class MultiHeadAttention(Module):
    """Multi-head dot-product attention (Linen's ``nn.MultiHeadDotProductAttention``).

    ``query``, ``key`` and ``value`` project the inputs to ``(num_heads,
    head_dim)`` with ``head_dim = qkv_features // num_heads``; ``out`` maps the
    heads back to ``out_features``. Their kernels are Linen's ``DenseGeneral``
    ones, initialised as 2-D matrices and reshaped, so the same key gives the
    same numbers as Linen.

    Args:
      num_heads: number of heads; must divide ``qkv_features``.
      in_features: size of the last axis of the query input.
      ctx: the Context the ``params`` keys come from.
      qkv_features: total size of the query/key/value projections (default: ``in_features``).
      out_features: size of the output (default: ``in_features``).
      in_kv_features: size of the last axis of the key/value inputs (default: ``in_features``).
      dropout_rate: dropout on the attention weights.
      broadcast_dropout: share the dropout mask across batch and head dimensions.
      deterministic: default for the call's argument; with neither given, no dropout.
      use_bias: whether the projections have biases.
      normalize_qk: apply a `LayerNorm` without bias to queries and keys
        (params ``query_ln``/``key_ln``), as Linen.
      dtype: computation dtype; None infers it from the inputs and parameters.
      param_dtype: storage dtype of the parameters.
      precision: passed to the projections and the attention einsums.
      force_fp32_for_softmax: compute the softmax in float32.
      kernel_init: initialiser of the projection kernels (default: LeCun normal).
      out_kernel_init: initialiser of the ``out`` kernel (default: ``kernel_init``).
      bias_init: initialiser of the biases (default: zeros).
      out_bias_init: initialiser of the ``out`` bias (default: ``bias_init``).
      sharding: three axis names ``(embed, heads, head_dim)`` for the query/key/value
        kernels; their biases get ``(heads, head_dim)``, the ``out`` kernel
        ``(heads, head_dim, embed)`` and its bias ``(embed,)``.

    Variables: params ``query``, ``key``, ``value`` (``kernel (in, heads, head_dim)``,
    ``bias (heads, head_dim)``) and ``out`` (``kernel (heads, head_dim, out)``, ``bias (out,)``).

    Example:
        >>> import jax.numpy as jnp, nnx_bridge as nnx
        >>> mha = nnx.nn.MultiHeadAttention(4, 16, ctx=nnx.Context(0))
        >>> mha(jnp.ones((2, 10, 16))).shape
        (2, 10, 16)
        >>> mha.query.kernel.value.shape, mha.out.kernel.value.shape
        ((16, 4, 4), (4, 4, 16))
    """

    def __init__(self, num_heads: int, in_features: int, *, ctx: Context,
                 qkv_features: int | None = None, out_features: int | None = None,
                 in_kv_features: int | None = None, dropout_rate: float = 0.0,
                 broadcast_dropout: bool = True, deterministic: bool | None = None,
                 use_bias: bool = True, normalize_qk: bool = False, dtype: tp.Any = None,
                 param_dtype: tp.Any = jnp.float32, precision: tp.Any = None,
                 force_fp32_for_softmax: bool = False,
                 kernel_init: Initializer = default_kernel_init,
                 out_kernel_init: Initializer | None = None,
                 bias_init: Initializer = default_bias_init,
                 out_bias_init: Initializer | None = None,
                 sharding: tp.Sequence[str | None] | None = None):
        qkv_features = in_features if qkv_features is None else qkv_features
        if num_heads < 1 or qkv_features % num_heads:
            raise ValueError(
                f"MultiHeadAttention: qkv_features={qkv_features} must be divisible by "
                f"num_heads={num_heads}; choose qkv_features as a multiple of num_heads."
            )
        sharding = check_sharding(sharding, 3, layer="MultiHeadAttention",
                                  what="query/key/value kernels (in_features, num_heads, head_dim)")
        self.num_heads = int(num_heads)
        self.in_features = int(in_features)
        self.in_kv_features = self.in_features if in_kv_features is None else int(in_kv_features)
        self.qkv_features = int(qkv_features)
        self.out_features = self.in_features if out_features is None else int(out_features)
        self.head_dim = self.qkv_features // self.num_heads
        self.dropout_rate = float(dropout_rate)
        self.broadcast_dropout = bool(broadcast_dropout)
        self.deterministic = deterministic
        self.dtype = dtypes.as_dtype(dtype)
        self.precision = precision
        self.force_fp32_for_softmax = bool(force_fp32_for_softmax)
        self.normalize_qk = bool(normalize_qk)

        heads = (self.num_heads, self.head_dim)
        common = dict(ctx=ctx, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
                      precision=precision)
        self.query = LinearGeneral(self.in_features, heads, kernel_init=kernel_init,
                                   bias_init=bias_init, sharding=sharding, **common)
        self.key = LinearGeneral(self.in_kv_features, heads, kernel_init=kernel_init,
                                 bias_init=bias_init, sharding=sharding, **common)
        self.value = LinearGeneral(self.in_kv_features, heads, kernel_init=kernel_init,
                                   bias_init=bias_init, sharding=sharding, **common)
        if self.normalize_qk:
            norm = dict(ctx=ctx, use_bias=False, dtype=dtype, param_dtype=param_dtype)
            self.query_ln = LayerNorm(self.head_dim, **norm)
            self.key_ln = LayerNorm(self.head_dim, **norm)
        out_sharding = None if sharding is None else (sharding[1], sharding[2], sharding[0])
        self.out = LinearGeneral(heads, self.out_features, axis=(-2, -1),
                                 kernel_init=out_kernel_init or kernel_init,
                                 bias_init=out_bias_init or bias_init, sharding=out_sharding,
                                 **common)

    def __call__(self, inputs_q: jax.Array, inputs_k: jax.Array | None = None,
                 inputs_v: jax.Array | None = None, *, mask: jax.Array | None = None,
                 deterministic: bool | None = None, ctx: Context | None = None) -> jax.Array:
        """Attends from ``inputs_q`` to ``inputs_k``/``inputs_v`` (both default to the previous one).

        Args:
          inputs_q: ``(batch..., q_length, in_features)``.
          inputs_k: ``(batch..., kv_length, in_kv_features)``; defaults to ``inputs_q``.
          inputs_v: like ``inputs_k``; defaults to ``inputs_k``.
          mask: boolean, broadcastable to ``(batch..., num_heads, q_length, kv_length)``;
            ``False`` entries are not attended to.
          deterministic: no dropout when True; overrides the constructor's value
            (with neither given: True).
          ctx: Context with a ``dropout`` stream, needed for dropout.

        Returns:
          ``(batch..., q_length, out_features)``.
        """
        if inputs_k is None:
            if inputs_v is not None:
                raise ValueError(
                    "MultiHeadAttention got inputs_v but no inputs_k; pass the keys too, or pass "
                    "only inputs_k to use it as both keys and values."
                )
            inputs_k = inputs_q
        if inputs_v is None:
            inputs_v = inputs_k
        for name, x, size in (("inputs_q", inputs_q, self.in_features),
                              ("inputs_k", inputs_k, self.in_kv_features),
                              ("inputs_v", inputs_v, self.in_kv_features)):
            if jnp.ndim(x) < 2 or jnp.shape(x)[-1] != size:
                raise ValueError(
                    f"MultiHeadAttention expects {name} of shape (batch..., length, {size}); found "
                    f"shape {jnp.shape(x)}."
                )
        if deterministic is None:
            deterministic = True if self.deterministic is None else self.deterministic
        dropout_rng = None
        if self.dropout_rate > 0.0 and not deterministic:
            dropout_rng = dropout_key(ctx, "dropout", "MultiHeadAttention")
        query, key, value = self.query(inputs_q), self.key(inputs_k), self.value(inputs_v)
        if self.normalize_qk:
            query, key = self.query_ln(query), self.key_ln(key)
        x = dot_product_attention(
            query, key, value, mask=mask, dropout_rng=dropout_rng, dropout_rate=self.dropout_rate,
            broadcast_dropout=self.broadcast_dropout, deterministic=deterministic,
            dtype=self.dtype, precision=self.precision,
            force_fp32_for_softmax=self.force_fp32_for_softmax,
        )
        return self.out(x)
