"""Context: stable key derivation, streams, forks, and use under jit/vmap."""

import hashlib

import jax
import numpy as np
import pytest
from jax import random

import nnx_bridge as nnx


def blake2s_uint32(data):
    """The seed's stable hash, computed here independently of the library."""
    digest = hashlib.blake2s(" ".join(str(x) for x in data).encode()).digest()
    return int.from_bytes(digest[:4], byteorder="big")


def name_hash(name):
    """The stream-name hash a single-key Context folds in, computed independently."""
    return int.from_bytes(hashlib.blake2s(name.encode()).digest()[:4], byteorder="big")


PARAMS = name_hash("params")


def same(a, b):
    return np.array_equal(
        np.asarray(random.key_data(a) if _typed(a) else a), np.asarray(random.key_data(b) if _typed(b) else b)
    )


def _typed(key):
    return jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)


def test_stable_hash_is_the_seeds_blake2s():
    for data in [(0,), (1,), (0, 0), (3, 1, 4), ()]:
        assert nnx.context.stable_hash(data) == blake2s_uint32(data)
    assert 0 <= nnx.context.stable_hash((123,)) < 2**32


def test_make_rng_folds_in_the_hash_of_the_call_position():
    key = random.PRNGKey(7)
    ctx = nnx.Context(key)
    for count in range(3):
        assert same(ctx.make_rng("params"), random.fold_in(key, blake2s_uint32((PARAMS, count))))
    assert ctx.count == 3


def test_fork_folds_in_the_fork_path():
    key = random.PRNGKey(7)
    ctx = nnx.Context(key)
    ctx.make_rng("params")
    child = ctx.fork()  # takes position 1
    assert (child.count, child.count_path) == (0, (1,))
    assert ctx.count == 2
    assert same(child.make_rng("params"), random.fold_in(key, blake2s_uint32((PARAMS, 1, 0))))
    grandchild = child.fork()
    assert grandchild.count_path == (1, 1)
    assert same(grandchild.make_rng("x"), random.fold_in(key, blake2s_uint32((name_hash("x"), 1, 1, 0))))


def test_every_call_and_fork_gets_a_distinct_key():
    ctx = nnx.Context(0)
    keys = [ctx.make_rng("params")]
    forks = [ctx.fork() for _ in range(3)]
    keys += [ctx.make_rng("params") for _ in range(3)]
    for f in forks:
        keys += [f.make_rng("params"), f.make_rng("dropout")]
        keys.append(f.fork().make_rng("params"))
    as_tuples = {tuple(np.asarray(k).tolist()) for k in keys}
    assert len(as_tuples) == len(keys)


def test_deterministic_across_contexts():
    def draw(ctx):
        child = ctx.fork()
        return [ctx.make_rng("params"), child.make_rng("params"), ctx.make_rng("dropout")]

    for a, b in zip(draw(nnx.Context(3)), draw(nnx.Context(3)), strict=True):
        assert same(a, b)


def test_int_seed_is_prng_key():
    assert same(nnx.Context(5).make_rng("params"), nnx.Context(random.PRNGKey(5)).make_rng("params"))


def test_new_style_typed_keys():
    key = random.key(0)
    out = nnx.Context(key).make_rng("params")
    assert _typed(out)
    assert same(out, random.fold_in(key, blake2s_uint32((PARAMS, 0))))


def test_dict_built_context_uses_each_streams_key():
    k1, k2 = random.PRNGKey(1), random.PRNGKey(2)
    ctx = nnx.Context({"params": k1, "dropout": k2})
    assert ctx.streams == ("dropout", "params")
    assert ctx.has_rng("params") and ctx.has_rng("dropout") and not ctx.has_rng("noise")
    assert same(ctx.make_rng("params"), random.fold_in(k1, blake2s_uint32((PARAMS, 0))))
    assert same(ctx.make_rng("dropout"), random.fold_in(k2, blake2s_uint32((name_hash("dropout"), 1))))
    child = ctx.fork()
    assert child.streams == ("dropout", "params")
    assert same(child.make_rng("dropout"), random.fold_in(k2, blake2s_uint32((name_hash("dropout"), 2, 0))))


def test_distinct_streams_give_distinct_keys():
    ctx = nnx.Context({"params": random.PRNGKey(1), "dropout": random.PRNGKey(2)})
    other = nnx.Context({"params": random.PRNGKey(1), "dropout": random.PRNGKey(2)})
    assert not same(ctx.make_rng("params"), other.make_rng("dropout"))


def test_single_key_context_derives_every_stream():
    ctx = nnx.Context(0)
    assert ctx.streams is None
    assert ctx.has_rng("anything")
    assert not same(ctx.make_rng("params"), ctx.make_rng("dropout"))


def test_dict_built_context_accepts_int_seeds():
    ctx = nnx.Context({"params": 3})
    assert same(ctx.make_rng("params"), random.fold_in(random.PRNGKey(3), blake2s_uint32((PARAMS, 0))))


def test_missing_stream_is_a_key_error_naming_the_streams():
    ctx = nnx.Context({"params": 0, "dropout": 1})
    with pytest.raises(KeyError, match=r"no RNG stream 'noise' \(streams available: 'dropout', 'params'\)"):
        ctx.make_rng("noise")
    assert ctx.count == 0  # the failed call took no position


def test_invalid_key():
    with pytest.raises(
        TypeError, match=r"Context\(key\) must be an int seed .* a PRNG key .*; found a str\."
    ):
        nnx.Context("0")
    with pytest.raises(TypeError, match=r"Context stream 'params' must be an int seed .*; found a NoneType"):
        nnx.Context({"params": None})


def test_repr():
    assert repr(nnx.Context(0)) == "Context(key, count=0, count_path=())"
    ctx = nnx.Context({"params": 0})
    ctx.fork()
    assert repr(ctx.fork()) == "Context(streams=['params'], count=0, count_path=(1,))"


# --- pytree: jit and vmap --------------------------------------------------------------


def test_pytree_round_trip_keeps_counters():
    ctx = nnx.Context({"params": 0, "dropout": 1})
    ctx.make_rng("params")
    child = ctx.fork()
    child.make_rng("dropout")
    leaves, treedef = jax.tree_util.tree_flatten(child)
    assert len(leaves) == 2
    rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)
    assert type(rebuilt) is nnx.Context
    assert (rebuilt.count, rebuilt.count_path, rebuilt.streams) == (1, (1,), ("dropout", "params"))
    assert same(rebuilt.make_rng("params"), child.make_rng("params"))


def test_make_rng_under_jit_matches_eager():
    ctx = nnx.Context(0)
    ctx.make_rng("params")
    jitted = jax.jit(lambda c: (c.make_rng("params"), c.fork().make_rng("params")))(ctx)
    assert ctx.count == 1  # the traced copy advanced, not the caller's Context
    eager = (ctx.make_rng("params"), ctx.fork().make_rng("params"))
    assert same(jitted[0], eager[0]) and same(jitted[1], eager[1])


def test_make_rng_under_vmap_uses_each_key():
    keys = random.split(random.PRNGKey(0), 3)
    batched = jax.vmap(lambda c: c.make_rng("dropout"))(nnx.Context(keys))
    for i in range(3):
        assert same(batched[i], nnx.Context(keys[i]).make_rng("dropout"))


def test_vmap_over_dict_built_context():
    keys = {"params": random.split(random.PRNGKey(0), 2), "dropout": random.split(random.PRNGKey(1), 2)}
    batched = jax.vmap(lambda c: c.make_rng("dropout"))(nnx.Context(keys))
    for i in range(2):
        single = nnx.Context({"params": keys["params"][i], "dropout": keys["dropout"][i]})
        assert same(batched[i], single.make_rng("dropout"))
