"""Standard layers with Linen's parameter names, default initialisers and arithmetic.

Linen variables load into these layers unchanged (``module.update_state(
nnx.from_variables(variables))``) and give the same outputs and gradients.

Example:
    >>> import jax.numpy as jnp, nnx_bridge as nnx
    >>> ctx = nnx.Context(0)
    >>> model = nnx.nn.Sequential(nnx.nn.Linear(3, 4, ctx=ctx), nnx.nn.LayerNorm(4, ctx=ctx))
    >>> model(jnp.ones((2, 3))).shape
    (2, 4)
"""

from nnx_bridge.nn.activations import PReLU as PReLU
from nnx_bridge.nn.attention import MultiHeadAttention as MultiHeadAttention
from nnx_bridge.nn.attention import dot_product_attention as dot_product_attention
from nnx_bridge.nn.attention_functions import combine_masks as combine_masks
from nnx_bridge.nn.attention_functions import dot_product_attention_weights as dot_product_attention_weights
from nnx_bridge.nn.attention_functions import make_attention_mask as make_attention_mask
from nnx_bridge.nn.attention_functions import make_causal_mask as make_causal_mask
from nnx_bridge.nn.conv import Conv as Conv
from nnx_bridge.nn.conv_local import ConvLocal as ConvLocal
from nnx_bridge.nn.conv_transpose import ConvTranspose as ConvTranspose
from nnx_bridge.nn.dropout import Dropout as Dropout
from nnx_bridge.nn.dtypes import canonicalize_dtype as canonicalize_dtype
from nnx_bridge.nn.dtypes import promote_dtype as promote_dtype
from nnx_bridge.nn.einsum import Einsum as Einsum
from nnx_bridge.nn.embed import Embed as Embed
from nnx_bridge.nn.group_norm import GroupNorm as GroupNorm
from nnx_bridge.nn.group_norm import InstanceNorm as InstanceNorm
from nnx_bridge.nn.linear import Linear as Linear
from nnx_bridge.nn.linear import LinearGeneral as LinearGeneral
from nnx_bridge.nn.lora import LoRA as LoRA
from nnx_bridge.nn.lora import LoRALinear as LoRALinear
from nnx_bridge.nn.lora import LoRAParam as LoRAParam
from nnx_bridge.nn.normalization import BatchNorm as BatchNorm
from nnx_bridge.nn.normalization import LayerNorm as LayerNorm
from nnx_bridge.nn.normalization import RMSNorm as RMSNorm
from nnx_bridge.nn.params import default_bias_init as default_bias_init
from nnx_bridge.nn.params import default_embed_init as default_embed_init
from nnx_bridge.nn.params import default_kernel_init as default_kernel_init
from nnx_bridge.nn.params import default_scale_init as default_scale_init
from nnx_bridge.nn.pooling import avg_pool as avg_pool
from nnx_bridge.nn.pooling import max_pool as max_pool
from nnx_bridge.nn.pooling import min_pool as min_pool
from nnx_bridge.nn.pooling import pool as pool
from nnx_bridge.nn.recurrent import ConvLSTMCell as ConvLSTMCell
from nnx_bridge.nn.recurrent import GRUCell as GRUCell
from nnx_bridge.nn.recurrent import LSTMCell as LSTMCell
from nnx_bridge.nn.recurrent import MGUCell as MGUCell
from nnx_bridge.nn.recurrent import OptimizedLSTMCell as OptimizedLSTMCell
from nnx_bridge.nn.recurrent import RNNCellBase as RNNCellBase
from nnx_bridge.nn.recurrent import SimpleCell as SimpleCell
from nnx_bridge.nn.rnn import RNN as RNN
from nnx_bridge.nn.rnn import Bidirectional as Bidirectional
from nnx_bridge.nn.rnn import flip_sequences as flip_sequences
from nnx_bridge.nn.sequential import Sequential as Sequential
from nnx_bridge.nn.spectral_norm import SpectralNorm as SpectralNorm
from nnx_bridge.nn.weight_norm import WeightNorm as WeightNorm
