"""What a function under `nnx_bridge.jit` may change in its arguments' Module graph.

Inside the jitted function only Variable values may change, and new Variables may
be created on existing Modules (``Module.variable``, ``Module.sow``): those are
created on the caller's Modules afterwards. Anything else — a new, deleted or
replaced attribute, a list or dict changed in place — would have to be replayed on
the caller's objects, so it is an error that names the attribute.
"""

from __future__ import annotations

import typing as tp

from nnx_bridge.graph import Graph, unchanged
from nnx_bridge.module import Module
from nnx_bridge.variables import Variable


def relative(path: str) -> str:
    """A path inside the call's graph (``refs/<argument>/...``) as the argument's own path.

    Example:
        >>> from nnx_bridge.jit_structure import relative
        >>> relative("refs/0/lin/kernel"), relative("refs/1")
        ('lin/kernel', '')
    """
    parts = path.split("/")
    return "/".join(parts[2:]) if len(parts) >= 2 and parts[0] == "refs" else path


def check_structure(
    graph: Graph, before: list[dict[str, tp.Any]], variables: list[Variable[tp.Any]], what: str
) -> list[tuple[int, str, Variable[tp.Any]]]:
    """The Variables created on existing Modules, or an error for any other structure change.

    Args:
      graph: `nnx_bridge.graph.walk` of the graph, taken before the call (its containers
        hold the snapshots to compare with).
      before: a copy of each of ``graph.modules``' ``__dict__`` taken before the call.
      variables: the graph's Variables before the call.
      what: how the error names the caller, e.g. ``"jit(step)"``.

    Returns:
      ``(module index in graph.modules, attribute, new Variable)`` for each new Variable.

    Example:
        >>> import jax.numpy as jnp, nnx_bridge as nnx
        >>> from nnx_bridge.graph import walk
        >>> from nnx_bridge.jit_structure import check_structure
        >>> m = nnx.Module()
        >>> g = walk(m)
        >>> before = [dict(x.__dict__) for x in g.modules]
        >>> _ = m.variable("cache", "k", jnp.zeros, (2,))
        >>> [(i, name) for i, name, _ in check_structure(g, before, [], "jit(f)")]
        [(0, 'k')]
    """
    known = {id(v) for v in variables}
    created: list[tuple[int, str, Variable[tp.Any]]] = []
    for index, (module, old) in enumerate(zip(graph.modules, before, strict=True)):
        new = module.__dict__
        if new.keys() == old.keys() and all(new[k] is old[k] for k in old):
            continue
        where = relative(graph.module_paths[index])
        for name in sorted(old.keys() | new.keys()):
            at = f"{where}/{name}" if where else name
            if name not in new:
                raise structure_error(what, f"attribute {at!r} was deleted")
            if name not in old:
                value = new[name]
                if isinstance(value, Variable) and id(value) not in known:
                    created.append((index, name, value))
                    known.add(id(value))
                    continue
                raise structure_error(
                    what, f"a new attribute {at!r} holding a {type(value).__name__} was set"
                )
            a, b = old[name], new[name]
            if a is b:
                continue
            if isinstance(a, (Module, Variable)) or isinstance(b, (Module, Variable)) or not _same(a, b):
                raise structure_error(
                    what, f"attribute {at!r} was replaced (a {type(a).__name__} by a {type(b).__name__})"
                )
    if not unchanged(graph.containers):
        raise structure_error(what, "a list or dict of the module graph was changed in place")
    return created


def _same(a: tp.Any, b: tp.Any) -> bool:
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:
        return False


def structure_error(caller: str, what: str) -> ValueError:
    """The error for a structure change `what` made inside the jitted function of `caller`.

    Example:
        >>> from nnx_bridge.jit_structure import structure_error
        >>> str(structure_error("jit(f)", "attribute 'x' was deleted")).split(". ")[0]
        "jit(f): the function changed the structure of an argument: attribute 'x' was deleted"
    """
    return ValueError(
        f"{caller}: the function changed the structure of an argument: {what}. Inside "
        f"nnx_bridge.jit only Variable values may change (variable.value = ...) and new Variables "
        f"may be created with Module.variable/sow; make structural changes (submodules, static "
        f"attributes, replacing Variables) outside the jitted function."
    )
