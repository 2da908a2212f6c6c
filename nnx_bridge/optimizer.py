"""`Optimizer`: an optax transformation and its state, held as an nnx_bridge Module.

The optax state lives in `OptState` Variables (collection ``'opt_state'``) and the
step count in one more, so ``optimizer.partition()`` / ``update_state`` checkpoint
it like any model and `nnx_bridge.jit` carries it like any Module argument.
Optax sees the selected parameters as Linen's nested dict
(``{"dense0": {"kernel": array}}``, paths split at ``/``), so Linen-layout masks
and labels (`nnx_bridge.mask`, `nnx_bridge.labels` of that dict) apply unchanged.
"""

from __future__ import annotations

import typing as tp

import jax
import jax.numpy as jnp
import optax

from nnx_bridge import filters as filterlib
from nnx_bridge.graph import walk
from nnx_bridge.module import Module
from nnx_bridge.variables import Variable


class OptState(Variable[tp.Any], collection="opt_state"):
    """A Variable of optimiser state (moments, step counts): collection ``'opt_state'``.

    Example:
        >>> import nnx_bridge as nnx
        >>> nnx.OptState(0).collection
        'opt_state'
    """


class Optimizer(Module):
    """An optax optimiser over the Variables of `model` that `wrt` selects.

    Attributes:
      step: an `OptState` holding the number of updates made (uint32).
      tx: the optax ``GradientTransformation``.
      opt_state: ``tx.init`` of the selected parameters, each array in an `OptState`.
      wrt: the filter selecting the trained Variables.

    Example:
        >>> import jax.numpy as jnp, optax, nnx_bridge as nnx
        >>> model = nnx.Linear(2, 1, ctx=nnx.Context(0))
        >>> optimizer = nnx.Optimizer(model, optax.sgd(0.1))
        >>> grads = nnx.grad(lambda m: m(jnp.ones((1, 2))).sum())(model)
        >>> _ = optimizer.update(model, grads)
        >>> int(optimizer.step.value), round(float(model.bias.value[0]), 4)
        (1, -0.1)
    """

    def __init__(self, model: Module, tx: optax.GradientTransformation, *, wrt: filterlib.Filter = "params"):
        if not isinstance(model, Module):
            raise TypeError(
                f"Optimizer(model, tx): model must be an nnx_bridge Module; found "
                f"{type(model).__name__}. Pass the module whose parameters it trains."
            )
        if not (hasattr(tx, "init") and hasattr(tx, "update")):
            raise TypeError(
                f"Optimizer(model, tx): tx must be an optax GradientTransformation (with init and "
                f"update), e.g. optax.adam(1e-3); found {type(tx).__name__}."
            )
        params = _selected(model, wrt, "Optimizer")
        self.step = OptState(jnp.array(0, dtype=jnp.uint32))
        self.tx = tx
        self.wrt = wrt
        self.opt_state = _wrap(tx.init(_nested({p: v.value for p, v in params.items()})), params)

    def update(self, model: Module, grads: tp.Mapping[str, tp.Any], /, **kwargs: tp.Any) -> tp.Any:
        """Applies one optax step to `model`'s selected parameters, in place, and counts it.

        Args:
          model: the module the Optimizer was built for (or one of the same structure).
          grads: a State (or mapping) of gradients at the parameters' paths, as
            `nnx_bridge.grad` returns it; paths that `wrt` does not select are ignored.
          **kwargs: passed to ``tx.update`` (``GradientTransformationExtraArgs``).

        Returns:
          The updates optax computed, as a nested dict.
        """
        params = _selected(model, self.wrt, "Optimizer.update")
        predicate = filterlib.to_predicate(self.wrt)
        if not isinstance(grads, tp.Mapping):
            raise TypeError(
                f"Optimizer.update(model, grads): grads must be a State of gradients by path, as "
                f"nnx.grad(...)(model) returns it; found {type(grads).__name__}."
            )
        flat = {
            p: (g.value if isinstance(g, Variable) else g)
            for p, g in grads.items()
            if not isinstance(g, Variable) or predicate(p, g)
        }
        missing, extra = sorted(params.keys() - flat.keys()), sorted(flat.keys() - params.keys())
        if missing or extra:
            raise ValueError(
                f"Optimizer.update: the gradients do not match the trained parameters (wrt="
                f"{self.wrt!r}): missing {missing[:10]}, unexpected {extra[:10]}. Compute them with "
                f"nnx.grad(loss_fn, wrt=<the Optimizer's wrt>)(model) on the same model."
            )
        values = _nested({p: v.value for p, v in params.items()})
        opt_vars = jax.tree.leaves(self.opt_state, is_leaf=_is_variable)
        opt_values = jax.tree.map(lambda v: v.value, self.opt_state, is_leaf=_is_variable)
        updates, new_state = self.tx.update(_nested(flat), opt_values, values, **kwargs)
        new_values = optax.apply_updates(values, updates)
        for path, variable in params.items():
            node = new_values
            for part in path.split("/"):
                node = node[part]
            variable.value = node
        new_leaves, new_tree = jax.tree.flatten(new_state)
        if new_tree != jax.tree.structure(opt_values):  # type: ignore[operator]
            raise ValueError(
                f"Optimizer.update: tx.update returned an optimiser state of another structure "
                f"({new_tree}) than tx.init ({jax.tree.structure(opt_values)}). The Optimizer keeps "
                f"the structure fixed; use a transformation whose state keeps its shape."
            )
        for variable, value in zip(opt_vars, new_leaves, strict=True):
            variable.value = value
        self.step.value = self.step.value + 1
        return updates


def _is_variable(x: tp.Any) -> bool:
    return isinstance(x, Variable)


def _selected(model: Module, wrt: filterlib.Filter, what: str) -> dict[str, Variable[tp.Any]]:
    if not isinstance(model, Module):
        raise TypeError(f"{what}: model must be an nnx_bridge Module; found {type(model).__name__}.")
    predicate = filterlib.to_predicate(wrt)
    params = {p: v for p, v in walk(model).variables.items() if predicate(p, v)}
    if not params:
        raise ValueError(
            f"{what}: wrt={wrt!r} selects no Variable of the {type(model).__name__}. Use a filter "
            f"that matches its parameters, e.g. wrt='params' or wrt=nnx.Param."
        )
    return params


def _nested(flat: dict[str, tp.Any]) -> dict[str, tp.Any]:
    """``{"a/b": x}`` as ``{"a": {"b": x}}`` (Linen's layout of one collection)."""
    tree: dict[str, tp.Any] = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def _wrap(tree: tp.Any, params: dict[str, Variable[tp.Any]]) -> tp.Any:
    """Each leaf in an `OptState`; a leaf shaped like a parameter at the end of its path (a
    moment) takes that parameter's sharding names."""

    def wrap(keypath: tp.Any, leaf: tp.Any) -> OptState:
        names = [str(k.key) for k in keypath if isinstance(k, jax.tree_util.DictKey)]
        for start in range(len(names)):
            param = params.get("/".join(names[start:]))
            if param is not None:
                if jnp.shape(param.value) == jnp.shape(leaf):
                    return OptState(leaf, sharding=param.sharding)
                break
        return OptState(leaf)

    return jax.tree_util.tree_map_with_path(wrap, tree)
