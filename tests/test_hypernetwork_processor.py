"""Issue 32, item 6: the hypernetwork's attention processor reuses diffusers' `AttnProcessor2_0`.

The reference for every comparison is diffusers' own processor on an attention layer whose
`to_k` and `to_v` are preceded by the key and value modules — the web UI's definition of a
hypernetwork — so the numbers are checked without keeping a copy of the old processor.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import Tensor, nn

from tsuika.models.hypernetwork import (
    Hypernetwork,
    HypernetworkAttnProcessor,
    attach,
    new_hypernetwork,
)

SIZE = 32


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread for these tiny tensors: faster than several on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def perturbed(hypernetwork: Hypernetwork) -> Hypernetwork:
    """`hypernetwork` with random weights, so keys and values really are rewritten."""
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for parameter in hypernetwork.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return hypernetwork.eval()


def with_hypernetwork_inlined(attn: Attention, hypernetwork: Hypernetwork) -> Attention:
    """A copy of `attn` whose `to_k`/`to_v` first apply the key/value module of its size."""
    inlined = copy.deepcopy(attn)
    key_module, value_module = hypernetwork.layers[str(SIZE)]
    inlined.to_k = nn.Sequential(key_module, inlined.to_k)
    inlined.to_v = nn.Sequential(value_module, inlined.to_v)
    inlined.set_processor(AttnProcessor2_0())
    return inlined


def cross_attention(norm: str | None) -> Attention:
    torch.manual_seed(0)
    attn = Attention(
        query_dim=16, cross_attention_dim=SIZE, heads=2, dim_head=8, cross_attention_norm=norm
    )
    return attn.eval()


def states(*shape: int, seed: int) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("norm", [None, "layer_norm"])
def test_cross_attention_matches_diffusers_on_rewritten_keys_and_values(norm) -> None:
    attn = cross_attention(norm)
    hypernetwork = perturbed(Hypernetwork([SIZE]))
    reference = with_hypernetwork_inlined(attn, hypernetwork)
    hidden, context = states(2, 6, 16, seed=1), states(2, 5, SIZE, seed=3)
    keep = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    mask = ((1 - keep) * -10000.0).unsqueeze(1)  # the additive bias diffusers' UNet passes
    image = states(2, 16, 2, 3, seed=4)  # the 4-D (batch, channels, height, width) form
    attn.set_processor(HypernetworkAttnProcessor(hypernetwork))
    with torch.no_grad():
        for hidden_states, attention_mask in ((hidden, None), (hidden, mask), (image, None)):
            got = attn(hidden_states, context, attention_mask=attention_mask)
            want = reference(hidden_states, context, attention_mask=attention_mask)
            assert torch.equal(got, want)


def test_self_attention_is_diffusers_unchanged_even_at_the_context_size() -> None:
    # Hidden states of the hypernetwork's size: only the missing context keeps it out.
    torch.manual_seed(0)
    attn = Attention(query_dim=SIZE, heads=2, dim_head=8).eval()
    hidden = states(2, 6, SIZE, seed=1)
    with torch.no_grad():
        want = attn(hidden)
        attn.set_processor(HypernetworkAttnProcessor(perturbed(Hypernetwork([SIZE]))))
        assert torch.equal(attn(hidden), want)


def test_new_hypernetwork_is_exactly_diffusers_processor() -> None:
    attn = cross_attention(None)
    hidden, context = states(2, 6, 16, seed=1), states(2, 5, SIZE, seed=3)
    with torch.no_grad():
        want = attn(hidden, context)
        attn.set_processor(HypernetworkAttnProcessor(Hypernetwork([SIZE])))  # zero residual
        assert torch.equal(attn(hidden, context), want)


def test_attached_unet_matches_the_unet_with_hypernetwork_inlined() -> None:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=SIZE,
        attention_head_dim=8,
        norm_num_groups=32,
    ).eval()
    hypernetwork = perturbed(new_hypernetwork(unet))
    reference = copy.deepcopy(unet)
    for name, module in list(reference.named_modules()):
        if name.endswith("attn2"):
            parent, _, child = name.rpartition(".")
            inlined = with_hypernetwork_inlined(module, hypernetwork)
            setattr(reference.get_submodule(parent), child, inlined)
    attach(unet, hypernetwork)
    sample, context = states(2, 1, 8, 8, seed=1), states(2, 5, SIZE, seed=3)
    timestep = torch.tensor([10, 500])
    with torch.no_grad():
        got = unet(sample, timestep, encoder_hidden_states=context).sample
        want = reference(sample, timestep, encoder_hidden_states=context).sample
    assert torch.equal(got, want)


def test_the_attention_itself_is_diffusers_code(monkeypatch) -> None:
    # The processor adds only the hypernetwork: the attention is diffusers' own, not a copy.
    calls: list[bool] = []
    original = AttnProcessor2_0.__call__

    def spy(self, attn, hidden_states, encoder_hidden_states=None, *args, **kwargs):
        calls.append(encoder_hidden_states is not None)
        return original(self, attn, hidden_states, encoder_hidden_states, *args, **kwargs)

    monkeypatch.setattr(AttnProcessor2_0, "__call__", spy)
    attn = cross_attention(None)
    attn.set_processor(HypernetworkAttnProcessor(Hypernetwork([SIZE])))
    with torch.no_grad():
        attn(states(1, 6, 16, seed=1), states(1, 5, SIZE, seed=3))
    assert calls == [True]
