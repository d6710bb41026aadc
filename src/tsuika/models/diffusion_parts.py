"""Parts of a small text-to-image pipeline, built in code: a word-level tokenizer, a CLIP-style
text encoder and a pixel-space `UNet2DConditionModel`.

`scripts/pretrain_fashion_diffusion.py` builds the bundled `fashion-diffusion` model from these,
and the tests build tiny pipelines the same way. The tokenizer is a `PreTrainedTokenizerFast`
over a `tokenizers` WordLevel model: no merges to learn, every caption word is one token, and
diffusers' textual-inversion loader can add tokens to it like to CLIP's.
"""

from __future__ import annotations

from collections.abc import Iterable

from diffusers import DDPMScheduler, UNet2DConditionModel
from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel
from tokenizers.processors import TemplateProcessing
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

SPECIAL = ("<|pad|>", "<|unk|>", "<|startoftext|>", "<|endoftext|>")


def word_tokenizer(words: Iterable[str], max_length: int) -> PreTrainedTokenizerFast:
    """A lower-casing, whitespace-and-punctuation word tokenizer; every prompt becomes
    `<|startoftext|> words… <|endoftext|>`, padded to `max_length` by the pipeline."""
    vocab = {token: i for i, token in enumerate(SPECIAL)}
    for word in words:
        vocab.setdefault(word.lower(), len(vocab))
    core = Tokenizer(WordLevel(vocab, unk_token="<|unk|>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[(t, vocab[t]) for t in ("<|startoftext|>", "<|endoftext|>")],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<|pad|>",
        unk_token="<|unk|>",
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        model_max_length=max_length,
    )


def text_encoder(
    tokenizer: PreTrainedTokenizerFast, width: int, layers: int, heads: int
) -> CLIPTextModel:
    """A CLIP text transformer (causal mask, pooled at the end-of-text token)."""
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=tokenizer.model_max_length,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        projection_dim=width,
    )
    return CLIPTextModel(config)


def pixel_unet(
    size: int,
    channels: int,
    block_out_channels: tuple[int, ...],
    cross_attention_dim: int,
    attention_head_dim: int = 8,
) -> UNet2DConditionModel:
    """A denoiser on `channels`-channel images of `size` px; cross-attention to the text in every
    block but the first (full-resolution) one, where attention costs the most."""
    n = len(block_out_channels)
    return UNet2DConditionModel(
        sample_size=size,
        in_channels=channels,
        out_channels=channels,
        layers_per_block=1,
        block_out_channels=block_out_channels,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=attention_head_dim,
        norm_num_groups=min(32, block_out_channels[0]),
    )


def noise_scheduler() -> DDPMScheduler:
    """The training scheduler: 1,000 steps, cosine schedule (Nichol & Dhariwal 2021), which keeps
    small images from being pure noise for most of the schedule; ε-prediction."""
    return DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon"
    )
