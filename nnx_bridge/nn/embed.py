"""`Embed`: a lookup table from integer ids to vectors (Linen's ``nn.Embed``)."""

from __future__ import annotations

import typing as tp

import jax
import jax.numpy as jnp

from nnx_bridge.context import Context
from nnx_bridge.module import Module
from nnx_bridge.nn import dtypes
from nnx_bridge.nn.params import Initializer, check_shapes, default_embed_init, make_param
from nnx_bridge.variables import check_sharding


class Embed(Module):
    """Maps integer ids in ``[0, num_embeddings)`` to ``features``-dimensional vectors.

    As in Linen, ids are looked up with `jnp.take`, so an id out of range gives
    NaNs rather than an error (JAX cannot raise on traced values), and with
    ``num_embeddings == 1`` the single row is broadcast.

    Args:
      num_embeddings: vocabulary size.
      features: size of each embedding vector.
      ctx: the Context the ``params`` key comes from.
      dtype: dtype of the looked-up vectors; None keeps the table's dtype.
      param_dtype: storage dtype of the table.
      embedding_init: initialiser of the table (default: Linen's,
        ``variance_scaling(1.0, 'fan_in', 'normal', out_axis=0)``).
      sharding: axis names of the table ``(num_embeddings, features)``.

    Variables: params ``embedding`` of shape ``(num_embeddings, features)``.

    Example:
        >>> import jax.numpy as jnp, nnx_bridge as nnx
        >>> embed = nnx.nn.Embed(10, 4, ctx=nnx.Context(0))
        >>> embed(jnp.array([[1, 2, 3]])).shape
        (1, 3, 4)
        >>> embed.attend(jnp.ones((1, 4))).shape
        (1, 10)
    """

    def __init__(
        self,
        num_embeddings: int,
        features: int,
        *,
        ctx: Context,
        dtype: tp.Any = None,
        param_dtype: tp.Any = jnp.float32,
        embedding_init: Initializer = default_embed_init,
        sharding: tp.Sequence[str | None] | None = None,
    ):
        sharding = check_sharding(sharding, 2, where="Embed", what="embedding (num_embeddings, features)")
        self.num_embeddings = int(num_embeddings)
        self.features = int(features)
        self.dtype = dtypes.as_dtype(dtype)
        self.embedding = make_param(
            ctx, embedding_init, (self.num_embeddings, self.features), param_dtype, sharding
        )

    def __call__(self, ids: jax.Array) -> jax.Array:
        """Looks up ``ids`` (any shape, integer dtype); the output adds a ``features`` axis."""
        check_shapes(self, "num_embeddings features", embedding=(self.num_embeddings, self.features))
        ids = jnp.asarray(ids)
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise ValueError(
                f"Embed expects integer ids; found an input of dtype {ids.dtype} (shape {ids.shape}). "
                f"Cast it, e.g. ids.astype(jnp.int32); to project vectors onto the table use "
                f"embed.attend(x)."
            )
        (embedding,) = dtypes.promote_dtype(self.embedding.value, dtype=self.dtype, inexact=False)
        if self.num_embeddings == 1:
            return jnp.broadcast_to(embedding, ids.shape + (self.features,))
        return jnp.take(embedding, ids, axis=0)

    def attend(self, query: jax.Array) -> jax.Array:
        """Inner products of ``query`` (``(..., features)``) with every embedding: ``(..., num_embeddings)``.

        Use it to share the table between the input embedding and the output logits.

        Example:
            >>> import jax.numpy as jnp, nnx_bridge as nnx
            >>> embed = nnx.nn.Embed(5, 3, ctx=nnx.Context(0))
            >>> embed.attend(jnp.ones((2, 7, 3))).shape
            (2, 7, 5)
        """
        if jnp.ndim(query) == 0 or jnp.shape(query)[-1] != self.features:
            raise ValueError(
                f"Embed.attend expects a query whose last dimension is features={self.features}; "
                f"found shape {jnp.shape(query)}."
            )
        query, embedding = dtypes.promote_dtype(query, self.embedding.value, dtype=self.dtype)
        return jnp.dot(query, embedding.T)
