"""Twin models for the benchmarks, and the two training loops that drive them.

Every model exists three times, with the same variable names and arithmetic:

* a Flax Linen module (``Linen*``),
* an nnx_bridge module (``Bridge*``), used through `nnx_bridge.to_linen` or
  directly with ``partition``/``merge``,
* a Flax NNX module (``Flax*``), for comparisons with ``flax.nnx`` and with
  Flax's own ``flax.nnx.bridge.to_linen``.

All of them are called as ``model(x, train=...)``; the nnx_bridge module takes
its dropout randomness as ``ctx=``. A `Twin` bundles the three classes with
one configuration, and the functions `mlp`, `digits_mlp`, `cnn`,
`transformer`, `lstm` and `tiny_mlp` build the configurations the benchmarks use.

The loops:

* The stock Linen loop lives in `benchmarks.linen_loop` (`make_train_state`, `step`,
  `logits`): one loop for the tests, the suite and the demo.
* `nnx_init`, `nnx_train_step` and `nnx_predict`: the NNX style, where the
  module is partitioned once into ``params`` and ``batch_stats`` States, the
  step is a pure function of those States, and ``merge`` rebuilds the module.
* `flax_train_step`: the Flax NNX loop (``flax.nnx.jit`` + ``nnx.Optimizer``)
  for the Flax twins, for comparison.

Example:
    >>> import jax, optax
    >>> from benchmarks import linen_loop, models
    >>> twin = models.tiny_mlp()
    >>> x, y = twin.batch(jax.random.PRNGKey(0), 4)
    >>> state = linen_loop.make_train_state(twin.bridged_linen(), jax.random.PRNGKey(1), x, optax.sgd(0.1))
    >>> state, loss = jax.jit(linen_loop.step)(state, x, y, jax.random.PRNGKey(2))
    >>> int(state.step), loss.shape
    (1, ())
"""

from __future__ import annotations

import dataclasses
import itertools
import typing as tp

import flax.linen as nn
import jax
import optax
from flax import nnx as flax_nnx
from flax.nnx import bridge as flax_bridge

import nnx_bridge as nnx
from nnx_bridge.nn import RNN, BatchNorm, Conv, Dropout, LayerNorm, Linear, LSTMCell, MultiHeadAttention


# ----------------------------------------------------------------------------------
# shared arithmetic (the same function in every twin, so the programs match)
# ----------------------------------------------------------------------------------
def avg_pool2(x: jax.Array) -> jax.Array:
    """2x2 average pooling with stride 2 of an NHWC batch (H and W even)."""
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


# ----------------------------------------------------------------------------------
# MLP: dense{i} -> [bn{i}] -> relu -> [dropout], then head
# ----------------------------------------------------------------------------------
class LinenMLP(nn.Module):
    """Linen MLP; ``features`` is unused (Dense infers it) but keeps the twins' signatures equal."""

    features: int
    hidden: tuple[int, ...] = (64,)
    classes: int = 10
    dropout: float = 0.2
    batch_norm: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        for i, width in enumerate(self.hidden):
            x = nn.Dense(width, name=f"dense{i}")(x)
            if self.batch_norm:
                x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name=f"bn{i}")(x)
            x = nn.relu(x)
            if self.dropout:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.classes, name="head")(x)


class BridgeMLP(nnx.Module):
    """The nnx_bridge twin of `LinenMLP` (layers as named attributes, as Linen names them)."""

    def __init__(
        self,
        features: int,
        hidden: tuple[int, ...] = (64,),
        classes: int = 10,
        dropout: float = 0.2,
        batch_norm: bool = True,
        *,
        ctx: nnx.Context,
    ):
        widths = (features, *hidden)
        for i, (din, dout) in enumerate(itertools.pairwise(widths)):
            setattr(self, f"dense{i}", Linear(din, dout, ctx=ctx))
            if batch_norm:
                setattr(self, f"bn{i}", BatchNorm(dout, momentum=0.9, ctx=ctx))
        self.depth = len(hidden)
        self.batch_norm = batch_norm
        self.drop = Dropout(dropout)
        self.head = Linear(widths[-1], classes, ctx=ctx)

    def __call__(self, x: jax.Array, *, train: bool, ctx: nnx.Context | None = None) -> jax.Array:
        for i in range(self.depth):
            x = getattr(self, f"dense{i}")(x)
            if self.batch_norm:
                x = getattr(self, f"bn{i}")(x, use_running_average=not train)
            x = self.drop(jax.nn.relu(x), deterministic=not train, ctx=ctx)
        return self.head(x)


class FlaxMLP(flax_nnx.Module):
    """The Flax NNX twin of `LinenMLP`."""

    def __init__(
        self,
        features: int,
        hidden: tuple[int, ...] = (64,),
        classes: int = 10,
        dropout: float = 0.2,
        batch_norm: bool = True,
        *,
        rngs: flax_nnx.Rngs,
    ):
        widths = (features, *hidden)
        for i, (din, dout) in enumerate(itertools.pairwise(widths)):
            setattr(self, f"dense{i}", flax_nnx.Linear(din, dout, rngs=rngs))
            if batch_norm:
                setattr(self, f"bn{i}", flax_nnx.BatchNorm(dout, momentum=0.9, rngs=rngs))
        self.depth = len(hidden)
        self.batch_norm = batch_norm
        # Flax's to_linen gives init only a 'params' stream; Dropout needs no key until training.
        has_key = "dropout" in rngs or "default" in rngs
        self.drop = flax_nnx.Dropout(dropout, rngs=rngs if has_key else None)
        self.head = flax_nnx.Linear(widths[-1], classes, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        for i in range(self.depth):
            x = getattr(self, f"dense{i}")(x)
            if self.batch_norm:
                x = getattr(self, f"bn{i}")(x, use_running_average=not train)
            x = self.drop(jax.nn.relu(x), deterministic=not train)
        return self.head(x)


# ----------------------------------------------------------------------------------
# small CNN: conv0 -> relu -> pool -> conv1 -> relu -> pool -> dense -> relu -> head
# ----------------------------------------------------------------------------------
class LinenCNN(nn.Module):
    """Linen CNN for NHWC images with even sides divisible by 4."""

    in_channels: int = 1
    channels: tuple[int, int] = (32, 64)
    hidden: int = 128
    classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        del train  # no train-dependent layers
        for i, width in enumerate(self.channels):
            x = avg_pool2(nn.relu(nn.Conv(width, (3, 3), name=f"conv{i}")(x)))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(self.hidden, name="dense")(x))
        return nn.Dense(self.classes, name="head")(x)


class BridgeCNN(nnx.Module):
    """The nnx_bridge twin of `LinenCNN`; ``image`` is the input side (28 for MNIST-sized input)."""

    def __init__(
        self,
        in_channels: int = 1,
        channels: tuple[int, int] = (32, 64),
        hidden: int = 128,
        classes: int = 10,
        *,
        ctx: nnx.Context,
        image: int = 28,
    ):
        self.conv0 = Conv(in_channels, channels[0], (3, 3), ctx=ctx)
        self.conv1 = Conv(channels[0], channels[1], (3, 3), ctx=ctx)
        self.dense = Linear((image // 4) ** 2 * channels[1], hidden, ctx=ctx)
        self.head = Linear(hidden, classes, ctx=ctx)

    def __call__(self, x: jax.Array, *, train: bool, ctx: nnx.Context | None = None) -> jax.Array:
        del train, ctx
        x = avg_pool2(jax.nn.relu(self.conv0(x)))
        x = avg_pool2(jax.nn.relu(self.conv1(x)))
        x = jax.nn.relu(self.dense(x.reshape(x.shape[0], -1)))
        return self.head(x)


class FlaxCNN(flax_nnx.Module):
    """The Flax NNX twin of `LinenCNN`."""

    def __init__(
        self,
        in_channels: int = 1,
        channels: tuple[int, int] = (32, 64),
        hidden: int = 128,
        classes: int = 10,
        *,
        rngs: flax_nnx.Rngs,
        image: int = 28,
    ):
        self.conv0 = flax_nnx.Conv(in_channels, channels[0], (3, 3), rngs=rngs)
        self.conv1 = flax_nnx.Conv(channels[0], channels[1], (3, 3), rngs=rngs)
        self.dense = flax_nnx.Linear((image // 4) ** 2 * channels[1], hidden, rngs=rngs)
        self.head = flax_nnx.Linear(hidden, classes, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        del train
        x = avg_pool2(jax.nn.relu(self.conv0(x)))
        x = avg_pool2(jax.nn.relu(self.conv1(x)))
        x = jax.nn.relu(self.dense(x.reshape(x.shape[0], -1)))
        return self.head(x)


# ----------------------------------------------------------------------------------
# Transformer block stack (pre-norm), mean-pooled into a classifier head
# ----------------------------------------------------------------------------------
class LinenBlock(nn.Module):
    """``x + attn(ln1(x))``, then ``x + mlp_out(gelu(mlp_in(ln2(x))))``."""

    d_model: int
    heads: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + nn.MultiHeadDotProductAttention(self.heads, name="attn")(nn.LayerNorm(name="ln1")(x))
        y = jax.nn.gelu(nn.Dense(4 * self.d_model, name="mlp_in")(nn.LayerNorm(name="ln2")(x)))
        return x + nn.Dense(self.d_model, name="mlp_out")(y)


class LinenTransformer(nn.Module):
    """``depth`` blocks ``block{i}``, a final LayerNorm ``ln``, mean over tokens, ``head``."""

    d_model: int = 64
    heads: int = 4
    depth: int = 2
    classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        del train
        for i in range(self.depth):
            x = LinenBlock(self.d_model, self.heads, name=f"block{i}")(x)
        return nn.Dense(self.classes, name="head")(nn.LayerNorm(name="ln")(x).mean(axis=-2))


class BridgeBlock(nnx.Module):
    """The nnx_bridge twin of `LinenBlock`."""

    def __init__(self, d_model: int, heads: int, *, ctx: nnx.Context):
        self.ln1 = LayerNorm(d_model, ctx=ctx)
        self.attn = MultiHeadAttention(heads, d_model, ctx=ctx)
        self.ln2 = LayerNorm(d_model, ctx=ctx)
        self.mlp_in = Linear(d_model, 4 * d_model, ctx=ctx)
        self.mlp_out = Linear(4 * d_model, d_model, ctx=ctx)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp_out(jax.nn.gelu(self.mlp_in(self.ln2(x))))


class BridgeTransformer(nnx.Module):
    """The nnx_bridge twin of `LinenTransformer`."""

    def __init__(
        self, d_model: int = 64, heads: int = 4, depth: int = 2, classes: int = 10, *, ctx: nnx.Context
    ):
        for i in range(depth):
            setattr(self, f"block{i}", BridgeBlock(d_model, heads, ctx=ctx))
        self.depth = depth
        self.ln = LayerNorm(d_model, ctx=ctx)
        self.head = Linear(d_model, classes, ctx=ctx)

    def __call__(self, x: jax.Array, *, train: bool, ctx: nnx.Context | None = None) -> jax.Array:
        del train, ctx
        for i in range(self.depth):
            x = getattr(self, f"block{i}")(x)
        return self.head(self.ln(x).mean(axis=-2))


class FlaxBlock(flax_nnx.Module):
    """The Flax NNX twin of `LinenBlock`."""

    def __init__(self, d_model: int, heads: int, *, rngs: flax_nnx.Rngs):
        self.ln1 = flax_nnx.LayerNorm(d_model, rngs=rngs)
        self.attn = flax_nnx.MultiHeadAttention(heads, d_model, decode=False, rngs=rngs)
        self.ln2 = flax_nnx.LayerNorm(d_model, rngs=rngs)
        self.mlp_in = flax_nnx.Linear(d_model, 4 * d_model, rngs=rngs)
        self.mlp_out = flax_nnx.Linear(4 * d_model, d_model, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp_out(jax.nn.gelu(self.mlp_in(self.ln2(x))))


class FlaxTransformer(flax_nnx.Module):
    """The Flax NNX twin of `LinenTransformer`."""

    def __init__(
        self, d_model: int = 64, heads: int = 4, depth: int = 2, classes: int = 10, *, rngs: flax_nnx.Rngs
    ):
        for i in range(depth):
            setattr(self, f"block{i}", FlaxBlock(d_model, heads, rngs=rngs))
        self.depth = depth
        self.ln = flax_nnx.LayerNorm(d_model, rngs=rngs)
        self.head = flax_nnx.Linear(d_model, classes, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        del train
        for i in range(self.depth):
            x = getattr(self, f"block{i}")(x)
        return self.head(self.ln(x).mean(axis=-2))


# ----------------------------------------------------------------------------------
# LSTM over the rows of an image: nn.RNN(nn.LSTMCell), last hidden state -> head
# ----------------------------------------------------------------------------------
class LinenLSTM(nn.Module):
    """Linen ``nn.RNN(nn.LSTMCell(hidden))`` over ``(batch, rows, features)``; ``features`` is unused."""

    features: int = 8
    hidden: int = 64
    classes: int = 10

    def setup(self) -> None:
        # Made in setup, the cell belongs to the RNN (params/rnn/cell/...). Made inline in an
        # @nn.compact method it would belong to this module instead (params/LSTMCell_0/...).
        self.rnn = nn.RNN(nn.LSTMCell(self.hidden), return_carry=True)
        self.head = nn.Dense(self.classes)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        del train
        (_, h), _ = self.rnn(x)
        return self.head(h)


class BridgeLSTM(nnx.Module):
    """The nnx_bridge twin of `LinenLSTM` (``rnn/cell/{ii,...,ho}``, ``head``)."""

    def __init__(self, features: int = 8, hidden: int = 64, classes: int = 10, *, ctx: nnx.Context):
        self.rnn = RNN(LSTMCell(features, hidden, ctx=ctx), return_carry=True)
        self.head = Linear(hidden, classes, ctx=ctx)

    def __call__(self, x: jax.Array, *, train: bool, ctx: nnx.Context | None = None) -> jax.Array:
        del train, ctx
        (_, h), _ = self.rnn(x)
        return self.head(h)


class FlaxLSTM(flax_nnx.Module):
    """The Flax NNX twin of `LinenLSTM` (flax.nnx names the forget-gate layer ``if_``)."""

    def __init__(self, features: int = 8, hidden: int = 64, classes: int = 10, *, rngs: flax_nnx.Rngs):
        self.rnn = flax_nnx.RNN(flax_nnx.LSTMCell(features, hidden, rngs=rngs), return_carry=True)
        self.head = flax_nnx.Linear(hidden, classes, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        del train
        (_, h), _ = self.rnn(x)
        return self.head(h)


# ----------------------------------------------------------------------------------
# a model configuration in its three forms
# ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Twin:
    """One configuration of a model as Linen, nnx_bridge and Flax NNX modules.

    ``args``/``kwargs`` are passed to all three constructors (the nnx_bridge
    one also gets ``ctx=``, the Flax one ``rngs=``); ``bridge_kwargs`` go to
    the nnx_bridge and Flax NNX constructors only (sizes Linen infers).
    ``input_shape`` excludes the batch axis.
    """

    name: str
    linen: type[nn.Module]
    bridge: type[nnx.Module]
    flax: type[flax_nnx.Module]
    args: tuple[tp.Any, ...]
    input_shape: tuple[int, ...]
    classes: int
    kwargs: tuple[tuple[str, tp.Any], ...] = ()
    bridge_kwargs: tuple[tuple[str, tp.Any], ...] = ()

    def linen_model(self) -> nn.Module:
        """The Linen module."""
        return self.linen(*self.args, **dict(self.kwargs))

    def bridged_linen(self) -> nnx.ToLinen:
        """The nnx_bridge module as a Linen module (`nnx_bridge.to_linen`)."""
        return nnx.to_linen(self.bridge, *self.args, **dict(self.kwargs), **dict(self.bridge_kwargs))

    def flax_bridged_linen(self) -> nn.Module:
        """The Flax NNX module through Flax's own ``flax.nnx.bridge.to_linen``."""
        return flax_bridge.to_linen(self.flax, *self.args, **dict(self.kwargs), **dict(self.bridge_kwargs))

    def bridge_module(self, key: jax.Array) -> nnx.Module:
        """A fresh nnx_bridge module built with ``Context(key)``."""
        return self.bridge(*self.args, ctx=nnx.Context(key), **dict(self.kwargs), **dict(self.bridge_kwargs))

    def flax_module(self, key: int | jax.Array) -> flax_nnx.Module:
        """A fresh Flax NNX module built with ``Rngs(key)``."""
        return self.flax(*self.args, rngs=flax_nnx.Rngs(key), **dict(self.kwargs), **dict(self.bridge_kwargs))

    def batch(self, key: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
        """A random batch ``(x, labels)`` of the right shapes."""
        kx, ky = jax.random.split(key)
        x = jax.random.normal(kx, (size, *self.input_shape))
        return x, jax.random.randint(ky, (size,), 0, self.classes)


def mlp(
    features: int = 784,
    hidden: tuple[int, ...] = (512, 512),
    classes: int = 10,
    dropout: float = 0.2,
    batch_norm: bool = True,
) -> Twin:
    """The MLP twin (default: 784-512-512-10 with BatchNorm and Dropout)."""
    return Twin(
        "mlp",
        LinenMLP,
        BridgeMLP,
        FlaxMLP,
        (features, tuple(hidden), classes, dropout, batch_norm),
        (features,),
        classes,
    )


def digits_mlp(hidden: int = 64) -> Twin:
    """The digits classifier: 64 inputs (8x8 pixels), one hidden layer, BatchNorm and Dropout."""
    return dataclasses.replace(mlp(64, (hidden,), 10, 0.2, True), name="digits_mlp")


def tiny_mlp() -> Twin:
    """A tiny MLP (16-32-32-4, no BatchNorm or Dropout) whose step time is mostly overhead."""
    return dataclasses.replace(mlp(16, (32, 32), 4, 0.0, False), name="tiny_mlp")


def cnn(image: int = 28, channels: tuple[int, int] = (32, 64), hidden: int = 128) -> Twin:
    """The small CNN twin on ``image x image x 1`` inputs."""
    return Twin(
        "cnn",
        LinenCNN,
        BridgeCNN,
        FlaxCNN,
        (1, tuple(channels), hidden, 10),
        (image, image, 1),
        10,
        bridge_kwargs=(("image", image),),
    )


def transformer(d_model: int = 64, heads: int = 4, depth: int = 2, length: int = 32) -> Twin:
    """The Transformer block stack on ``(length, d_model)`` inputs."""
    return Twin(
        "transformer",
        LinenTransformer,
        BridgeTransformer,
        FlaxTransformer,
        (d_model, heads, depth, 10),
        (length, d_model),
        10,
    )


def lstm(hidden: int = 128, rows: int = 8, features: int = 8) -> Twin:
    """The LSTM twin over ``rows`` time steps of ``features`` (default: the 8x8 digit rows)."""
    return Twin("lstm", LinenLSTM, BridgeLSTM, FlaxLSTM, (features, hidden, 10), (rows, features), 10)


# ----------------------------------------------------------------------------------
# the NNX-style loop: partition once, pure step over States, merge at the end
# ----------------------------------------------------------------------------------
class NNXState(tp.NamedTuple):
    """The carried state of the NNX-style loop (a pytree; ``moduledef`` stays outside)."""

    params: nnx.State
    batch_stats: nnx.State
    opt_state: tp.Any


def nnx_init(module: nnx.Module, tx: optax.GradientTransformation) -> tuple[NNXState, nnx.ModuleDef[tp.Any]]:
    """Partitions `module` into params and batch_stats States and initialises `tx` on the params."""
    params, batch_stats, moduledef = module.partition("params", "batch_stats")
    return NNXState(params, batch_stats, tx.init(params)), moduledef


def nnx_train_step(
    moduledef: nnx.ModuleDef[tp.Any],
    tx: optax.GradientTransformation,
    state: NNXState,
    x: jax.Array,
    y: jax.Array,
    dropout_key: jax.Array,
) -> tuple[NNXState, jax.Array]:
    """One optimiser step; jit it with ``moduledef`` and ``tx`` bound (e.g. ``functools.partial``)."""

    def loss_fn(params: nnx.State) -> tuple[jax.Array, nnx.State]:
        ctx = nnx.Context({"dropout": dropout_key})
        logits, (new, _) = moduledef.apply(params, state.batch_stats)(x, train=True, ctx=ctx)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, new.filter("batch_stats")

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return NNXState(optax.apply_updates(state.params, updates), batch_stats, opt_state), loss


def nnx_predict(module: nnx.Module, x: jax.Array) -> jax.Array:
    """Logits of a (merged) module in evaluation mode."""
    return module(x, train=False)


# ----------------------------------------------------------------------------------
# the flax.nnx loop: nnx.jit + nnx.Optimizer, state updated in place
# ----------------------------------------------------------------------------------
def flax_train_step(
    model: flax_nnx.Module, optimizer: flax_nnx.Optimizer, x: jax.Array, y: jax.Array
) -> jax.Array:
    """One step of the stock ``flax.nnx`` loop; wrap it in ``flax.nnx.jit``.

    The model's BatchNorm statistics, its Dropout RNG stream and the optimiser
    state are updated in place; the loss is returned.
    """

    def loss_fn(m: flax_nnx.Module) -> jax.Array:
        return optax.softmax_cross_entropy_with_integer_labels(m(x, train=True), y).mean()

    loss, grads = flax_nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


# ----------------------------------------------------------------------------------
# run metadata stored with every result file
# ----------------------------------------------------------------------------------
def environment() -> dict[str, tp.Any]:
    """Versions, device, machine load and git commit, stored beside the figures."""
    import datetime
    import os
    import platform
    import subprocess

    import flax

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain"], capture_output=True, text=True, check=True
            ).stdout.strip()
        )
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = None, None
    device = jax.devices()[0]
    return {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "flax": flax.__version__,
        "nnx_bridge": nnx.__version__,
        "device": str(device),
        "device_kind": device.device_kind,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_avg_1min": os.getloadavg()[0],
        "commit": commit,
        "dirty": dirty,
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
