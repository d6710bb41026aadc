"""Hypernetworks as in the Stable Diffusion web UI, on a diffusers `UNet2DConditionModel`.

A hypernetwork (AUTOMATIC1111's `modules/hypernetworks/hypernetwork.py`) is a pair of small
residual MLPs per context size: one rewrites the text context before the key projection of a
cross-attention layer, the other before the value projection. Every cross-attention layer whose
context has that size shares the pair. The UNet itself stays frozen; only the MLPs train.

Here the pair is applied by `HypernetworkAttnProcessor`: diffusers' own `AttnProcessor2_0`, run
on a view of the layer whose `to_k` and `to_v` first rewrite the context; `attach` puts it on
every `attn2` (cross-attention) layer and `detach` puts the default processor back.

Files keep the web UI's layout (the tensor names of its nested state dict and its other fields)
but are safetensors: tensors `"{size}.{0 key | 1 value}.linear.{i}.{weight|bias}"` and the other
fields as string metadata. Nothing is ever unpickled.

Two deliberate differences from the web UI:

- The last Linear starts at zero, so a new hypernetwork is exactly the identity and training
  starts from the base model's behaviour (the web UI starts it at normal(0.01) noise).
- The multiplier applies in training too (the web UI uses 1 while training), so a multiplier of
  0 reproduces the base model exactly in every mode.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, cast

from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from tsuika.config import hypernetwork_size_problem
from tsuika.errors import TsuikaError
from tsuika.files import atomic_file

FORMAT = "tsuika-hypernetwork-webui-1"
WEIGHT_INIT = "Normal"  # the web UI's default; the only initialisation offered here
NORMAL_STD = 0.01

_BASE_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "linear": nn.Identity,  # never instantiated: "linear" adds no module, as in the web UI
    "relu": nn.ReLU,
    "leakyrelu": nn.LeakyReLU,
    "elu": nn.ELU,
    "swish": nn.Hardswish,  # the web UI's mapping (hard swish), kept so its files mean the same
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


def _no_argument_activations() -> dict[str, type[nn.Module]]:
    """torch's activation classes that need no arguments, by lower-case name (web UI names)."""
    found: dict[str, type[nn.Module]] = {}
    for name, cls in inspect.getmembers(nn.modules.activation, inspect.isclass):
        if cls.__module__ != "torch.nn.modules.activation" or not issubclass(cls, nn.Module):
            continue
        if cls is nn.GLU:  # halves the width, which no layer_structure can follow
            continue
        try:
            params = list(inspect.signature(cls).parameters.values())
        except (TypeError, ValueError):
            continue
        if all(
            p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params
        ):
            found[name.lower()] = cls
    return found


ACTIVATIONS: dict[str, type[nn.Module]] = {**_no_argument_activations(), **_BASE_ACTIVATIONS}
"""Activation names → classes: the web UI's names, then every no-argument torch activation."""


def dropout_structure(layer_structure: Sequence[float], dropout: float) -> list[float]:
    """The web UI's per-layer dropout list: `dropout` after every Linear but the last.

    This is the web UI's `parse_dropout_structure` with `last_layer_dropout` on (its default
    for new hypernetworks): `[0, p, …, p, 0]`, entry `i + 1` being the dropout after Linear `i`.
    """
    if dropout <= 0:
        return [0] * len(layer_structure)
    return [0, *([dropout] * (len(layer_structure) - 2)), 0]


def _check_structure(layer_structure: Sequence[float], activation: str, dropout: float) -> None:
    if len(layer_structure) < 2 or layer_structure[0] != 1 or layer_structure[-1] != 1:
        raise TsuikaError(
            f"hypernetwork layer_structure {list(layer_structure)} must start and end with 1"
            " (e.g. [1, 2, 1])"
        )
    if any(
        not isinstance(s, int | float) or isinstance(s, bool) or s <= 0 for s in layer_structure
    ):
        raise TsuikaError(
            f"hypernetwork layer_structure {list(layer_structure)} must hold positive numbers"
        )
    too_large = hypernetwork_size_problem(list(layer_structure))
    if too_large:  # checked before a single layer is allocated
        raise TsuikaError(f"hypernetwork layer_structure {list(layer_structure)} {too_large}")
    if activation not in ACTIVATIONS:
        raise TsuikaError(
            f"unknown hypernetwork activation {activation!r}; use one of "
            + ", ".join(sorted(_BASE_ACTIVATIONS))
        )
    if not 0 <= dropout < 1:
        raise TsuikaError(f"hypernetwork dropout {dropout} must be at least 0 and below 1")


class HypernetworkModule(nn.Module):
    """One residual MLP: `x + linear(x) * multiplier`, `linear` built in the web UI's order."""

    def __init__(
        self,
        dim: int,
        layer_structure: Sequence[float] = (1, 2, 1),
        activation: str = "linear",
        layer_norm: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        _check_structure(layer_structure, activation, dropout)
        drops = dropout_structure(layer_structure, dropout)
        last = len(layer_structure) - 2
        layers: list[nn.Module] = []
        for i in range(len(layer_structure) - 1):
            width = int(dim * layer_structure[i + 1])
            layers.append(nn.Linear(int(dim * layer_structure[i]), width))
            if activation != "linear" and i < last:  # no activation after the last Linear
                layers.append(ACTIVATIONS[activation]())
            if layer_norm:  # after every Linear, the last included, as in the web UI
                layers.append(nn.LayerNorm(width))
            if drops[i + 1] > 0:  # zero after the last Linear
                layers.append(nn.Dropout(p=drops[i + 1]))
        self.linear = nn.Sequential(*layers)
        self.multiplier = 1.0
        self._initialise()

    def _initialise(self) -> None:
        # The web UI's "Normal" initialisation: every Linear and LayerNorm weight normal(0, 0.01),
        # every bias zero (LayerNorm weights too: that is what the web UI does).
        for layer in self.linear:
            if isinstance(layer, nn.Linear | nn.LayerNorm):
                nn.init.normal_(layer.weight, mean=0.0, std=NORMAL_STD)
                nn.init.zeros_(layer.bias)
        # Unlike the web UI, the last Linear starts at zero, so linear(x) is exactly 0 (a
        # LayerNorm after it maps 0 to its zero bias) and a new module is exactly the identity:
        # training starts from the base model's behaviour.
        final = [layer for layer in self.linear if isinstance(layer, nn.Linear)][-1]
        nn.init.zeros_(final.weight)
        nn.init.zeros_(final.bias)

    def forward(self, x: Tensor) -> Tensor:
        """`x + linear(x) * multiplier`; the multiplier applies in training too (the web UI
        uses 1 while training), so a multiplier of 0 always gives back `x` exactly."""
        return x + self.linear(x) * self.multiplier


class Hypernetwork(nn.Module):
    """A `[key_module, value_module]` pair per context size, shared by all layers of that size."""

    def __init__(
        self,
        sizes: Iterable[int],
        layer_structure: Sequence[float] = (1, 2, 1),
        activation: str = "linear",
        layer_norm: bool = False,
        dropout: float = 0.0,
        name: str = "hypernetwork",
        step: int | None = None,
    ) -> None:
        super().__init__()
        self.layer_structure = list(layer_structure)
        self.activation = activation
        self.layer_norm = layer_norm
        self.dropout = dropout
        self.name = name
        self.step = step
        self._multiplier = 1.0
        self.layers = nn.ModuleDict()
        for size in sorted(set(sizes)):
            self.layers[str(size)] = nn.ModuleList(
                HypernetworkModule(size, self.layer_structure, activation, layer_norm, dropout)
                for _ in range(2)
            )

    @property
    def sizes(self) -> list[int]:
        """The context sizes this hypernetwork has modules for."""
        return [int(size) for size in self.layers]

    @property
    def multiplier(self) -> float:
        """The strength of every module (0 = exactly the base model, 1 = as trained)."""
        return self._multiplier

    @multiplier.setter
    def multiplier(self, value: float) -> None:
        self._multiplier = float(value)
        for module in self.modules():
            if isinstance(module, HypernetworkModule):
                module.multiplier = self._multiplier

    def context(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """(context for the keys, context for the values); unchanged for an unknown size."""
        return self.key_context(context), self.value_context(context)

    def key_context(self, context: Tensor) -> Tensor:
        """The context the key projection sees; unchanged for an unknown size."""
        return self._rewrite(context, 0)

    def value_context(self, context: Tensor) -> Tensor:
        """The context the value projection sees; unchanged for an unknown size."""
        return self._rewrite(context, 1)

    def _rewrite(self, context: Tensor, index: int) -> Tensor:
        """`context` through module `index` (0 key, 1 value) of its size, if there is one.

        Computed in the module's dtype and returned in the context's, so a float32 hypernetwork
        works on a half-precision UNet.
        """
        size = str(context.shape[-1])
        if size not in self.layers:
            return context
        module = self.layers[size][index]
        dtype = module.linear[0].weight.dtype
        return module(context.to(dtype)).to(context.dtype)


class _RewrittenContextView:
    """`attn` as diffusers' processor sees it, but `to_k` and `to_v` first rewrite their input.

    diffusers' processor calls `attn.to_k(context)` and `attn.to_v(context)` after its own
    cross-attention norm, exactly where the web UI rewrites the context; everything else is
    read from `attn` itself. A view rather than swapping `attn.to_k` so the UNet's modules are
    never changed, not even for one call.
    """

    def __init__(self, attn: Attention, hypernetwork: Hypernetwork) -> None:
        self._attn = attn
        self._hypernetwork = hypernetwork

    def __getattr__(self, name: str) -> Any:
        return getattr(self._attn, name)

    def to_k(self, context: Tensor) -> Tensor:
        return self._attn.to_k(self._hypernetwork.key_context(context))

    def to_v(self, context: Tensor) -> Tensor:
        return self._attn.to_v(self._hypernetwork.value_context(context))


class HypernetworkAttnProcessor(AttnProcessor2_0):
    """diffusers' `AttnProcessor2_0`, with the hypernetwork's contexts for keys and values.

    Only where `encoder_hidden_states` is given (cross-attention); self-attention is unchanged.
    A plain object, not an `nn.Module`, so the hypernetwork does not become part of the UNet's
    parameters or state dict.
    """

    def __init__(self, hypernetwork: Hypernetwork) -> None:
        super().__init__()
        self.hypernetwork = hypernetwork

    # The same parameters as `AttnProcessor2_0.__call__`: `Attention.forward` passes on only
    # the `cross_attention_kwargs` this signature names.
    def __call__(
        self,
        attn: Attention,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        temb: Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Tensor:
        """The attention output, computed by `AttnProcessor2_0` on the rewritten contexts."""
        if encoder_hidden_states is not None:
            attn = cast(Attention, _RewrittenContextView(attn, self.hypernetwork))
        return super().__call__(
            attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs
        )


def _is_cross_attention(name: str) -> bool:
    return name.endswith("attn2.processor")


def attach(unet: UNet2DConditionModel, hypernetwork: Hypernetwork) -> None:
    """Apply `hypernetwork` on every cross-attention (`attn2`) layer; the rest get the default.

    The hypernetwork stays outside the UNet's modules, so `unet.eval()` and
    `unet.requires_grad_(False)` leave it alone: set its mode (dropout) with its own `.eval()`.
    """
    processor = HypernetworkAttnProcessor(hypernetwork)
    unet.set_attn_processor(
        {
            name: processor if _is_cross_attention(name) else AttnProcessor2_0()
            for name in unet.attn_processors
        }
    )


def detach(unet: UNet2DConditionModel) -> None:
    """Put diffusers' default processor (`AttnProcessor2_0`) back on every attention layer."""
    unet.set_attn_processor({name: AttnProcessor2_0() for name in unet.attn_processors})


def new_hypernetwork(
    unet: UNet2DConditionModel,
    layer_structure: Sequence[float] = (1, 2, 1),
    activation: str = "linear",
    layer_norm: bool = False,
    dropout: float = 0.0,
    name: str = "hypernetwork",
) -> Hypernetwork:
    """A new (identity) hypernetwork for `unet`'s context size, float32 on the UNet's device."""
    size = unet.config.cross_attention_dim
    if not isinstance(size, int):
        raise TsuikaError(
            f"this UNet has per-block cross_attention_dim {size}; hypernetworks need one size"
        )
    hypernetwork = Hypernetwork([size], layer_structure, activation, layer_norm, dropout, name)
    return hypernetwork.to(unet.device)


def _flag(value: bool) -> str:
    return "True" if value else "False"


def save_hypernetwork(
    hypernetwork: Hypernetwork, path: str | Path, step: int | None = None
) -> Path:
    """Write `hypernetwork` as a safetensors file in the web UI's layout; returns the path.

    Tensors: `"{size}.{0|1}.linear.{i}.weight|bias"` (0 = key, 1 = value, `i` the Sequential
    index); metadata: the web UI's other fields as strings (lists as JSON). `step` defaults to
    the hypernetwork's own `step`. The file is written atomically.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise TsuikaError(f"{path}: a hypernetwork is saved as a .safetensors file")
    tensors: dict[str, Tensor] = {}
    for size, pair in hypernetwork.layers.items():
        for index, module in enumerate(pair):
            for key, tensor in module.state_dict().items():
                tensors[f"{size}.{index}.{key}"] = tensor.detach().cpu().contiguous().clone()
    drops = dropout_structure(hypernetwork.layer_structure, hypernetwork.dropout)
    metadata = {
        "format": FORMAT,
        "name": hypernetwork.name,
        "layer_structure": json.dumps(hypernetwork.layer_structure),
        "activation_func": hypernetwork.activation,
        "is_layer_norm": _flag(hypernetwork.layer_norm),
        "weight_initialization": WEIGHT_INIT,
        "use_dropout": _flag(hypernetwork.dropout > 0),
        "dropout_structure": json.dumps(drops),
        "activate_output": "False",
        "last_layer_dropout": _flag(drops[-2] != 0),
    }
    step = hypernetwork.step if step is None else step
    if step is not None:
        metadata["step"] = str(int(step))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


_REQUIRED = (
    "format",
    "name",
    "layer_structure",
    "activation_func",
    "is_layer_norm",
    "weight_initialization",
    "use_dropout",
    "dropout_structure",
    "activate_output",
    "last_layer_dropout",
)


def _bad(path: Path, problem: str) -> TsuikaError:
    return TsuikaError(f"{path}: {problem}; this is not a usable tsuika hypernetwork file")


def _parse_flag(path: Path, metadata: dict[str, str], key: str) -> bool:
    value = metadata[key]
    if value not in ("True", "False"):
        raise _bad(path, f"metadata {key} is {value!r}, not True or False")
    return value == "True"


def _parse_list(path: Path, metadata: dict[str, str], key: str) -> list[float]:
    try:
        value = json.loads(metadata[key])
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value
    ):
        raise _bad(path, f"metadata {key} is {metadata[key]!r}, not a JSON list of numbers")
    return value


def _parse_settings(path: Path, metadata: dict[str, str]) -> dict[str, Any]:
    """The constructor arguments the metadata describes, validated."""
    missing = [key for key in _REQUIRED if key not in metadata]
    if missing:
        raise _bad(path, f"metadata lacks {', '.join(missing)}")
    if metadata["format"] != FORMAT:
        raise _bad(path, f"format is {metadata['format']!r}, expected {FORMAT!r}")
    if metadata["weight_initialization"] != WEIGHT_INIT:
        raise _bad(path, f"weight_initialization {metadata['weight_initialization']!r} unknown")
    if _parse_flag(path, metadata, "activate_output"):
        raise _bad(path, "activate_output is True, which tsuika does not support")
    activation = metadata["activation_func"]
    layer_structure = _parse_list(path, metadata, "layer_structure")
    try:
        _check_structure(layer_structure, activation, 0.0)
    except TsuikaError as error:
        raise _bad(path, str(error)) from None
    drops = _parse_list(path, metadata, "dropout_structure")
    dropout = float(max(drops, default=0))
    use_dropout = _parse_flag(path, metadata, "use_dropout")
    _parse_flag(path, metadata, "last_layer_dropout")
    if (
        not 0 <= dropout < 1
        or drops != dropout_structure(layer_structure, dropout)
        or use_dropout != (dropout > 0)
    ):
        raise _bad(
            path,
            f"dropout_structure {drops} (use_dropout {use_dropout}) is not one rate below 1 after"
            f" every Linear but the last of layer_structure {layer_structure}",
        )
    step = metadata.get("step")
    if step is not None and not step.isdigit():
        raise _bad(path, f"metadata step is {step!r}, not a whole number")
    return {
        "layer_structure": layer_structure,
        "activation": activation,
        "layer_norm": _parse_flag(path, metadata, "is_layer_norm"),
        "dropout": dropout,
        "name": metadata["name"],
        "step": None if step is None else int(step),
    }


def _size_of(path: Path, key: str) -> int:
    size, _, rest = key.partition(".")
    index, _, _ = rest.partition(".")
    if not size.isdigit() or int(size) <= 0 or index not in ("0", "1"):
        raise _bad(path, f"tensor {key!r} is not named '<size>.<0|1>.linear.<i>.<weight|bias>'")
    return int(size)


def load_hypernetwork(path: str | Path) -> Hypernetwork:
    """The hypernetwork `save_hypernetwork` wrote to `path`, rebuilt from the file alone."""
    path = Path(path)
    if not path.is_file():
        raise TsuikaError(f"{path}: no such hypernetwork file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as file:
            metadata = file.metadata()
            tensors = {key: file.get_tensor(key) for key in file.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as error:
        raise _bad(path, f"not a safetensors file ({error})") from None
    if not metadata:
        raise _bad(path, "the file has no metadata")
    settings = _parse_settings(path, metadata)
    if not tensors:
        raise _bad(path, "the file holds no tensors")
    sizes = {_size_of(path, key) for key in tensors}
    hypernetwork = Hypernetwork(sizes, **settings)
    expected = {
        f"{size}.{index}.{key}": tensor
        for size, pair in hypernetwork.layers.items()
        for index, module in enumerate(pair)
        for key, tensor in module.state_dict().items()
    }
    missing = [key for key in expected if key not in tensors]
    if missing:
        raise _bad(path, f"lacks {len(missing)} tensors (e.g. {missing[0]})")
    unexpected = [key for key in tensors if key not in expected]
    if unexpected:
        raise _bad(path, f"holds tensor {unexpected[0]}, which the structure does not have")
    for key, tensor in tensors.items():
        if tensor.shape != expected[key].shape:
            shape, wanted = tuple(tensor.shape), tuple(expected[key].shape)
            raise _bad(path, f"tensor {key} has shape {shape}, the structure needs {wanted}")
    hypernetwork.layers.load_state_dict(tensors)
    return hypernetwork
