"""Scan over layers: identical blocks stored once, with a leading ``layers`` axis.

`Scan` holds one block whose Variables are the blocks' Variables stacked on a
new leading axis, and runs the layers with `jax.lax.scan`, so the program
holds (and compiles) one layer. Each stacked Variable's sharding gains the
axis name in front (``("layers", "embed", "mlp")``), which is the layout and
the PartitionSpec that ``nn.scan(..., variable_axes={"params": 0},
metadata_params={nn.PARTITION_NAME: "layers"})`` gives a bridged block.
`stack` and `unstack` convert from and to a list of blocks.
"""

from __future__ import annotations

import typing as tp

import jax
import jax.numpy as jnp

from nnx_bridge.context import Context
from nnx_bridge.module import Module
from nnx_bridge.partition_under import partition_under
from nnx_bridge.state import State
from nnx_bridge.variables import Variable


class Scan(Module):
    """``length`` blocks built by ``factory(*args, ctx=..., **kwargs)``, stored stacked.

    Each layer is built with its own key, split from ``ctx.make_rng("params")``
    (as ``nn.scan(split_rngs={"params": True})`` does). Calling the Scan runs
    ``carry = block(carry, *args, **kwargs)`` once per layer with
    `jax.lax.scan`; `args` and `kwargs` are the same for every layer, and each
    layer's Variable updates (e.g. counters) are kept.

    Attributes:
      block: a block whose Variables hold the stacked values (leading axis of size ``length``).
      length: the number of layers.
      axis_name: the name the leading axis adds to sharded Variables (None: unnamed).

    Example:
        >>> import jax, jax.numpy as jnp, nnx_bridge as nnx
        >>> from nnx_bridge.scan import Scan
        >>> layers = Scan(nnx.Linear, 3, 4, 4, sharding=("embed", "mlp"), ctx=nnx.Context(0))
        >>> layers.block.kernel.value.shape, layers.block.kernel.sharding
        ((3, 4, 4), ('layers', 'embed', 'mlp'))
        >>> layers(jnp.ones((2, 4))).shape
        (2, 4)
    """

    def __init__(
        self,
        factory: tp.Callable[..., Module],
        length: int,
        *args: tp.Any,
        ctx: Context,
        axis_name: str | None = "layers",
        **kwargs: tp.Any,
    ):
        if not isinstance(length, int) or length < 1:
            raise ValueError(f"Scan: length must be a positive int (the number of layers); found {length!r}.")
        keys = jax.random.split(ctx.make_rng("params"), length)
        stacked, moduledef = partition_under(
            lambda build: jax.vmap(build)(keys), lambda key: factory(*args, ctx=Context(key), **kwargs)
        )
        self._set(moduledef.merge(_add_axis(stacked, axis_name)), length, axis_name)

    @classmethod
    def of_stacked(cls, block: Module, length: int, *, axis_name: str | None = "layers") -> Scan:
        """A Scan around `block`, whose Variables already hold `length` layers stacked on axis 0.

        No layer is built: the named constructor behind `stack` (``Scan(...)`` builds
        its layers from a factory). Sharded Variables must already have the axis
        name in front.

        Example:
            >>> import jax.numpy as jnp, nnx_bridge as nnx
            >>> from nnx_bridge.scan import Scan
            >>> block = nnx.Linear(2, 2, ctx=nnx.Context(0))
            >>> block.kernel.value = jnp.stack([block.kernel.value] * 3)
            >>> block.bias.value = jnp.stack([block.bias.value] * 3)
            >>> Scan.of_stacked(block, 3)(jnp.ones((1, 2))).shape
            (1, 2)
        """
        scan = object.__new__(cls)
        scan._set(block, length, axis_name)
        return scan

    def _set(self, block: Module, length: int, axis_name: str | None) -> None:
        self.block = block
        self.length = length
        self.axis_name = axis_name

    def __call__(self, carry: tp.Any, *args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        state, moduledef = self.block.partition()

        def layer(carry: tp.Any, layer_state: State) -> tuple[tp.Any, State]:
            out, (new_state, _) = moduledef.apply(layer_state)(carry, *args, **kwargs)
            return out, new_state

        carry, new_state = jax.lax.scan(layer, carry, _drop_axis(state), length=self.length)
        self.block.update_state(new_state)
        return carry


def stack(blocks: tp.Sequence[Module], *, axis_name: str | None = "layers") -> Scan:
    """One `Scan` from a list of blocks of the same structure (the inverse of `unstack`).

    Example:
        >>> import jax.numpy as jnp, nnx_bridge as nnx
        >>> from nnx_bridge.scan import stack
        >>> blocks = [nnx.Linear(2, 2, ctx=nnx.Context(i)) for i in range(3)]
        >>> layers = stack(blocks)
        >>> layers.block.kernel.value.shape
        (3, 2, 2)
        >>> x = jnp.ones((1, 2))
        >>> bool(jnp.allclose(layers(x), blocks[2](blocks[1](blocks[0](x)))))
        True
    """
    if not blocks:
        raise ValueError("stack: needs at least one block.")
    partitions = [block.partition() for block in blocks]
    state0, moduledef = partitions[0]
    for i, (state, other) in enumerate(partitions[1:], start=1):
        if other != moduledef:
            raise ValueError(
                f"stack: block {i} ({type(blocks[i]).__name__}) differs in structure from block 0 "
                f"(its submodules, Variables or static attributes). Only identical blocks stack; "
                f"build them with the same factory and arguments."
            )
        for path, v in state.items():
            v0 = state0[path]
            if jnp.shape(v.value) != jnp.shape(v0.value) or v.sharding != v0.sharding:
                raise ValueError(
                    f"stack: block {i} has {path!r} of shape {jnp.shape(v.value)} and sharding "
                    f"{v.sharding!r}, but block 0 has shape {jnp.shape(v0.value)} and sharding "
                    f"{v0.sharding!r}. Only blocks of the same shapes stack."
                )
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *(state for state, _ in partitions))
    return Scan.of_stacked(moduledef.merge(_add_axis(stacked, axis_name)), len(blocks), axis_name=axis_name)


def unstack(scan: Scan) -> list[Module]:
    """The list of blocks of a `Scan` (the inverse of `stack`).

    Example:
        >>> import nnx_bridge as nnx
        >>> from nnx_bridge.scan import Scan, unstack
        >>> blocks = unstack(Scan(nnx.Linear, 2, 3, 3, ctx=nnx.Context(0)))
        >>> [b.kernel.value.shape for b in blocks]
        [(3, 3), (3, 3)]
    """
    if not isinstance(scan, Scan):
        raise TypeError(
            f"unstack: expected a Scan (from Scan(...) or stack(...)); found {type(scan).__name__}."
        )
    state, moduledef = scan.block.partition()
    layers = _drop_axis(state)
    return [moduledef.merge(jax.tree.map(lambda x, i=i: x[i], layers)) for i in range(scan.length)]


def _add_axis(state: State, axis_name: str | None) -> State:
    return State.from_sorted(
        (path, _with_sharding(v, None if v.sharding is None else (axis_name, *v.sharding)))
        for path, v in state.items()
    )


def _drop_axis(state: State) -> State:
    return State.from_sorted(
        (path, _with_sharding(v, None if v.sharding is None else v.sharding[1:])) for path, v in state.items()
    )


def _with_sharding(variable: Variable[tp.Any], sharding: tp.Any) -> Variable[tp.Any]:
    new = variable.copy()
    new.sharding = sharding
    return new
