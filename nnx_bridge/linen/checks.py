"""What a bridged call may change: lazily created Variables, values; never structure or shapes.

After each call through the bridge the module is partitioned again and
compared with its structure before the call. Legitimate changes are exactly
the Variables that ``variable(...)``/``sow(...)`` created and the given
variables that the bridge put in place (`BridgePhase.legitimate`); any other
new attribute, submodule or static value is an error. A Variable that existed
before the call keeps its shape and dtype: state sized from the inputs is
created in the call with ``variable(...)``.
"""

from __future__ import annotations

import typing as tp

import jax
import jax.numpy as jnp
import numpy as np

from nnx_bridge.linen.phases import BridgePhase
from nnx_bridge.module import Module, ModuleDef
from nnx_bridge.state import State


def state_after_call(
    module: Module,
    before: ModuleDef[tp.Any],
    before_values: tp.Mapping[str, tp.Any],
    phase: BridgePhase,
    *,
    owner: str,
    method: str,
    full_path: tp.Callable[[str, str], str],
) -> State:
    """The module's State after a call, once the call's changes are checked.

    Args:
      module: the module after the call.
      before: its ModuleDef before the call, without placed or created Variables.
      before_values: ``path -> Variable`` (values or ShapeDtypeStructs) before the
        call, for every Variable that existed then (placed ones included).
      phase: the call's phase (what it created and placed).
      owner: how errors name the bridged module.
      method: the method called.
      full_path: ``(collection, path) -> "collection/scope/path"``.
    """
    state, after = module.partition()
    if after != before and not _same_without(module, phase.legitimate(), before):
        raise ValueError(
            f"{owner}: calling {method!r} changed the module's structure (its submodules, "
            f"Variables or static attributes). A bridged module creates its Variables and "
            f"submodules in __init__, or in the call with self.variable(collection, name, "
            f"init_fn, ...) (state sized from the inputs) or self.sow(...), and keeps plain "
            f"attributes fixed; store values that change in Variables."
        )
    for path, old in before_values.items():
        new = state.get(path)
        if new is None or new.value is old.value:  # unchanged (the common case): nothing to check
            continue
        old_sig, new_sig = _signature(old.value), _signature(new.value)
        if old_sig is not None and new_sig is not None and old_sig != new_sig:
            raise ValueError(
                f"{owner}: calling {method!r} changed variable {full_path(new.collection, path)!r} "
                f"from shape {old_sig[0]} dtype {old_sig[1]} to shape {new_sig[0]} dtype "
                f"{new_sig[1]}. A Variable keeps the shape and dtype it was created with (cast "
                f"the new value, e.g. value.astype(old.dtype)); to size state from the inputs, "
                f"create it in the call with self.variable({new.collection!r}, name, init_fn, "
                f"*init_args) instead of in __init__."
            )
    return state


def _same_without(module: Module, added: list[tuple[Module, str]], before: ModuleDef[tp.Any]) -> bool:
    """Whether the module, without the `added` attributes, has the structure `before`."""
    if not added:
        return False
    removed = [(m, n, vars(m).pop(n)) for m, n in added if n in vars(m)]
    try:
        return module.partition()[1] == before
    finally:
        for m, n, value in removed:
            vars(m)[n] = value


def _signature(value: tp.Any) -> tuple[tuple[int, ...], str] | None:
    """``(shape, dtype)`` of an array-like value (arrays, tracers, ShapeDtypeStructs, scalars)."""
    if isinstance(value, (bool, int, float, complex, np.generic)) or hasattr(value, "dtype"):
        if not hasattr(value, "shape"):
            value = jnp.asarray(value)
        # Canonical dtypes: a float64 NumPy value is float32 to JAX unless x64 is enabled.
        return tuple(value.shape), str(jax.dtypes.canonicalize_dtype(value.dtype))
    return None
