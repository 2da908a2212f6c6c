"""`SpectralNorm`: a wrapped layer's weight matrices divided by their largest singular value."""

from __future__ import annotations

import typing as tp

import jax
import jax.numpy as jnp

from nnx_bridge.context import Context
from nnx_bridge.module import Module
from nnx_bridge.nn import dtypes
from nnx_bridge.nn.weight_norm import LAYER, assign, l2_normalize, state_name, substituted
from nnx_bridge.state import State
from nnx_bridge.variables import Variable, make_variable


class SpectralNorm(Module):
    """Spectral normalisation of a wrapped layer (Linen's ``nn.SpectralNorm``).

    On each call, every variable of the wrapped layer with two or more
    dimensions (higher ones flattened to ``(-1, last)``) is divided by an
    estimate of its largest singular value, found by ``n_steps`` steps of power
    iteration from the stored vector ``u``, while the layer runs. With
    ``update_stats`` the new ``u`` and ``sigma`` are stored (training; through
    the Linen bridge pass ``mutable=[collection_name]``); without, they are only
    read (evaluation). As Linen's ``init`` stores the normalised weights, the
    constructor replaces those variables of `layer_instance` by their
    normalised values (using the initial ``u``, without updating it).

    Args:
      layer_instance: the layer to wrap (stored under the name ``layer_instance``).
      ctx: the Context the ``params`` keys of the initial ``u`` vectors come from.
      n_steps: power-iteration steps per call (0 leaves the weights unchanged).
      epsilon: added in the l2 normalisations.
      dtype: dtype of the normalised weights; None infers it.
      param_dtype: storage dtype of ``u`` and ``sigma``.
      error_on_non_matrix: raise for variables of more than 2 dimensions instead
        of flattening them.
      update_stats: the default of the call's ``update_stats`` (flax.nnx's
        constructor argument; Linen passes it to every call).
      collection_name: the collection of ``u`` and ``sigma``.

    Variables: the wrapped layer's under ``layer_instance/...``, and in
    ``collection_name`` (default ``batch_stats``) ``"layer_instance/<path>/u"``
    of shape ``(1, last dimension)`` (standard normal) and
    ``"layer_instance/<path>/sigma"`` (a scalar, one), each one name containing "/".

    Example:
        >>> import jax.numpy as jnp, nnx_bridge as nnx
        >>> ctx = nnx.Context(0)
        >>> layer = nnx.nn.SpectralNorm(nnx.nn.Linear(3, 2, ctx=ctx), ctx=ctx)
        >>> sorted(nnx.to_variables(layer.partition()[0])["batch_stats"])
        ['layer_instance/kernel/sigma', 'layer_instance/kernel/u']
        >>> layer(jnp.ones((4, 3)), update_stats=False).shape
        (4, 2)
    """

    def __init__(
        self,
        layer_instance: Module,
        *,
        ctx: Context,
        n_steps: int = 1,
        epsilon: float = 1e-12,
        dtype: tp.Any = None,
        param_dtype: tp.Any = jnp.float32,
        error_on_non_matrix: bool = False,
        update_stats: bool = True,
        collection_name: str = "batch_stats",
    ):
        if not isinstance(layer_instance, Module):
            raise TypeError(
                f"SpectralNorm wraps a layer instance (an nnx_bridge Module); found "
                f"{type(layer_instance).__name__}. Build the layer first, e.g. "
                f"SpectralNorm(nnx.nn.Linear(3, 4, ctx=ctx), ctx=ctx)."
            )
        self.layer_instance = layer_instance
        self.n_steps = int(n_steps)
        self.epsilon = float(epsilon)
        self.dtype = dtypes.as_dtype(dtype)
        self.update_stats = bool(update_stats)
        self.collection_name = collection_name
        state, _ = layer_instance.partition()
        targets = []
        for path, variable in state.items():
            shape = jnp.shape(variable.value)
            if len(shape) <= 1 or self.n_steps < 1:
                continue
            if len(shape) > 2 and error_on_non_matrix:
                raise ValueError(
                    f"SpectralNorm: the variable {LAYER + '/' + path!r} is {len(shape)}-D (shape "
                    f"{shape}) but error_on_non_matrix is True. Pass error_on_non_matrix=False to "
                    f"normalise it as a matrix of shape (-1, {shape[-1]}), as Linen does."
                )
            targets.append(path)
            u = jax.random.normal(ctx.make_rng("params"), (1, shape[-1]), param_dtype)
            setattr(self, state_name(path, "u"), make_variable(collection_name, u))
            setattr(
                self, state_name(path, "sigma"), make_variable(collection_name, jnp.ones((), param_dtype))
            )
        self.targets = tuple(targets)  # the layer's State paths that are normalised
        # As Linen's init: the wrapped layer keeps its variables normalised.
        assign(layer_instance, self._normalized(state, update_stats=False))

    def _normalized(self, state: State, *, update_stats: bool) -> dict[str, Variable[tp.Any]]:
        return {
            path: state[path].replace(self._normalize(path, state[path].value, update_stats))
            for path in self.targets
        }

    def _normalize(self, path: str, weight: tp.Any, update_stats: bool) -> jax.Array:
        value = jnp.asarray(weight)
        shape = value.shape
        if value.ndim > 2:
            value = jnp.reshape(value, (-1, shape[-1]))
        u_var = getattr(self, state_name(path, "u"))
        sigma_var = getattr(self, state_name(path, "sigma"))
        u0 = u_var.value
        for _ in range(self.n_steps):
            v0 = l2_normalize(jnp.matmul(u0, value.transpose([1, 0])), eps=self.epsilon)
            u0 = l2_normalize(jnp.matmul(v0, value), eps=self.epsilon)
        u0 = jax.lax.stop_gradient(u0)
        v0 = jax.lax.stop_gradient(v0)
        sigma = jnp.matmul(jnp.matmul(v0, value), jnp.transpose(u0))[0, 0]
        value = value / jnp.where(sigma != 0, sigma, 1)
        if update_stats:
            u_var.value = u0
            sigma_var.value = sigma
        dtype = dtypes.canonicalize_dtype(weight, u0, v0, sigma, dtype=self.dtype)
        return jnp.asarray(value.reshape(shape), dtype)

    def __call__(self, *args: tp.Any, update_stats: bool | None = None, **kwargs: tp.Any) -> tp.Any:
        """Calls the wrapped layer with its matrices spectrally normalised.

        ``update_stats`` (default: the constructor's) stores the new ``u`` and
        ``sigma``; the other arguments go to the wrapped layer.
        """
        if update_stats is None:
            update_stats = self.update_stats
        state, _ = self.layer_instance.partition()
        with substituted(self.layer_instance, self._normalized(state, update_stats=bool(update_stats))):
            return tp.cast(tp.Any, self.layer_instance)(*args, **kwargs)
