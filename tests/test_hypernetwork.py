"""Web-UI-style hypernetworks on a tiny diffusers UNet built in code (no downloads)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from tsuika.errors import TsuikaError
from tsuika.models.hypernetwork import (
    FORMAT,
    Hypernetwork,
    HypernetworkAttnProcessor,
    HypernetworkModule,
    attach,
    detach,
    load_hypernetwork,
    new_hypernetwork,
    save_hypernetwork,
)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread for these tiny tensors: faster than several, much faster on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def unet() -> UNet2DConditionModel:
    """Two blocks, one with cross-attention of context size 32; about a million parameters."""
    torch.manual_seed(0)
    model = UNet2DConditionModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    return model.eval()


@pytest.fixture
def inputs() -> tuple[Tensor, Tensor, Tensor]:
    """(noisy sample, timestep, text context) for a batch of two."""
    generator = torch.Generator().manual_seed(1)
    sample = torch.randn(2, 1, 8, 8, generator=generator)
    context = torch.randn(2, 5, 32, generator=generator)
    return sample, torch.tensor([10, 500]), context


def run(unet: UNet2DConditionModel, inputs: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    sample, timestep, context = inputs
    return unet(sample, timestep, encoder_hidden_states=context).sample


def output(unet: UNet2DConditionModel, inputs: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    with torch.no_grad():
        return run(unet, inputs)


def perturb(hypernetwork: Hypernetwork, scale: float = 0.1) -> None:
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for parameter in hypernetwork.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)


def test_new_is_identity_perturbed_differs_and_multiplier_zero_is_base(unet, inputs) -> None:
    base = output(unet, inputs)
    hypernetwork = new_hypernetwork(unet)
    attach(unet, hypernetwork)
    assert torch.equal(output(unet, inputs), base)  # the last Linear starts at zero

    perturb(hypernetwork)
    changed = output(unet, inputs)
    assert not torch.allclose(changed, base, atol=1e-4)

    hypernetwork.multiplier = 0
    assert hypernetwork.multiplier == 0.0
    assert all(m.multiplier == 0.0 for m in hypernetwork.modules() if hasattr(m, "multiplier"))
    assert torch.equal(output(unet, inputs), base)
    hypernetwork.train()  # unlike the web UI, the multiplier holds in training mode too
    assert torch.equal(output(unet, inputs), base)

    hypernetwork.multiplier = 1
    hypernetwork.eval()
    assert torch.equal(output(unet, inputs), changed)


def test_processors_only_on_cross_attention(unet) -> None:
    hypernetwork = new_hypernetwork(unet)
    attach(unet, hypernetwork)
    processors = unet.attn_processors
    cross = [p for name, p in processors.items() if name.endswith("attn2.processor")]
    other = [p for name, p in processors.items() if not name.endswith("attn2.processor")]
    assert len(cross) == 4 and len(other) == 4
    assert all(isinstance(p, HypernetworkAttnProcessor) for p in cross)
    assert all(p.hypernetwork is hypernetwork for p in cross)
    assert all(type(p) is AttnProcessor2_0 for p in other)
    # The hypernetwork does not become part of the UNet (its weights or its state dict).
    assert not any(k.startswith("hyper") or "processor" in k for k in unet.state_dict())
    assert {id(p) for p in unet.parameters()}.isdisjoint(id(p) for p in hypernetwork.parameters())


def test_context_of_unknown_size_is_unchanged(unet) -> None:
    hypernetwork = new_hypernetwork(unet)
    perturb(hypernetwork)
    other = torch.randn(1, 3, 48)
    key, value = hypernetwork.context(other)
    assert key is other and value is other
    known = torch.randn(1, 3, 32)
    key, value = hypernetwork.context(known)
    assert not torch.equal(key, known) and not torch.equal(key, value)


def test_only_the_hypernetwork_gets_gradients(unet, inputs) -> None:
    unet.requires_grad_(False)
    hypernetwork = new_hypernetwork(unet)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():  # the zero last layers would stop the gradient to the first ones
        for pair in hypernetwork.layers.values():
            for module in pair:
                last = module.linear[-1]
                last.weight.copy_(torch.randn(last.weight.shape, generator=generator) * 0.1)
                last.bias.copy_(torch.randn(last.bias.shape, generator=generator) * 0.1)
    attach(unet, hypernetwork)
    run(unet, inputs).square().mean().backward()

    parameters = dict(hypernetwork.named_parameters())
    assert len(parameters) == 8  # 2 modules × 2 Linears × (weight, bias)
    for name, parameter in parameters.items():
        assert parameter.grad is not None, name
        assert parameter.grad.abs().sum() > 0, name
    assert all(parameter.grad is None for parameter in unet.parameters())


def test_detach_restores_the_base(unet, inputs) -> None:
    base = output(unet, inputs)
    hypernetwork = new_hypernetwork(unet)
    perturb(hypernetwork)
    attach(unet, hypernetwork)
    assert not torch.equal(output(unet, inputs), base)
    detach(unet)
    assert all(type(p) is AttnProcessor2_0 for p in unet.attn_processors.values())
    assert torch.equal(output(unet, inputs), base)


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"layer_structure": [1, 1.5, 1], "activation": "relu", "layer_norm": True, "dropout": 0.1},
    ],
    ids=["default", "layer-norm-relu-dropout"],
)
def test_save_load_round_trip(unet, inputs, tmp_path: Path, settings: dict) -> None:
    hypernetwork = new_hypernetwork(unet, name="style", **settings)
    perturb(hypernetwork)
    hypernetwork.multiplier = 0.7
    hypernetwork.eval()  # not a submodule of the UNet: its own mode, dropout off
    attach(unet, hypernetwork)
    expected = output(unet, inputs)
    path = save_hypernetwork(hypernetwork, tmp_path / "style.safetensors", step=120)

    with safe_open(str(path), framework="pt") as file:
        keys = set(file.keys())
        metadata = file.metadata()
    assert "32.0.linear.0.weight" in keys and "32.1.linear.0.bias" in keys
    assert all(k.startswith(("32.0.linear.", "32.1.linear.")) for k in keys)
    assert metadata["format"] == FORMAT
    assert metadata["weight_initialization"] == "Normal"
    assert metadata["activate_output"] == "False"
    assert metadata["step"] == "120"
    assert metadata["activation_func"] == settings.get("activation", "linear")
    assert metadata["is_layer_norm"] == str(settings.get("layer_norm", False))
    assert metadata["use_dropout"] == str(bool(settings.get("dropout")))

    loaded = load_hypernetwork(path)
    original_state, loaded_state = hypernetwork.state_dict(), loaded.state_dict()
    assert original_state.keys() == loaded_state.keys()
    assert all(torch.equal(original_state[k], loaded_state[k]) for k in original_state)
    for field in ("layer_structure", "activation", "layer_norm", "dropout", "name"):
        assert getattr(loaded, field) == getattr(hypernetwork, field), field
    assert loaded.step == 120
    assert [type(m) for m in loaded.modules()] == [type(m) for m in hypernetwork.modules()]

    loaded.multiplier = 0.7
    loaded.eval()
    attach(unet, loaded)
    assert torch.equal(output(unet, inputs), expected)


def test_key_layout_is_the_web_uis(tmp_path: Path) -> None:
    hypernetwork = Hypernetwork([32, 48], layer_structure=[1, 2, 1], activation="relu")
    path = save_hypernetwork(hypernetwork, tmp_path / "two.safetensors")
    with safe_open(str(path), framework="pt") as file:
        shapes = {key: tuple(file.get_slice(key).get_shape()) for key in file.keys()}  # noqa: SIM118
        metadata = file.metadata()
    # {size: [key_module.state_dict(), value_module.state_dict()]}, Linear, ReLU, Linear.
    expected = {}
    for size in (32, 48):
        for index in (0, 1):
            expected[f"{size}.{index}.linear.0.weight"] = (2 * size, size)
            expected[f"{size}.{index}.linear.0.bias"] = (2 * size,)
            expected[f"{size}.{index}.linear.2.weight"] = (size, 2 * size)
            expected[f"{size}.{index}.linear.2.bias"] = (size,)
    assert shapes == expected
    assert metadata["layer_structure"] == "[1, 2, 1]"
    assert metadata["dropout_structure"] == "[0, 0, 0]"
    assert "step" not in metadata
    assert load_hypernetwork(path).sizes == [32, 48]


def write_without(source: Path, target: Path, drop_tensor: str = "", drop_meta: str = "") -> Path:
    with safe_open(str(source), framework="pt") as file:
        tensors = {k: file.get_tensor(k) for k in file.keys() if k != drop_tensor}  # noqa: SIM118
        metadata = {k: v for k, v in file.metadata().items() if k != drop_meta}
    save_file(tensors, str(target), metadata=metadata)
    return target


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    return save_hypernetwork(Hypernetwork([32]), tmp_path / "good.safetensors")


def test_load_errors_name_the_file(tmp_path: Path, saved: Path) -> None:
    missing = tmp_path / "absent.safetensors"
    with pytest.raises(TsuikaError, match=r"absent\.safetensors"):
        load_hypernetwork(missing)

    text = tmp_path / "notes.safetensors"
    text.write_text("a hypernetwork, honest\n", encoding="utf-8")
    with pytest.raises(TsuikaError, match=r"notes\.safetensors.*not a safetensors file"):
        load_hypernetwork(text)

    lacking = write_without(saved, tmp_path / "lacking.safetensors", "32.1.linear.1.bias")
    with pytest.raises(TsuikaError, match=r"lacking\.safetensors.*32\.1\.linear\.1\.bias"):
        load_hypernetwork(lacking)

    no_name = write_without(saved, tmp_path / "no-name.safetensors", drop_meta="name")
    with pytest.raises(TsuikaError, match=r"no-name\.safetensors.*metadata lacks name"):
        load_hypernetwork(no_name)

    bare = tmp_path / "bare.safetensors"
    save_file({"32.0.linear.0.weight": torch.zeros(64, 32)}, str(bare))
    with pytest.raises(TsuikaError, match=r"bare\.safetensors.*no metadata"):
        load_hypernetwork(bare)


def test_load_rejects_shapes_that_do_not_match_the_structure(tmp_path: Path) -> None:
    # Tensors of [1, 2, 1] under metadata claiming [1, 3, 1].
    path = save_hypernetwork(Hypernetwork([32]), tmp_path / "good.safetensors")
    with safe_open(str(path), framework="pt") as file:
        tensors = {k: file.get_tensor(k) for k in file.keys()}  # noqa: SIM118
        metadata = {**file.metadata(), "layer_structure": "[1, 3, 1]"}
    wrong = tmp_path / "wrong.safetensors"
    save_file(tensors, str(wrong), metadata=metadata)
    with pytest.raises(TsuikaError, match=r"wrong\.safetensors.*has shape \(64,\).*needs \(96,\)"):
        load_hypernetwork(wrong)


def test_save_refuses_other_suffixes(tmp_path: Path) -> None:
    with pytest.raises(TsuikaError, match="safetensors"):
        save_hypernetwork(Hypernetwork([32]), tmp_path / "style.pt")
    assert not (tmp_path / "style.pt").exists()


@pytest.mark.parametrize(
    ("dropout", "types"),
    [
        (0.0, [nn.Linear, nn.ReLU, nn.LayerNorm, nn.Linear, nn.LayerNorm]),
        (0.3, [nn.Linear, nn.ReLU, nn.LayerNorm, nn.Dropout, nn.Linear, nn.LayerNorm]),
    ],
)
def test_sequential_order_is_the_web_uis(dropout: float, types: list[type]) -> None:
    # The web UI, per Linear i: Linear, activation (not after the last), LayerNorm (after every
    # Linear), dropout (not after the last).
    module = HypernetworkModule(32, [1, 1.5, 1], "relu", layer_norm=True, dropout=dropout)
    assert [type(layer) for layer in module.linear] == types
    linears = [layer for layer in module.linear if isinstance(layer, nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(32, 48), (48, 32)]
    assert [ln.normalized_shape for ln in module.linear if isinstance(ln, nn.LayerNorm)] == [
        (48,),
        (32,),
    ]
    # Normal(0.01) init as in the web UI, but the last Linear at zero: exactly the identity.
    assert 0.005 < linears[0].weight.std().item() < 0.015
    assert not linears[-1].weight.any() and not linears[-1].bias.any()
    x = torch.randn(2, 5, 32)
    assert torch.equal(module.eval()(x), x)


def test_bad_settings_are_user_errors() -> None:
    with pytest.raises(TsuikaError, match="start and end with 1"):
        HypernetworkModule(32, [2, 1])
    with pytest.raises(TsuikaError, match="activation"):
        HypernetworkModule(32, activation="sparkle")
    with pytest.raises(TsuikaError, match="dropout"):
        HypernetworkModule(32, dropout=1.0)
