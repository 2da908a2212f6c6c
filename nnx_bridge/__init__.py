"""nnx_bridge: NNX-style stateful modules that run in Flax Linen training loops.

Example:
    >>> import jax, jax.numpy as jnp, nnx_bridge as nnx
    >>> class Linear(nnx.Module):
    ...     def __init__(self, din, dout, *, ctx):
    ...         self.w = nnx.Param(jax.random.normal(ctx.make_rng("params"), (din, dout)))
    ...     def __call__(self, x):
    ...         return x @ self.w.value
    >>> state, moduledef = Linear(2, 3, ctx=nnx.Context(0)).partition()
    >>> y, (state, moduledef) = moduledef.apply(state)(jnp.ones((1, 2)))
    >>> y.shape
    (1, 3)
"""

from __future__ import annotations

import importlib
import typing as _tp

from nnx_bridge import context as context
from nnx_bridge import graph as graph
from nnx_bridge import nn as nn
from nnx_bridge import phase as phase
from nnx_bridge import scan as scan
from nnx_bridge.autodiff import grad as grad
from nnx_bridge.autodiff import value_and_grad as value_and_grad
from nnx_bridge.context import Context as Context
from nnx_bridge.context import MissingRngStreamError as MissingRngStreamError
from nnx_bridge.filters import All as All
from nnx_bridge.filters import Any as Any
from nnx_bridge.filters import Everything as Everything
from nnx_bridge.filters import Filter as Filter
from nnx_bridge.filters import Not as Not
from nnx_bridge.filters import Nothing as Nothing
from nnx_bridge.filters import PathContains as PathContains
from nnx_bridge.filters import to_predicate as to_predicate
from nnx_bridge.module import Module as Module
from nnx_bridge.module import ModuleDef as ModuleDef
from nnx_bridge.module import UnknownPathError as UnknownPathError
from nnx_bridge.nn import RNN as RNN
from nnx_bridge.nn import BatchNorm as BatchNorm
from nnx_bridge.nn import Bidirectional as Bidirectional
from nnx_bridge.nn import Conv as Conv
from nnx_bridge.nn import ConvLocal as ConvLocal
from nnx_bridge.nn import ConvLSTMCell as ConvLSTMCell
from nnx_bridge.nn import ConvTranspose as ConvTranspose
from nnx_bridge.nn import Dropout as Dropout
from nnx_bridge.nn import Einsum as Einsum
from nnx_bridge.nn import Embed as Embed
from nnx_bridge.nn import GroupNorm as GroupNorm
from nnx_bridge.nn import GRUCell as GRUCell
from nnx_bridge.nn import InstanceNorm as InstanceNorm
from nnx_bridge.nn import LayerNorm as LayerNorm
from nnx_bridge.nn import Linear as Linear
from nnx_bridge.nn import LinearGeneral as LinearGeneral
from nnx_bridge.nn import LoRA as LoRA
from nnx_bridge.nn import LoRALinear as LoRALinear
from nnx_bridge.nn import LoRAParam as LoRAParam
from nnx_bridge.nn import LSTMCell as LSTMCell
from nnx_bridge.nn import MGUCell as MGUCell
from nnx_bridge.nn import MultiHeadAttention as MultiHeadAttention
from nnx_bridge.nn import OptimizedLSTMCell as OptimizedLSTMCell
from nnx_bridge.nn import PReLU as PReLU
from nnx_bridge.nn import RMSNorm as RMSNorm
from nnx_bridge.nn import Sequential as Sequential
from nnx_bridge.nn import SimpleCell as SimpleCell
from nnx_bridge.nn import SpectralNorm as SpectralNorm
from nnx_bridge.nn import WeightNorm as WeightNorm
from nnx_bridge.nn import avg_pool as avg_pool
from nnx_bridge.nn import combine_masks as combine_masks
from nnx_bridge.nn import dot_product_attention as dot_product_attention
from nnx_bridge.nn import dot_product_attention_weights as dot_product_attention_weights
from nnx_bridge.nn import make_attention_mask as make_attention_mask
from nnx_bridge.nn import make_causal_mask as make_causal_mask
from nnx_bridge.nn import max_pool as max_pool
from nnx_bridge.nn import min_pool as min_pool
from nnx_bridge.nn import pool as pool
from nnx_bridge.scan import Scan as Scan
from nnx_bridge.scan import stack as stack
from nnx_bridge.scan import unstack as unstack
from nnx_bridge.state import State as State
from nnx_bridge.state import from_variables as from_variables
from nnx_bridge.state import to_variables as to_variables
from nnx_bridge.stateful_jit import jit as jit
from nnx_bridge.variables import BatchStat as BatchStat
from nnx_bridge.variables import Param as Param
from nnx_bridge.variables import Variable as Variable
from nnx_bridge.variables import variable_type as variable_type

__version__ = "0.2.0"

# The Linen bridge and the helpers that need Flax (or Optax) load on first use, so that
# the core and the layers (`import nnx_bridge`, `nnx_bridge.nn`) never import Flax.
_ON_FIRST_USE: dict[str, tuple[str, str | None]] = {
    "linen": ("nnx_bridge.linen", None),
    "optimizer": ("nnx_bridge.optimizer", None),
    "Optimizer": ("nnx_bridge.optimizer", "Optimizer"),
    "OptState": ("nnx_bridge.optimizer", "OptState"),
    "sharding": ("nnx_bridge.sharding", None),
    "training": ("nnx_bridge.training", None),
    "from_linen": ("nnx_bridge.linen", "from_linen"),
    "FromLinen": ("nnx_bridge.linen", "FromLinen"),
    "to_linen": ("nnx_bridge.linen", "to_linen"),
    "ToLinen": ("nnx_bridge.linen", "ToLinen"),
    "get_named_sharding": ("nnx_bridge.sharding", "get_named_sharding"),
    "get_partition_spec": ("nnx_bridge.sharding", "get_partition_spec"),
    "sharded_init": ("nnx_bridge.sharding", "sharded_init"),
    "labels": ("nnx_bridge.training", "labels"),
    "mask": ("nnx_bridge.training", "mask"),
}

if _tp.TYPE_CHECKING:
    from nnx_bridge import optimizer as optimizer
    from nnx_bridge import sharding as sharding
    from nnx_bridge import training as training
    from nnx_bridge.linen import FromLinen as FromLinen
    from nnx_bridge.linen import ToLinen as ToLinen
    from nnx_bridge.linen.from_linen import from_linen as from_linen
    from nnx_bridge.linen.to_linen import to_linen as to_linen
    from nnx_bridge.optimizer import Optimizer as Optimizer
    from nnx_bridge.optimizer import OptState as OptState
    from nnx_bridge.sharding import get_named_sharding as get_named_sharding
    from nnx_bridge.sharding import get_partition_spec as get_partition_spec
    from nnx_bridge.sharding import sharded_init as sharded_init
    from nnx_bridge.training import labels as labels
    from nnx_bridge.training import mask as mask


def __getattr__(name: str) -> _tp.Any:
    try:
        module_name, attribute = _ON_FIRST_USE[name]
    except KeyError:
        raise AttributeError(f"module 'nnx_bridge' has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_ON_FIRST_USE))
