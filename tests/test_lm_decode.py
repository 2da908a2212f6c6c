"""A decoder-only Transformer LM in the shape of Flax's lm1b example, and its Linen twin.

The nnx_bridge model is built from `nnx_bridge.nn` layers; its attributes carry the
names Linen gives lm1b's submodules (``decoder/Embed_0``, ``encoderdecoderblock_0/
MultiHeadDotProductAttention_0``, ...), so both twins have the same variable tree and
an lm1b-style variables dict loads into either. Fast decoding follows lm1b's
``predict_step``: ``init`` with ``decode=True`` on a full-length input creates the
cache (``cached_key``/``cached_value`` per attention layer, ``cache_index`` there and
in the position embedding) without advancing it; each token then goes through
``apply({"params": ..., "cache": ...}, token, mutable=["cache"])``. With the same
variables, logits, caches and sampled sequences (greedy and temperature) equal
Linen's bit for bit, in float32 and bfloat16.
"""

from __future__ import annotations

import dataclasses
import functools
import typing as tp

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state
from helpers import FAST_COMPILE, assert_equal_trees, random_like, rbg_key
from jax import lax

import nnx_bridge as nnx
from nnx_bridge import nn


@dataclasses.dataclass(frozen=True)
class LMConfig:
    vocab_size: int = 16
    emb_dim: int = 8
    num_heads: int = 2
    qkv_dim: int = 8
    mlp_dim: int = 16
    num_layers: int = 2
    max_len: int = 32
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    deterministic: bool = True
    decode: bool = False
    dtype: tp.Any = jnp.float32


KERNEL_INIT = jax.nn.initializers.xavier_uniform()
BIAS_INIT = jax.nn.initializers.normal(stddev=1e-6)
EMBED_INIT = jax.nn.initializers.normal(stddev=1.0)


# ----------------------------------------------------------------------------------
# pieces both twins share (plain functions, no variables)
# ----------------------------------------------------------------------------------
def sinusoids(max_len: int, features: int) -> np.ndarray:
    """``(1, max_len, features)``: sines in the first half of the features, cosines in the second."""
    half = features // 2
    frequencies = np.exp(np.arange(half) * (-np.log(10000.0) / (half - 1)))
    angles = np.arange(max_len)[:, None] * frequencies[None, :]
    table = np.zeros((max_len, features), np.float32)
    table[:, :half], table[:, half : 2 * half] = np.sin(angles), np.cos(angles)
    return table[None]


def shift_right(tokens: jax.Array) -> jax.Array:
    """Teacher forcing: position ``t`` sees token ``t - 1`` (0 at the start)."""
    return jnp.pad(tokens, ((0, 0), (1, 0)))[:, :-1]


def decoder_mask(tokens: jax.Array, dtype: tp.Any) -> jax.Array:
    return nn.combine_masks(
        nn.make_attention_mask(tokens > 0, tokens > 0, dtype=dtype), nn.make_causal_mask(tokens, dtype=dtype)
    )


def positions(table: np.ndarray, x: jax.Array, index: tp.Any, created_before: bool) -> jax.Array:
    """Adds the embeddings of positions ``0..length-1``, or (decoding) of position ``index``."""
    if index is None or not created_before:
        return x + table[:, : x.shape[1]]
    i = index.value
    index.value = i + 1
    return x + lax.dynamic_slice(table, jnp.array((0, i, 0)), (1, 1, table.shape[-1]))


# ----------------------------------------------------------------------------------
# the nnx_bridge model
# ----------------------------------------------------------------------------------
class PositionEmbedding(nnx.Module):
    def __init__(self, config: LMConfig):
        self.max_len, self.decode = config.max_len, config.decode

    def __call__(self, x: jax.Array) -> jax.Array:
        index, created = None, False
        if self.decode:
            created = self.has_variable("cache", "cache_index")
            index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.uint32))
        return positions(sinusoids(self.max_len, x.shape[-1]), x, index, created)


class MlpBlock(nnx.Module):
    def __init__(self, config: LMConfig, *, ctx: nnx.Context):
        dense = dict(ctx=ctx, dtype=config.dtype, kernel_init=KERNEL_INIT, bias_init=BIAS_INIT)
        self.Dense_0 = nn.Linear(config.emb_dim, config.mlp_dim, **dense)
        self.Dense_1 = nn.Linear(config.mlp_dim, config.emb_dim, **dense)
        self.dropout = nn.Dropout(config.dropout_rate, deterministic=config.deterministic)

    def __call__(self, x: jax.Array, ctx: nnx.Context | None) -> jax.Array:
        x = self.dropout(jax.nn.relu(self.Dense_0(x)), ctx=ctx)
        return self.dropout(self.Dense_1(x), ctx=ctx)


class DecoderBlock(nnx.Module):
    def __init__(self, config: LMConfig, *, ctx: nnx.Context):
        self.LayerNorm_0 = nn.LayerNorm(config.emb_dim, dtype=config.dtype, ctx=ctx)
        self.MultiHeadDotProductAttention_0 = nn.MultiHeadAttention(
            config.num_heads,
            config.emb_dim,
            qkv_features=config.qkv_dim,
            dtype=config.dtype,
            kernel_init=KERNEL_INIT,
            bias_init=BIAS_INIT,
            use_bias=False,
            broadcast_dropout=False,
            dropout_rate=config.attention_dropout_rate,
            deterministic=config.deterministic,
            decode=config.decode,
            ctx=ctx,
        )
        self.dropout = nn.Dropout(config.dropout_rate, deterministic=config.deterministic)
        self.LayerNorm_1 = nn.LayerNorm(config.emb_dim, dtype=config.dtype, ctx=ctx)
        self.MlpBlock_0 = MlpBlock(config, ctx=ctx)

    def __call__(self, x: jax.Array, mask: jax.Array | None, ctx: nnx.Context | None) -> jax.Array:
        h = self.MultiHeadDotProductAttention_0(self.LayerNorm_0(x), mask=mask, ctx=ctx)
        x = x + self.dropout(h, ctx=ctx)
        return x + self.MlpBlock_0(self.LayerNorm_1(x), ctx)


class Decoder(nnx.Module):
    def __init__(self, config: LMConfig, *, ctx: nnx.Context):
        self.config = config
        self.Embed_0 = nn.Embed(config.vocab_size, config.emb_dim, embedding_init=EMBED_INIT, ctx=ctx)
        self.posembed_output = PositionEmbedding(config)
        self.dropout = nn.Dropout(config.dropout_rate, deterministic=config.deterministic)
        for i in range(config.num_layers):  # lm1b's names; a list would be blocks/0, blocks/1
            setattr(self, f"encoderdecoderblock_{i}", DecoderBlock(config, ctx=ctx))
        self.encoderdecoder_norm = nn.LayerNorm(config.emb_dim, dtype=config.dtype, ctx=ctx)
        self.logitdense = nn.Linear(
            config.emb_dim,
            config.vocab_size,
            dtype=config.dtype,
            kernel_init=KERNEL_INIT,
            bias_init=BIAS_INIT,
            ctx=ctx,
        )

    def __call__(self, tokens: jax.Array, mask: jax.Array | None, ctx: nnx.Context | None) -> jax.Array:
        config = self.config
        y = tokens.astype(jnp.int32)
        if not config.decode:
            y = shift_right(y)
        y = self.dropout(self.posembed_output(self.Embed_0(y)), ctx=ctx).astype(config.dtype)
        for i in range(config.num_layers):
            y = getattr(self, f"encoderdecoderblock_{i}")(y, mask, ctx)
        return self.logitdense(self.encoderdecoder_norm(y))


class TransformerLM(nnx.Module):
    def __init__(self, config: LMConfig, *, ctx: nnx.Context):
        self.config = config
        self.decoder = Decoder(config, ctx=ctx)

    def __call__(self, tokens: jax.Array, *, ctx: nnx.Context | None = None) -> jax.Array:
        mask = None if self.config.decode else decoder_mask(tokens, self.config.dtype)
        return self.decoder(tokens, mask, ctx).astype(self.config.dtype)


# ----------------------------------------------------------------------------------
# the Linen twin
# ----------------------------------------------------------------------------------
class LinenPositionEmbedding(linen.Module):
    config: LMConfig

    @linen.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        index, created = None, False
        if self.config.decode:
            created = self.has_variable("cache", "cache_index")
            index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.uint32))
        return positions(sinusoids(self.config.max_len, x.shape[-1]), x, index, created)


class LinenMlpBlock(linen.Module):
    config: LMConfig

    @linen.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        dense = dict(dtype=c.dtype, kernel_init=KERNEL_INIT, bias_init=BIAS_INIT)
        x = linen.Dropout(c.dropout_rate)(jax.nn.relu(linen.Dense(c.mlp_dim, **dense)(x)), c.deterministic)
        return linen.Dropout(c.dropout_rate)(linen.Dense(c.emb_dim, **dense)(x), c.deterministic)


class LinenDecoderBlock(linen.Module):
    config: LMConfig

    @linen.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        c = self.config
        h = linen.MultiHeadDotProductAttention(
            num_heads=c.num_heads,
            qkv_features=c.qkv_dim,
            dtype=c.dtype,
            kernel_init=KERNEL_INIT,
            bias_init=BIAS_INIT,
            use_bias=False,
            broadcast_dropout=False,
            dropout_rate=c.attention_dropout_rate,
            deterministic=c.deterministic,
            decode=c.decode,
        )(linen.LayerNorm(dtype=c.dtype)(x), mask=mask)
        x = x + linen.Dropout(c.dropout_rate)(h, deterministic=c.deterministic)
        return x + LinenMlpBlock(c, name="MlpBlock_0")(linen.LayerNorm(dtype=c.dtype)(x))


class LinenDecoder(linen.Module):
    config: LMConfig

    @linen.compact
    def __call__(self, tokens: jax.Array, mask: jax.Array | None) -> jax.Array:
        c = self.config
        y = tokens.astype(jnp.int32)
        if not c.decode:
            y = shift_right(y)
        y = linen.Embed(c.vocab_size, c.emb_dim, embedding_init=EMBED_INIT)(y)
        y = LinenPositionEmbedding(c, name="posembed_output")(y)
        y = linen.Dropout(c.dropout_rate)(y, deterministic=c.deterministic).astype(c.dtype)
        for i in range(c.num_layers):
            y = LinenDecoderBlock(c, name=f"encoderdecoderblock_{i}")(y, mask)
        y = linen.LayerNorm(dtype=c.dtype, name="encoderdecoder_norm")(y)
        return linen.Dense(
            c.vocab_size, dtype=c.dtype, kernel_init=KERNEL_INIT, bias_init=BIAS_INIT, name="logitdense"
        )(y)


class LinenTransformerLM(linen.Module):
    config: LMConfig

    @linen.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        mask = None if self.config.decode else decoder_mask(tokens, self.config.dtype)
        return LinenDecoder(self.config, name="decoder")(tokens, mask).astype(self.config.dtype)


# ----------------------------------------------------------------------------------
# lm1b's predict_step, with the model as an argument
# ----------------------------------------------------------------------------------
EOS = 2


def temperature_sample(
    prompt: jax.Array,
    cache: tp.Any,
    tokens_to_logits: tp.Callable[..., tp.Any],
    key: jax.Array,
    temperature: float = 1.0,
    topk: int = 20,
) -> jax.Array:
    """Extends ``prompt`` (``(batch, length)``, 0 = to be sampled) token by token until EOS."""
    batch, length = prompt.shape

    def more(carry: tp.Any) -> jax.Array:
        i, _, _, _, ended, _ = carry
        return (i < length - 1) & ~jnp.all(ended)

    def step(carry: tp.Any) -> tp.Any:
        i, sequences, cache, token, ended, key = carry
        key, draw = jax.random.split(key)
        logits, cache = tokens_to_logits(token, cache)
        if topk:
            top_logits, top_ids = lax.top_k(logits, topk)
            choice = jax.random.categorical(draw, top_logits / temperature).astype(jnp.int32)
            sampled = jnp.take_along_axis(top_ids, choice[:, None], axis=-1)[:, 0]
        else:
            sampled = jax.random.categorical(draw, logits / temperature).astype(jnp.int32)
        given = sequences[:, i + 1]
        sampled = jnp.where(given == 0, sampled, given)[:, None] * ~ended
        ended = ended | (sampled == EOS)
        sequences = lax.dynamic_update_slice(sequences, sampled, (0, i + 1))
        return i + 1, sequences, cache, sampled, ended, key

    start = (jnp.array(-1), prompt, cache, jnp.zeros((batch, 1), jnp.int32), jnp.zeros((batch, 1), bool), key)
    return lax.while_loop(more, step, start)[1]


def predict(
    model: linen.Module, params: tp.Any, prompt: jax.Array, key: jax.Array, temperature: float, topk: int
) -> jax.Array:
    """lm1b's predict_step: init sizes the cache, then one apply(..., mutable=["cache"]) per token."""
    cache = model.init(rbg_key(0), jnp.ones(prompt.shape, model.config.dtype))["cache"]

    def tokens_to_logits(ids: jax.Array, cache: tp.Any) -> tp.Any:
        logits, updates = model.apply({"params": params, "cache": cache}, ids, mutable=["cache"])
        return logits.squeeze(axis=1), updates["cache"]

    return temperature_sample(prompt, cache, tokens_to_logits, key, temperature, topk)


def twins(config: LMConfig) -> tuple[linen.Module, linen.Module]:
    """(the bridged nnx_bridge model, its Linen twin): only the model line differs."""
    return nnx.to_linen(TransformerLM, config), LinenTransformerLM(config)


@functools.cache
def trained(dtype: tp.Any) -> tuple[LMConfig, tp.Any]:
    """A trained model's stand-in: random values in the shapes of Linen's params."""
    train = LMConfig(dtype=dtype)
    shapes = jax.eval_shape(LinenTransformerLM(train).init, rbg_key(3), jnp.ones((2, 12), jnp.int32))
    return train, random_like({"params": shapes["params"]})["params"]


@functools.cache
def decode_init(dtype: tp.Any) -> tuple[tp.Any, tp.Any]:
    """``init`` with ``decode=True`` on a full-length input: (bridged variables, Linen's)."""
    ours, theirs = twins(dataclasses.replace(trained(dtype)[0], decode=True))
    sample = jnp.ones((2, 12), dtype)
    return tuple(
        jax.jit(model.init).lower(rbg_key(0), sample).compile(FAST_COMPILE)(rbg_key(0), sample)
        for model in (ours, theirs)
    )


DTYPES = pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])


# ----------------------------------------------------------------------------------
# tests
# ----------------------------------------------------------------------------------
@DTYPES
def test_decode_init_gives_linens_tree_and_an_unadvanced_cache(dtype):
    train, _ = trained(dtype)
    variables, expected = decode_init(dtype)
    assert_equal_trees(variables["cache"], expected["cache"])  # zeros, index 0, same shapes/dtypes
    assert_equal_trees(
        jax.tree.map(jnp.zeros_like, variables["params"]), jax.tree.map(jnp.zeros_like, expected["params"])
    )
    attention = variables["cache"]["decoder"]["encoderdecoderblock_1"]["MultiHeadDotProductAttention_0"]
    assert attention["cached_key"].shape == (2, 12, train.num_heads, train.qkv_dim // train.num_heads)
    assert attention["cached_key"].dtype == dtype
    assert attention["cache_index"].dtype == jnp.int32 and int(attention["cache_index"]) == 0
    assert variables["cache"]["decoder"]["posembed_output"]["cache_index"].dtype == jnp.uint32


@DTYPES
def test_per_token_apply_gives_linens_logits_and_cache_bit_for_bit(dtype):
    train, params = trained(dtype)
    ours, theirs = twins(dataclasses.replace(train, decode=True))
    our_cache, cache = (variables["cache"] for variables in decode_init(dtype))

    @jax.jit
    def step(params: tp.Any, linen_cache: tp.Any, our_cache: tp.Any, token: jax.Array) -> tp.Any:
        y_linen, linen_updates = theirs.apply(
            {"params": params, "cache": linen_cache}, token, mutable=["cache"]
        )
        y, updates = ours.apply({"params": params, "cache": our_cache}, token, mutable=["cache"])
        return (y_linen, linen_updates["cache"]), (y, updates["cache"])

    tokens = np.random.default_rng(0).integers(1, train.vocab_size, (12, 2, 1))
    for token in tokens:
        (y_linen, cache), (y, our_cache) = step(params, cache, our_cache, token)
        assert y.shape == (2, 1, train.vocab_size) and y.dtype == train.dtype
        assert_equal_trees(y, y_linen)
        assert_equal_trees(our_cache, cache)
    assert int(cache["decoder"]["posembed_output"]["cache_index"]) == 12


@pytest.mark.parametrize(
    "dtype,temperature,topk",
    [
        (jnp.float32, 1.0, 1),
        (jnp.float32, 1.3, 0),
        (jnp.bfloat16, 0.7, 5),
    ],
    ids=["float32-greedy", "float32-full", "bfloat16-top5"],
)
def test_predict_step_samples_linens_sequences(dtype, temperature, topk):
    train, params = trained(dtype)
    prompt = jnp.zeros((2, 12), jnp.int32).at[:, 0].set(jnp.array([5, 9])).at[0, 1].set(7)
    decode = dataclasses.replace(train, decode=True)
    run = jax.jit(predict, static_argnums=(0, 4, 5))
    sequences = [
        run.lower(model, params, prompt, rbg_key(4), temperature, topk).compile(FAST_COMPILE)(
            params, prompt, rbg_key(4)
        )
        for model in twins(decode)
    ]
    np.testing.assert_array_equal(sequences[0], sequences[1])
    assert sequences[0][1, 0] == 9 and sequences[0][0, 1] == 7  # the prompt is kept
    assert np.any(np.asarray(sequences[0])[:, 2:] != 0)  # and something was sampled


@DTYPES
def test_variables_load_into_the_linen_twin_and_back(dtype):
    ours, theirs = twins(dataclasses.replace(trained(dtype)[0], decode=True))
    our_variables, linen_variables = decode_init(dtype)  # different params: different keys/initialisers
    token = jnp.array([[3], [4]])

    @jax.jit
    def both_ways(our_variables: tp.Any, linen_variables: tp.Any) -> tp.Any:
        return [
            (ours.apply(v, token, mutable=["cache"]), theirs.apply(v, token, mutable=["cache"]))
            for v in (our_variables, linen_variables)
        ]

    for (y, updates), (y_linen, linen_updates) in both_ways(our_variables, linen_variables):
        assert_equal_trees(y, y_linen)
        assert_equal_trees(updates, linen_updates)


def test_a_training_step_matches_linens():
    """The training configuration in a jitted TrainState step (deterministic: Linen draws its
    dropout keys per submodule path, the bridge from its own streams)."""
    train, params = trained(jnp.float32)
    tokens = jnp.array([[5, 3, 8, 1, 0, 0], [4, 4, 9, 2, 6, 0]])

    @jax.jit
    def step(state: train_state.TrainState, tokens: jax.Array) -> tp.Any:
        def loss_fn(params: tp.Any) -> jax.Array:
            logits = state.apply_fn({"params": params}, tokens)
            return optax.softmax_cross_entropy_with_integer_labels(logits, tokens).mean()

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return state.apply_gradients(grads=grads), loss

    results = []
    for model in twins(train):
        state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=optax.adam(1e-2))
        state, loss = step.lower(state, tokens).compile(FAST_COMPILE)(state, tokens)
        results.append((loss, state.params))
    assert_equal_trees(results[0], results[1])
