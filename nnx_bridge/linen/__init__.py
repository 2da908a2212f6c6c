"""The bridge to Flax Linen: nnx_bridge modules as genuine `flax.linen.Module`s."""

from nnx_bridge.linen.boxes import boxed_variables as boxed_variables
from nnx_bridge.linen.from_linen import FromLinen as FromLinen
from nnx_bridge.linen.from_linen import from_linen as from_linen
from nnx_bridge.linen.to_linen import ToLinen as ToLinen
from nnx_bridge.linen.to_linen import to_linen as to_linen
