"""Context: named RNG streams with deterministic, stable key derivation."""

from __future__ import annotations

import hashlib
import typing as tp

import jax
import jax.numpy as jnp
from jax import random

from nnx_bridge.errors import ReadableKeyError


class MissingRngStreamError(ReadableKeyError):
    """Raised by `Context.make_rng` for a stream that a dict-built Context lacks."""


_ACCEPTED = (
    "an int seed (a Python int in [-2**63, 2**63)), a PRNG key from jax.random.PRNGKey(seed) "
    "(uint32, shape (2,)) or jax.random.key(seed) (a typed key), a batch of such keys, or, to "
    "give each stream its own key, a dict {stream name: key or seed}"
)


def _as_key(key: tp.Any, what: str) -> jax.Array:
    """Checks `key` is one accepted form of a single key and returns it as a key."""
    if isinstance(key, int) and not isinstance(key, bool):
        if not -(2**63) <= key < 2**63:
            raise ValueError(
                f"{what}: the seed {key} does not fit in a signed 64-bit int. Accepted: {_ACCEPTED}. "
                f"Reduce the seed, e.g. seed % 2**63."
            )
        return random.PRNGKey(key)
    dtype = getattr(key, "dtype", None)
    shape = getattr(key, "shape", None)
    if dtype is not None and shape is not None:
        # A batch of keys is accepted too (a Context given to jax.vmap holds one per example).
        if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            return key
        if dtype == jnp.uint32 and len(shape) >= 1 and shape[-1] in (2, 4):
            return key
        found = f"an array of dtype {dtype} and shape {tuple(shape)}"
        hint = (
            " For an int seed, pass int(x)."
            if tuple(shape) == ()
            else " To make a key from it, use jax.random.PRNGKey(seed) or jax.random.key(seed)."
        )
    else:
        found = f"a {type(key).__name__}"
        hint = ""
    raise TypeError(f"{what} must be {_ACCEPTED}; found {found}.{hint}")


def stable_hash(data: tuple[int, ...]) -> int:
    """A uint32 hash of a tuple of ints that is the same in every process.

    Example:
        >>> import nnx_bridge as nnx
        >>> nnx.context.stable_hash((0,))
        1697534734
    """
    digest = hashlib.blake2s(" ".join(str(x) for x in data).encode()).digest()
    return int.from_bytes(digest[:4], byteorder="big")


def stream_hash(name: str) -> int:
    """A uint32 hash of a stream name that is the same in every process.

    A Context folds it into each key it makes, so that ``make_rng("params")``
    and ``make_rng("dropout")`` of a Context built from one key never give the
    same key.

    Example:
        >>> import nnx_bridge as nnx
        >>> nnx.context.stream_hash("params") != nnx.context.stream_hash("dropout")
        True
    """
    if not isinstance(name, str):
        raise TypeError(f"RNG stream names are str such as 'params' or 'dropout'; found {name!r}.")
    return int.from_bytes(hashlib.blake2s(name.encode()).digest()[:4], byteorder="big")


class Context:
    """Named RNG streams for building and calling Modules.

    ``Context(key)`` derives every stream from one key; ``Context({"params": k1,
    "dropout": k2})`` has exactly the given streams, and asking it for another
    one is an error. Each `make_rng` call folds a stable hash of the call's
    position (the fork path and a counter) and of the stream's name (as Linen
    folds the name in) into the stream's key, so every call, stream and fork
    gets its own key, identically on every run.

    Example:
        >>> import jax, nnx_bridge as nnx
        >>> ctx = nnx.Context(jax.random.PRNGKey(0))
        >>> k1, k2 = ctx.make_rng("params"), ctx.make_rng("params")
        >>> bool((k1 != k2).any())
        True
        >>> nnx.Context({"params": jax.random.PRNGKey(1)}).make_rng("params").shape
        (2,)
    """

    def __init__(
        self,
        key: tp.Any,
        count: int = 0,
        count_path: tuple[int, ...] = (),
    ):
        if isinstance(key, tp.Mapping):
            for name in key:
                if not isinstance(name, str):
                    raise TypeError(
                        f"Context: stream names are str such as 'params' or 'dropout'; found "
                        f"{name!r} in the dict given."
                    )
            self.key: tp.Any = {
                name: _as_key(k, f"Context stream {name!r}") for name, k in sorted(key.items())
            }
        else:
            self.key = _as_key(key, "Context(key)")
        self.count = count
        self.count_path = tuple(count_path)

    @property
    def streams(self) -> tuple[str, ...] | None:
        """The stream names of a dict-built Context, or None when every stream is derived."""
        return tuple(self.key) if isinstance(self.key, dict) else None

    def has_rng(self, name: str) -> bool:
        """Whether `make_rng(name)` can succeed."""
        return not isinstance(self.key, dict) or name in self.key

    def make_rng(self, name: str) -> jax.Array:
        """A fresh key for stream `name`; every call returns a different key.

        Example:
            >>> import jax, nnx_bridge as nnx
            >>> nnx.Context(0).make_rng("dropout").shape
            (2,)
        """
        if isinstance(self.key, dict):
            if name not in self.key:
                available = ", ".join(repr(s) for s in self.key) or "none"
                raise MissingRngStreamError(
                    f"The Context has no RNG stream {name!r} (streams available: {available}). "
                    f"Pass a key for it, e.g. Context({{..., {name!r}: jax.random.PRNGKey(0)}}), "
                    f"or build the Context from one key to derive every stream."
                )
            key = self.key[name]
        else:
            key = self.key
        # The stream's name is folded in too, so that streams sharing one key differ.
        fold_data = stable_hash((stream_hash(name),) + self.count_path + (self.count,))
        self.count += 1
        return random.fold_in(key, fold_data)

    def fork(self) -> "Context":
        """A new Context whose keys differ from every key this one gives.

        Use it to hand randomness to a JAX transform (e.g. one fork per scan step).

        Example:
            >>> import nnx_bridge as nnx
            >>> ctx = nnx.Context(0)
            >>> child = ctx.fork()
            >>> bool((child.make_rng("params") != ctx.make_rng("params")).any())
            True
        """
        count_path = self.count_path + (self.count,)
        self.count += 1
        new = object.__new__(Context)
        new.key, new.count, new.count_path = self.key, 0, count_path
        return new

    def __repr__(self) -> str:
        streams = self.streams
        what = "key" if streams is None else f"streams={list(streams)}"
        return f"Context({what}, count={self.count}, count_path={self.count_path})"


def _flatten(ctx: Context) -> tuple[tuple[tp.Any], tuple[int, tuple[int, ...]]]:
    return (ctx.key,), (ctx.count, ctx.count_path)


def _unflatten(meta: tuple[int, tuple[int, ...]], children: tuple[tp.Any]) -> Context:
    new = object.__new__(Context)
    new.key, (new.count, new.count_path) = children[0], meta
    return new


jax.tree_util.register_pytree_node(Context, _flatten, _unflatten)
