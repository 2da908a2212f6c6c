"""`FromLinen`: a Flax Linen module as an nnx_bridge Module, for block-by-block migration."""

from __future__ import annotations

import dataclasses
import functools
import re
import typing as tp

import flax.errors
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import meta

from nnx_bridge.context import Context, MissingRngStreamError
from nnx_bridge.linen import arguments
from nnx_bridge.module import Module
from nnx_bridge.state import flatten_nested, nest, nest_into
from nnx_bridge.variables import Variable, make_variable

# The one attribute of a FromLinen that is not a Linen variable name (see `_reserved_names`).
_CONFIG = "_from_linen"
_LINEN_MODULE_NAMES = frozenset(dir(nn.Module))  # Linen's own API, not the module's methods
_STREAM_IN_LINEN_ERROR = re.compile(r'needs PRNG for "([^"]*)"')


@dataclasses.dataclass(frozen=True)
class LinenConfig:
    """The static part of a `FromLinen`: the unbound Linen module and its RNG streams."""

    module: nn.Module
    rng_streams: tuple[str, ...]


class FromLinen(Module):
    """A Linen module's variables as Variables, and its ``apply`` as this module's call.

    Built by `from_linen`, which runs the Linen ``init`` once. Each Linen
    variable becomes one Variable of the canonical type for its collection
    (`Param`, `BatchStat`, else `Variable`) stored at its Linen path below this
    module: a ``params/Dense_0/kernel`` leaf lives at ``Dense_0/kernel``, in a
    dict attribute ``Dense_0``. The collection is kept on the Variable, not in
    the path, so a Linen checkpoint of the block loads at ``<attribute>/...``.

    The call runs ``module.apply`` on these Variables: RNG keys for the
    streams in ``rng_streams`` come from the call's ``ctx``, the collections
    other than ``'params'`` are mutable, and their updated values are written
    back to the Variables in place (so ``partition()`` after a training call
    holds the new BatchNorm statistics).

    Example:
        >>> import jax, jax.numpy as jnp, flax.linen as nn, nnx_bridge as nnx
        >>> from nnx_bridge.linen.from_linen import from_linen
        >>> bn = from_linen(nn.BatchNorm(momentum=0.5), jnp.ones((2, 3)), ctx=nnx.Context(0),
        ...                 use_running_average=False)
        >>> state, moduledef = bn.partition()
        >>> [(path, type(v).__name__) for path, v in state.items()]
        [('bias', 'Param'), ('mean', 'BatchStat'), ('scale', 'Param'), ('var', 'BatchStat')]
        >>> y = bn(jnp.array([[0.0, 1.0, 2.0], [2.0, 3.0, 4.0]]), use_running_average=False)
        >>> bn.mean.value.tolist()
        [0.5, 1.0, 1.5]
    """

    def __init__(
        self,
        module: nn.Module,
        variables: tp.Mapping[str, tp.Mapping[str, tp.Any]],
        *,
        rng_streams: tp.Sequence[str] = ("dropout",),
    ):
        """Wraps an unbound Linen `module` and the `variables` its ``init`` returned.

        Prefer `from_linen`, which runs the ``init``; use this constructor to
        wrap variables you already have (e.g. restored from a checkpoint).
        """
        module = _unbound(module)
        streams = _streams(rng_streams, _owner(module))
        self._from_linen = LinenConfig(module, streams)
        for name, value in _attributes(variables, _owner(module)).items():
            setattr(self, name, value)

    @property
    def linen_module(self) -> nn.Module:
        """The wrapped (unbound) Linen module."""
        return self._config.module

    def linen_variables(self) -> dict[str, dict[str, tp.Any]]:
        """The current values in Linen's layout ``{collection: {name: ...}}``.

        Example:
            >>> import jax.numpy as jnp, flax.linen as nn, nnx_bridge as nnx
            >>> from nnx_bridge.linen.from_linen import from_linen
            >>> dense = from_linen(nn.Dense(2), jnp.ones((1, 3)), ctx=nnx.Context(0))
            >>> jax.tree.map(jnp.shape, dense.linen_variables())
            {'params': {'bias': (2,), 'kernel': (3, 2)}}
        """
        variables = nest(((collection, *path), v.value) for (collection, path), v in self._leaves().items())
        return {collection: variables[collection] for collection in sorted(variables)}

    def __call__(
        self, *args: tp.Any, ctx: Context | None = None, method: tp.Any = None, **kwargs: tp.Any
    ) -> tp.Any:
        """Runs ``linen_module.apply(variables, *args, **kwargs)`` and updates the Variables.

        Args:
          *args: the Linen call's positional arguments.
          ctx: where keys for the ``rng_streams`` come from (one key per stream
            the ctx has); leave it out for a deterministic call.
          method: the Linen method to run (a name or a function, as Linen's
            ``apply(method=...)``); the module's ``__call__`` by default.
          **kwargs: the Linen call's keyword arguments.
        """
        config = self._config
        for reserved in ("rngs", "mutable"):
            if reserved in kwargs:
                raise TypeError(
                    f"{_owner(config.module)}: {reserved}= is not an argument of the call: RNG keys "
                    f"come from ctx= (for the streams in rng_streams) and every collection other "
                    f"than 'params' is mutable, updated in place on the Variables."
                )
        leaves = self._leaves()
        variables = self.linen_variables()
        mutable = sorted(c for c in variables if c != "params")
        rngs = {}
        if ctx is not None:
            rngs = {s: ctx.make_rng(s) for s in config.rng_streams if ctx.has_rng(s)}
        if method is not None:
            kwargs = {**kwargs, "method": method}
        try:
            result = config.module.apply(variables, *args, rngs=rngs, mutable=mutable or False, **kwargs)
        except flax.errors.InvalidRngError as error:
            self._raise_missing_rng(error, ctx)
        if not mutable:
            return result
        out, updated = result
        for collection, tree in updated.items():
            for path, value in flatten_nested(tree):
                variable = leaves.get((collection, path))
                if variable is None:
                    raise ValueError(
                        f"{_owner(config.module)}: the call created the new Linen variable "
                        f"{'/'.join((collection, *path))!r}, which init did not create. A from_linen "
                        f"module keeps the variables of its init: pass sample inputs and keyword "
                        f"arguments (e.g. method=...) to from_linen that make init create every "
                        f"variable the calls use."
                    )
                if value is not variable.value:
                    variable.value = value
        return out

    def __getattr__(self, name: str) -> tp.Any:
        """The Linen module's own methods, as methods of this block: ``block.encode(x)``.

        ``block.encode(x, ctx=ctx)`` is ``block(x, ctx=ctx, method="encode")``.

        Example:
            >>> import jax.numpy as jnp, flax.linen as nn, nnx_bridge as nnx
            >>> class Coder(nn.Module):
            ...     def setup(self):
            ...         self.enc, self.dec = nn.Dense(2), nn.Dense(3)
            ...     def encode(self, x):
            ...         return self.enc(x)
            ...     def __call__(self, x):
            ...         return self.dec(self.encode(x))
            >>> block = nnx.from_linen(Coder(), jnp.ones((1, 3)), ctx=nnx.Context(0))
            >>> block.encode(jnp.ones((4, 3))).shape
            (4, 2)
        """
        config = self.__dict__.get(_CONFIG)
        if (
            config is not None
            and not name.startswith("_")
            and name not in _LINEN_MODULE_NAMES
            and callable(getattr(type(config.module), name, None))
        ):
            return functools.partial(self.__call__, method=name)
        raise AttributeError(
            f"{type(self).__name__} has no attribute {name!r}"
            + (f" (and {_owner(config.module)} has no method of that name)" if config is not None else "")
        )

    # -- helpers -------------------------------------------------------------------------------
    @property
    def _config(self) -> LinenConfig:
        return vars(self)[_CONFIG]

    def _leaves(self) -> dict[tuple[str, tuple[str, ...]], Variable[tp.Any]]:
        """``{(collection, linen path): Variable}`` of every Variable this module holds."""
        leaves: dict[tuple[str, tuple[str, ...]], Variable[tp.Any]] = {}
        for name, value in sorted(vars(self).items()):
            if name != _CONFIG:
                _collect(value, (name,), leaves, _owner(self._config.module))
        return leaves

    def _raise_missing_rng(self, error: Exception, ctx: Context | None) -> tp.NoReturn:
        config = self._config
        owner = _owner(config.module)
        found = _STREAM_IN_LINEN_ERROR.search(str(error))
        stream = found.group(1) if found else None
        if stream is None:
            raise error
        if stream not in config.rng_streams:
            raise MissingRngStreamError(
                f"{owner} needs the RNG stream {stream!r}, which is not among its rng_streams "
                f"{config.rng_streams!r}. Pass rng_streams=({stream!r}, ...) to from_linen so that "
                f"the call draws a key for it from its ctx."
            ) from error
        if ctx is None:
            raise MissingRngStreamError(
                f"{owner} needs the RNG stream {stream!r}, but the call got no ctx. Pass one, e.g. "
                f"block(x, ctx=nnx.Context({{{stream!r}: jax.random.PRNGKey(0)}})), or call the "
                f"Linen module in its deterministic mode."
            ) from error
        ctx.make_rng(stream)  # the ctx lacks the stream: its own error says how to add it
        raise error  # pragma: no cover - make_rng raises when has_rng is False


def from_linen(
    linen_module: nn.Module,
    *sample_inputs: tp.Any,
    ctx: Context,
    rng_streams: tp.Sequence[str] = ("dropout",),
    **kwargs: tp.Any,
) -> FromLinen:
    """Initialises a Linen module now and returns it as an nnx_bridge `FromLinen` module.

    Runs ``linen_module.init(rngs, *sample_inputs, **kwargs)`` with a
    ``'params'`` key (and a key for each of ``rng_streams`` the ctx has) drawn
    from ``ctx``. Sample inputs may be arrays or `jax.ShapeDtypeStruct`s (zeros
    of that shape are used). ``nn.Partitioned`` metadata becomes the Variables'
    ``sharding``. To wrap the block straight back into Linen, pass a partial as
    the factory: ``to_linen(functools.partial(from_linen, block, sample))``
    (Linen adopts modules found in a Linen module's fields, and an adopted,
    bound module is unhashable, so ``to_linen(from_linen, block, ...)`` fails).

    Args:
      linen_module: the Linen module (bound or not; an unbound copy is kept).
      *sample_inputs: positional inputs for ``init``.
      ctx: the Context the init keys come from.
      rng_streams: the streams each call draws from its ``ctx`` (``'params'`` is
        never passed to a call, so a missing stream cannot silently fall back to it).
      **kwargs: keyword inputs for ``init`` (``method=`` included).

    Example:
        >>> import jax, jax.numpy as jnp, flax.linen as nn, nnx_bridge as nnx
        >>> from nnx_bridge.linen.from_linen import from_linen
        >>> class Net(nnx.Module):
        ...     def __init__(self, *, ctx):
        ...         self.block = from_linen(nn.Dense(4), jnp.ones((1, 3)), ctx=ctx)
        ...     def __call__(self, x):
        ...         return self.block(x)
        >>> state, moduledef = Net(ctx=nnx.Context(0)).partition()
        >>> list(state)
        ['block/bias', 'block/kernel']
        >>> forward = jax.jit(lambda state, x: moduledef.apply(state)(x)[0])
        >>> forward(state, jnp.ones((2, 3))).shape
        (2, 4)
    """
    module = _unbound(linen_module)
    streams = _streams(rng_streams, _owner(module))
    if not isinstance(ctx, Context):
        raise TypeError(
            f"{_owner(module)}: ctx must be an nnx_bridge Context, e.g. ctx=nnx.Context(0); found "
            f"{type(ctx).__name__}."
        )
    rngs = {"params": ctx.make_rng("params")}
    rngs.update((s, ctx.make_rng(s)) for s in streams if s != "params" and ctx.has_rng(s))
    arguments.check_sample_inputs(_owner(module), module, sample_inputs, kwargs)
    inputs = jax.tree.map(_concrete, (sample_inputs, kwargs))
    variables = module.init(rngs, *inputs[0], **inputs[1])
    return FromLinen(module, variables, rng_streams=streams)


# ----------------------------------------------------------------------------------------------
def _owner(module: nn.Module) -> str:
    return f"from_linen({type(module).__name__})"


def _unbound(module: tp.Any) -> nn.Module:
    """An unbound, unnamed copy: a Linen module built inside a Linen method is auto-parented."""
    if not isinstance(module, nn.Module):
        raise TypeError(
            f"from_linen takes a flax.linen.Module, e.g. from_linen(nn.Dense(4), x, ctx=ctx); found "
            f"{type(module).__name__}. For an nnx_bridge Module, use it directly."
        )
    unbound = module.clone(parent=None, name=None)
    try:
        hash(unbound)
    except TypeError:
        raise TypeError(
            f"{_owner(module)}: the Linen module is unhashable, but it is a static attribute of the "
            f"nnx_bridge module and part of its hashable ModuleDef. Give its fields hashable values "
            f"(tuples instead of lists, no arrays)."
        ) from None
    return unbound


def _streams(rng_streams: tp.Any, owner: str) -> tuple[str, ...]:
    if isinstance(rng_streams, str) or not all(isinstance(s, str) for s in rng_streams):
        raise TypeError(
            f"{owner}: rng_streams must be a sequence of stream names such as ('dropout',); found "
            f"{rng_streams!r}."
        )
    return tuple(rng_streams)


def _concrete(x: tp.Any) -> tp.Any:
    return jnp.zeros(x.shape, x.dtype) if isinstance(x, jax.ShapeDtypeStruct) else x


def _reserved_names() -> frozenset[str]:
    return frozenset(n for n in dir(FromLinen) if not n.startswith("__")) | {_CONFIG}


def _attributes(variables: tp.Any, owner: str) -> dict[str, tp.Any]:
    """Nested dicts of Variables, one tree for all collections, keyed by Linen names."""
    if not isinstance(variables, tp.Mapping) or not all(
        isinstance(t, tp.Mapping) for t in variables.values()
    ):
        raise TypeError(
            f"{owner}: expected Linen variables {{collection: {{name: ...}}}} as init returns them; "
            f"found {type(variables).__name__}."
        )
    reserved = _reserved_names()
    tree: dict[str, tp.Any] = {}
    leaves: dict[tuple[str, ...], str] = {}  # linen path -> its collection
    prefixes: dict[tuple[str, ...], tuple[str, tuple[str, ...]]] = {}  # -> a (collection, path) below
    for collection in sorted(variables):
        for path, leaf in flatten_nested(variables[collection]):
            if not path:
                continue
            full = "/".join((collection, *path))
            for part in path:
                # A name containing "/" (Linen's "layer_instance/kernel/scale") is fine: it is
                # kept as one attribute/dict key, one escaped State path segment.
                if not isinstance(part, str) or not part:
                    raise ValueError(
                        f"{owner}: the Linen variable {full!r} has the name part {part!r}; "
                        f"nnx_bridge paths need non-empty string names."
                    )
            if path[0] in reserved:
                raise ValueError(
                    f"{owner}: the Linen variable {full!r} is named {path[0]!r}, which FromLinen "
                    f"uses itself (reserved: {sorted(reserved)}). Rename it in the Linen module."
                )
            clash = _clash(path, leaves, prefixes)
            if clash is not None:
                other_collection, other_path = clash
                shared = "/".join(other_path if len(other_path) <= len(path) else path)
                raise ValueError(
                    f"{owner}: the Linen variables {'/'.join((other_collection, *other_path))!r} and "
                    f"{full!r} share the path {shared!r} below the module. nnx_bridge State paths "
                    f"leave out the collection, so they "
                    f"would collide; rename one of them in the Linen module."
                )
            leaves[path] = collection
            for depth in range(1, len(path)):
                prefixes.setdefault(path[:depth], (collection, path))
            nest_into(tree, path, _variable(collection, leaf, full, owner))  # no clash: checked above
    return tree


def _clash(
    path: tuple[str, ...],
    leaves: dict[tuple[str, ...], str],
    prefixes: dict[tuple[str, ...], tuple[str, tuple[str, ...]]],
) -> tuple[str, tuple[str, ...]] | None:
    """A variable already placed whose path equals, contains or lies inside `path`."""
    if path in leaves:
        return leaves[path], path
    if path in prefixes:
        return prefixes[path]
    for depth in range(1, len(path)):
        if path[:depth] in leaves:
            return leaves[path[:depth]], path[:depth]
    return None


def _variable(collection: str, leaf: tp.Any, full: str, owner: str) -> Variable[tp.Any]:
    sharding = rules = None
    if isinstance(leaf, nn.LogicallyPartitioned):  # logical names, and the box's own rules
        leaf, sharding, rules = leaf.value, leaf.names, leaf.rules
    elif isinstance(leaf, meta.Partitioned):
        leaf, sharding = leaf.value, leaf.names
    elif isinstance(leaf, meta.AxisMetadata):
        raise TypeError(
            f"{owner}: the Linen variable {full!r} is boxed in {type(leaf).__name__}; from_linen "
            f"understands nn.Partitioned and nn.LogicallyPartitioned (their names become "
            f"Variable.sharding, their rules Variable.sharding_rules). Unbox it first."
        )
    try:
        return make_variable(collection, leaf, sharding=sharding, sharding_rules=rules)
    except TypeError as error:
        raise TypeError(f"{owner}: the Linen variable {full!r}: {error}") from None


def _collect(
    value: tp.Any,
    path: tuple[str, ...],
    leaves: dict[tuple[str, tuple[str, ...]], Variable[tp.Any]],
    owner: str,
) -> None:
    if isinstance(value, Variable):
        leaves[(value.collection, path)] = value
    elif type(value) is dict:
        for key, item in value.items():
            _collect(item, (*path, key), leaves, owner)
    else:
        raise TypeError(
            f"{owner}: attribute {'/'.join(path)!r} holds a {type(value).__name__}; a FromLinen "
            f"holds only the Linen variables (Variables in dicts). Keep other state elsewhere."
        )
