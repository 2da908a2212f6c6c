"""Multi-head dot-product attention with Linen's parameter layout and arithmetic."""

from __future__ import annotations

import inspect
import typing as tp

import jax
import jax.numpy as jnp
from jax import lax

from nnx_bridge.context import Context
from nnx_bridge.module import Module
from nnx_bridge.nn import dtypes, modes
from nnx_bridge.nn.attention_functions import combine_masks, dot_product_attention
from nnx_bridge.nn.dropout import dropout_key
from nnx_bridge.nn.linear import LinearGeneral
from nnx_bridge.nn.normalization import LayerNorm
from nnx_bridge.nn.params import Initializer, default_bias_init, default_kernel_init
from nnx_bridge.variables import check_sharding


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
      qkv_features: total size of the query/key/value projections (default: ``in_features``).
      out_features: size of the output (default: ``in_features``).
      ctx: the Context the ``params`` keys come from.
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
      attention_fn: ``(query, key, value, **kwargs) -> (batch..., q_length, num_heads,
        v_depth)``, called as Linen calls it: with those of ``mask``, ``dropout_rng``,
        ``dropout_rate``, ``broadcast_dropout``, ``deterministic``, ``dtype``, ``precision``
        and ``force_fp32_for_softmax`` that it has parameters for (default:
        `dot_product_attention`).
      decode: autoregressive decoding with a key/value cache, as Linen's ``decode=True``
        (the call's ``decode`` overrides it). The first call creates collection
        ``"cache"``: ``cached_key``/``cached_value`` shaped like the projected keys and
        values of that call's input ``(batch..., max_length, num_heads, head_dim)`` and
        ``cache_index`` (int32 0), without advancing it; each later call takes one token
        ``(batch..., 1, in_features)``, writes its key and value at ``cache_index``,
        attends to positions ``<= cache_index`` and advances the index.
      kernel_init: initialiser of the projection kernels (default: LeCun normal).
      out_kernel_init: initialiser of the ``out`` kernel (default: ``kernel_init``).
      bias_init: initialiser of the biases (default: zeros).
      out_bias_init: initialiser of the ``out`` bias (default: ``bias_init``).
      sharding: three axis names ``(embed, heads, head_dim)`` for the query/key/value
        kernels; their biases get ``(heads, head_dim)``, the ``out`` kernel
        ``(heads, head_dim, embed)`` and its bias ``(embed,)``.

    Variables: params ``query``, ``key``, ``value`` (``kernel (in, heads, head_dim)``,
    ``bias (heads, head_dim)``) and ``out`` (``kernel (heads, head_dim, out)``, ``bias (out,)``);
    with ``decode``, cache ``cached_key``, ``cached_value`` and ``cache_index``; with
    ``sow_weights=True`` and ``"intermediates"`` mutable, intermediates
    ``attention_weights`` (a tuple of ``(batch..., num_heads, q_length, kv_length)`` arrays).

    Example:
        >>> import jax.numpy as jnp, nnx_bridge as nnx
        >>> mha = nnx.nn.MultiHeadAttention(4, 16, ctx=nnx.Context(0))
        >>> mha(jnp.ones((2, 10, 16))).shape
        (2, 10, 16)
        >>> mha.query.kernel.value.shape, mha.out.kernel.value.shape
        ((16, 4, 4), (4, 4, 16))

        Decoding one token at a time (the first call sizes the cache):

        >>> dec = nnx.nn.MultiHeadAttention(4, 16, decode=True, ctx=nnx.Context(0))
        >>> _ = dec(jnp.ones((2, 10, 16)))
        >>> dec.cached_key.value.shape, int(dec.cache_index.value)
        ((2, 10, 4, 4), 0)
        >>> dec(jnp.ones((2, 1, 16))).shape, int(dec.cache_index.value)
        ((2, 1, 16), 1)
    """

    def __init__(
        self,
        num_heads: int,
        in_features: int,
        qkv_features: int | None = None,
        out_features: int | None = None,
        *,
        ctx: Context,
        in_kv_features: int | None = None,
        dropout_rate: float = 0.0,
        broadcast_dropout: bool = True,
        deterministic: bool | None = None,
        use_bias: bool = True,
        normalize_qk: bool = False,
        dtype: tp.Any = None,
        param_dtype: tp.Any = jnp.float32,
        precision: tp.Any = None,
        force_fp32_for_softmax: bool = False,
        attention_fn: tp.Callable[..., jax.Array] = dot_product_attention,
        decode: bool = False,
        kernel_init: Initializer = default_kernel_init,
        out_kernel_init: Initializer | None = None,
        bias_init: Initializer = default_bias_init,
        out_bias_init: Initializer | None = None,
        sharding: tp.Sequence[str | None] | None = None,
    ):
        qkv_features = in_features if qkv_features is None else qkv_features
        if num_heads < 1 or qkv_features % num_heads:
            raise ValueError(
                f"MultiHeadAttention: qkv_features={qkv_features} must be divisible by "
                f"num_heads={num_heads}; choose qkv_features as a multiple of num_heads."
            )
        sharding = check_sharding(
            sharding,
            3,
            where="MultiHeadAttention",
            what="query/key/value kernels (in_features, num_heads, head_dim)",
        )
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
        self.decode = bool(decode)
        if not callable(attention_fn):
            raise TypeError(
                f"MultiHeadAttention: attention_fn must be a function (query, key, value, **kwargs) "
                f"-> array, like nnx_bridge.nn.dot_product_attention; found {attention_fn!r}."
            )
        # None stands for the default, so that the ModuleDef holds no function in the common case.
        self.attention_fn = None if attention_fn is dot_product_attention else attention_fn

        heads = (self.num_heads, self.head_dim)
        common = dict(ctx=ctx, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, precision=precision)
        self.query = LinearGeneral(
            self.in_features, heads, kernel_init=kernel_init, bias_init=bias_init, sharding=sharding, **common
        )
        self.key = LinearGeneral(
            self.in_kv_features,
            heads,
            kernel_init=kernel_init,
            bias_init=bias_init,
            sharding=sharding,
            **common,
        )
        self.value = LinearGeneral(
            self.in_kv_features,
            heads,
            kernel_init=kernel_init,
            bias_init=bias_init,
            sharding=sharding,
            **common,
        )
        if self.normalize_qk:
            norm = dict(ctx=ctx, use_bias=False, dtype=dtype, param_dtype=param_dtype)
            self.query_ln = LayerNorm(self.head_dim, **norm)
            self.key_ln = LayerNorm(self.head_dim, **norm)
        out_sharding = None if sharding is None else (sharding[1], sharding[2], sharding[0])
        self.out = LinearGeneral(
            heads,
            self.out_features,
            axis=(-2, -1),
            kernel_init=out_kernel_init or kernel_init,
            bias_init=out_bias_init or bias_init,
            sharding=out_sharding,
            **common,
        )

    def __call__(
        self,
        inputs_q: jax.Array,
        inputs_k: jax.Array | None = None,
        inputs_v: jax.Array | None = None,
        *,
        mask: jax.Array | None = None,
        deterministic: bool | None = None,
        dropout_rng: jax.Array | None = None,
        sow_weights: bool = False,
        decode: bool | None = None,
        ctx: Context | None = None,
    ) -> jax.Array:
        """Attends from ``inputs_q`` to ``inputs_k``/``inputs_v`` (both default to the previous one).

        Args:
          inputs_q: ``(batch..., q_length, in_features)``.
          inputs_k: ``(batch..., kv_length, in_kv_features)``; defaults to ``inputs_q``.
          inputs_v: like ``inputs_k``; defaults to ``inputs_k``.
          mask: boolean, broadcastable to ``(batch..., num_heads, q_length, kv_length)``;
            ``False`` entries are not attended to.
          deterministic: no dropout when True; overrides the constructor's value
            (with neither given: True).
          dropout_rng: the dropout key; without it, ``ctx``'s ``dropout`` stream gives one.
          sow_weights: record the attention weights in collection ``"intermediates"``
            (name ``attention_weights``), as Linen; needs an ``attention_fn`` with a
            ``module`` parameter.
          decode: overrides the constructor's ``decode``.
          ctx: Context with a ``dropout`` stream, needed for dropout without ``dropout_rng``.

        Returns:
          ``(batch..., q_length, out_features)``.
        """
        inputs_k, inputs_v = _keys_and_values(inputs_q, inputs_k, inputs_v)
        for name, x, size in (
            ("inputs_q", inputs_q, self.in_features),
            ("inputs_k", inputs_k, self.in_kv_features),
            ("inputs_v", inputs_v, self.in_kv_features),
        ):
            if jnp.ndim(x) < 2 or jnp.shape(x)[-1] != size:
                raise ValueError(
                    f"MultiHeadAttention expects {name} of shape (batch..., length, {size}); found "
                    f"shape {jnp.shape(x)}."
                )
        if self.dropout_rate > 0.0:  # as Linen: `deterministic` only matters with dropout
            deterministic = modes.resolve(
                "deterministic", self.deterministic, deterministic, "MultiHeadAttention", fallback=True
            )
            if not deterministic and dropout_rng is None:
                dropout_rng = dropout_key(ctx, "dropout", "MultiHeadAttention")
        else:
            deterministic = True
        query, key, value = self.query(inputs_q), self.key(inputs_k), self.value(inputs_v)
        if self.normalize_qk:
            query, key = self.query_ln(query), self.key_ln(key)
        if self.decode if decode is None else decode:
            key, value, mask = self._decode_step(query, key, value, mask)
        x = self._attend(
            query,
            key,
            value,
            sow_weights,
            mask=mask,
            dropout_rng=dropout_rng,
            dropout_rate=self.dropout_rate,
            broadcast_dropout=self.broadcast_dropout,
            deterministic=deterministic,
            dtype=self.dtype,
            precision=self.precision,
            force_fp32_for_softmax=self.force_fp32_for_softmax,
        )
        return self.out(x)

    def init_cache(self, input_shape: tp.Sequence[int], dtype: tp.Any = jnp.float32) -> None:
        """Creates (or resets) the decode cache ahead of the first call, as flax.nnx's ``init_cache``.

        Linen creates the cache in its first call instead (``init`` with ``decode=True``);
        after either, each call with ``decode`` takes one token.

        Args:
          input_shape: the shape of a full-length input, ``(batch..., max_length, in_features)``.
          dtype: the dtype of the cached keys and values (the dtype the projections give).

        Example:
            >>> import jax.numpy as jnp, nnx_bridge as nnx
            >>> mha = nnx.nn.MultiHeadAttention(2, 8, decode=True, ctx=nnx.Context(0))
            >>> mha.init_cache((3, 16, 8))
            >>> mha.cached_value.value.shape, int(mha.cache_index.value)
            ((3, 16, 2, 4), 0)
            >>> mha(jnp.ones((3, 1, 8))).shape, int(mha.cache_index.value)
            ((3, 1, 8), 1)
        """
        if len(input_shape) < 2:
            raise ValueError(
                f"MultiHeadAttention.init_cache expects the shape of a full-length input, "
                f"(batch..., max_length, {self.in_features}); found {tuple(input_shape)}."
            )
        shape = (*input_shape[:-1], self.num_heads, self.head_dim)
        for name in ("cached_key", "cached_value"):
            self.variable("cache", name, jnp.zeros, shape, dtype).value = jnp.zeros(shape, dtype)
        self.variable("cache", "cache_index", _zero_index).value = _zero_index()

    def _decode_step(
        self, query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array | None
    ) -> tuple[jax.Array, jax.Array, jax.Array | None]:
        """Linen's decode cache: created by the first call, advanced one token per later call."""
        created_before = self.has_variable("cache", "cached_key")
        cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
        cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
        cache_index = self.variable("cache", "cache_index", _zero_index)
        if not created_before:
            return key, value, mask
        *batch, max_length, num_heads, head_dim = cached_key.value.shape
        expected = (*batch, 1, num_heads, head_dim)
        if tuple(query.shape) != expected:
            raise ValueError(
                f"MultiHeadAttention(decode=True): the cache holds keys of shape "
                f"{tuple(cached_key.value.shape)} (batch..., max_length, num_heads, head_dim), so "
                f"each decoding call takes one token: queries of shape {expected}, from inputs of "
                f"shape {(*batch, 1, self.in_features)}; found queries of shape "
                f"{tuple(query.shape)}. Feed one position per call, with the batch shape the "
                f"cache was created with."
            )
        index = cache_index.value
        zero = jnp.array(0, dtype=lax.dtype(index.dtype))
        start = (zero,) * len(batch) + (index, zero, zero)
        key = lax.dynamic_update_slice(cached_key.value, key, start)
        value = lax.dynamic_update_slice(cached_value.value, value, start)
        cached_key.value, cached_value.value = key, value
        cache_index.value = index + 1
        written = jnp.broadcast_to(jnp.arange(max_length) <= index, (*batch, 1, 1, max_length))
        return key, value, combine_masks(mask, written)

    def _attend(
        self, query: jax.Array, key: jax.Array, value: jax.Array, sow_weights: bool, **options: tp.Any
    ) -> jax.Array:
        """Calls ``attention_fn`` with the options it has parameters for, as Linen does."""
        function = dot_product_attention if self.attention_fn is None else self.attention_fn
        accepted = _parameter_names(function)
        options = {k: v for k, v in options.items() if k in accepted}
        if not sow_weights:
            return function(query, key, value, **options)
        if "module" not in accepted:
            raise TypeError(
                f"MultiHeadAttention(sow_weights=True) passes module=self to attention_fn so that "
                f"it can record the weights, but {getattr(function, '__name__', function)!r} has no "
                f"`module` parameter. Add one (and call module.sow('intermediates', "
                f"'attention_weights', weights)), or call with sow_weights=False."
            )
        return function(query, key, value, module=self, **options)


def _keys_and_values(
    inputs_q: jax.Array, inputs_k: jax.Array | None, inputs_v: jax.Array | None
) -> tuple[jax.Array, jax.Array]:
    if inputs_k is None:
        if inputs_v is not None:
            raise ValueError(
                "MultiHeadAttention got inputs_v but no inputs_k; pass the keys too, or pass "
                "only inputs_k to use it as both keys and values."
            )
        inputs_k = inputs_q
    return inputs_k, inputs_k if inputs_v is None else inputs_v


def _zero_index() -> jax.Array:
    return jnp.array(0, dtype=jnp.int32)


def _parameter_names(function: tp.Callable[..., tp.Any]) -> frozenset[str]:
    try:
        return frozenset(inspect.signature(function).parameters)
    except (TypeError, ValueError):  # no signature to read: pass the arrays only
        return frozenset()
