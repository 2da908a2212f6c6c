"""The bridge's phases: what a bridged module may do during Linen's ``init`` and ``apply``.

`BridgePhase` answers the core's questions (`nnx_bridge.phase.Phase`) from the
enclosing Linen scope: ``is_initializing()`` and ``is_mutable(collection)`` are
Linen's own answers, so a bridged module nested in a Linen parent's ``init``
initialises too, and ``sow`` records only into collections that are mutable.

During ``init`` a ``variable(...)`` call may create its Variable (a shape may
come from the first input). During ``apply`` it may not: the variables given
to ``apply`` that the freshly merged module lacks (those ``init`` created
lazily) are put in place before the call with `place`, each must be claimed
by a ``variable(...)`` (or ``sow``) call, and a Variable that would have to be
created is a "missing variable" error naming its full Linen path.
"""

from __future__ import annotations

import typing as tp

from flax.core import meta

from nnx_bridge.errors import ReadableKeyError
from nnx_bridge.graph import walk
from nnx_bridge.linen import boxes
from nnx_bridge.module import Module
from nnx_bridge.phase import Phase
from nnx_bridge.variables import Variable, make_variable


class BridgePhase(Phase):
    """The rules of one bridged call, read from the bound `ToLinen` (`linen_module`).

    Example:
        >>> import jax, jax.numpy as jnp, nnx_bridge as nnx
        >>> class Counter(nnx.Module):
        ...     def __init__(self, *, ctx):
        ...         pass
        ...     def __call__(self, x):
        ...         n = self.variable("counts", "n", jnp.zeros, (), jnp.int32)
        ...         if not self.is_initializing():
        ...             n.value += 1
        ...         return x
        >>> model = nnx.to_linen(Counter)
        >>> variables = model.init(jax.random.PRNGKey(0), 1.0)
        >>> int(variables["counts"]["n"])
        0
        >>> _, updates = model.apply(variables, 1.0, mutable=["counts"])
        >>> int(updates["counts"]["n"])
        1
    """

    def __init__(self, linen_module: tp.Any, owner: str, full_path: tp.Callable[[str, str], str]):
        self._linen = linen_module
        self._owner = owner
        self._full_path = full_path
        self._initializing = bool(linen_module.is_initializing())
        self.root: Module | None = None
        self.made: list[tuple[Module, str]] = []  # created by variable(...)/sow(...)
        # (id(module), name) -> (module, name, collection, path) of each given variable put in place
        self.placed: dict[tuple[int, str], tuple[Module, str, str, str]] = {}
        self._claimed: set[tuple[int, str]] = set()

    # -- the core's questions ---------------------------------------------------------------
    def is_initializing(self) -> bool:
        return self._initializing

    def is_mutable(self, collection: str) -> bool:
        return bool(self._linen.is_mutable_collection(collection))

    def missing(self, module: Module, collection: str, name: str) -> Variable[tp.Any] | None:
        if self._initializing and self.is_mutable(collection):
            return None
        path = _path_of(self.root, module) if self.root is not None else None
        full = self._full_path(collection, name if path is None else f"{path}{name}")
        if self._initializing:
            raise ValueError(
                f"{self._owner}: {type(module).__name__}.variable({collection!r}, {name!r}, ...) "
                f"would create {full!r} during init, but collection {collection!r} is not mutable "
                f"in this init call (init leaves 'intermediates' immutable by default, as Linen). "
                f"Record values with self.sow(...), or pass init(..., mutable=True)."
            )
        raise MissingVariableError(
            f"{self._owner}: missing variable {full!r}: {type(module).__name__}.variable("
            f"{collection!r}, {name!r}, ...) would have to create it during apply. Variables are "
            f"created by init: pass the variables that init returned (all collections, e.g. "
            f"{{'params': ..., {collection!r}: ...}}), or run init with inputs that make the "
            f"call create it."
        )

    def claim(self, module: Module, name: str) -> None:
        self._claimed.add((id(module), name))

    def created(self, module: Module, name: str) -> None:
        self.made.append((module, name))

    # -- given variables the merged module lacks --------------------------------------------
    def place(
        self, root: Module, extra: tp.Mapping[tuple[str, str], tp.Any]
    ) -> tuple[dict[str, Variable[tp.Any]], list[tuple[str, str]]]:
        """Puts each given ``(collection, path) -> leaf`` in place as an attribute of its module.

        Returns ``(placed, unplaceable)``: ``path -> a copy of the Variable placed``
        (its value before the call), and the ``(collection, path)`` of those that
        cannot be placed (the path's parent is not a Module, or the attribute is
        taken): unexpected variables.
        """
        self.root = root
        placed: dict[str, Variable[tp.Any]] = {}
        unplaceable = []
        for (collection, path), leaf in sorted(extra.items()):
            *parents, name = path.split("/")
            parent = _node_at(root, parents)
            if not isinstance(parent, Module) or not name or name in vars(parent):
                unplaceable.append((collection, path))
                continue
            sharding = leaf.names if isinstance(leaf, meta.Partitioned) else None
            variable = make_variable(collection, boxes.unbox(leaf), sharding=sharding)
            vars(parent)[name] = variable
            self.placed[(id(parent), name)] = (parent, name, collection, path)
            placed[path] = variable.copy()
        return placed, unplaceable

    def unclaimed(self) -> list[tuple[str, str]]:
        """``(collection, path)`` of placed variables that no ``variable(...)``/``sow(...)`` asked for."""
        return sorted((c, p) for key, (_, _, c, p) in self.placed.items() if key not in self._claimed)

    def legitimate(self) -> list[tuple[Module, str]]:
        """Attributes this call may have added: placed and created Variables still in place."""
        found = [(m, n) for m, n, _, _ in self.placed.values()] + self.made
        return [(m, n) for m, n in found if isinstance(vars(m).get(n), Variable)]


class MissingVariableError(ReadableKeyError):
    """A ``variable(...)`` during ``apply`` for a Variable that the given variables lack.

    Example:
        >>> import jax, jax.numpy as jnp, nnx_bridge as nnx
        >>> from nnx_bridge.linen.phases import MissingVariableError
        >>> class Cache(nnx.Module):
        ...     def __init__(self, *, ctx):
        ...         pass
        ...     def __call__(self, x):
        ...         return self.variable("cache", "last", jnp.zeros_like, x).value
        >>> model = nnx.to_linen(Cache)
        >>> variables = model.init(jax.random.PRNGKey(0), jnp.ones(2))
        >>> try:
        ...     model.apply({}, jnp.ones(2))
        ... except MissingVariableError as error:
        ...     print(str(error).split(' would')[0])
        ToLinen(Cache) at '/': missing variable 'cache/last': Cache.variable('cache', 'last', ...)
    """


def _node_at(root: Module, parts: list[str]) -> tp.Any:
    node: tp.Any = root
    for part in parts:
        if isinstance(node, Module):
            node = vars(node).get(part)
        elif isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict):
            node = next((v for k, v in node.items() if str(k) == part), None)
        else:
            return None
    return node


def _path_of(root: Module, target: Module) -> str | None:
    """The path of `target` below `root` as `Module.partition` records it, with a trailing '/'."""
    graph = walk(root)
    for module, path in zip(graph.modules, graph.module_paths, strict=True):
        if module is target:
            return f"{path}/" if path else ""
    return None
