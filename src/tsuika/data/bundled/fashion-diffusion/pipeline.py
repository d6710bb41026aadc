"""A text-to-image diffusion pipeline in pixel space, built only from diffusers and transformers.

This file imports nothing of tsuika's: it is copied verbatim as ``pipeline.py`` into every
diffusers folder tsuika exports, so that plain diffusers loads the folder without tsuika::

    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained(folder, custom_pipeline=folder, trust_remote_code=True)

Components (the layout of a Stable Diffusion folder, without the VAE because the denoiser works
on pixels): ``unet`` (a `UNet2DConditionModel` whose cross-attention reads the text encoder's
last hidden state), ``text_encoder`` (a `CLIPTextModel`), ``tokenizer`` and ``scheduler``. The
textual-inversion and LoRA loader mixins are diffusers' own, so `load_textual_inversion` and
`load_lora_weights` work on it exactly as on a Stable Diffusion pipeline.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.loaders import StableDiffusionLoraLoaderMixin, TextualInversionLoaderMixin
from PIL import Image


class PixelDiffusionPipeline(
    DiffusionPipeline, TextualInversionLoaderMixin, StableDiffusionLoraLoaderMixin
):
    model_cpu_offload_seq = "text_encoder->unet"

    def __init__(
        self, unet, text_encoder, tokenizer, scheduler, guidance_scale: float = 7.5
    ) -> None:
        """`guidance_scale`: the classifier-free guidance this model samples best with, kept in
        model_index.json (measured for each model: a small model trained on few classes
        overshoots at Stable Diffusion's 7.5)."""
        super().__init__()
        self.register_modules(
            unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler
        )
        self.register_to_config(guidance_scale=float(guidance_scale))

    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """Prompts → the text encoder's last hidden state [B, L, D] (textual-inversion tokens
        expanded first, as diffusers' Stable Diffusion pipeline does)."""
        prompts = self.maybe_convert_prompt(prompts, self.tokenizer)
        ids = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)
        return self.text_encoder(ids)[0]

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        num_inference_steps: int = 30,
        guidance_scale: float | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        """Sample images; classifier-free guidance (Ho & Salimans 2022) when guidance_scale > 1:
        ε = ε_uncond + s · (ε_text − ε_uncond), the unconditional branch being the empty prompt.
        `latents`: the starting noise [B, C, S, S] (one row per image), e.g. from a seed each;
        `guidance_scale` None: the model's own (`config.guidance_scale`)."""
        if guidance_scale is None:
            guidance_scale = self.config.guidance_scale
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        text = self.encode_prompt(prompts)
        guided = guidance_scale > 1.0
        if guided:
            text = torch.cat([self.encode_prompt([""] * len(prompts)), text])
        config = self.unet.config
        shape = (len(prompts), config.in_channels, config.sample_size, config.sample_size)
        if latents is None:
            latents = torch.randn(shape, generator=generator, device="cpu")
        sample = latents.to(self.device, text.dtype)
        sample = sample * self.scheduler.init_noise_sigma
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        for t in self.progress_bar(self.scheduler.timesteps):
            model_in = torch.cat([sample, sample]) if guided else sample
            model_in = self.scheduler.scale_model_input(model_in, t)
            noise = self.unet(model_in, t, encoder_hidden_states=text).sample
            if guided:
                uncond, cond = noise.chunk(2)
                noise = uncond + guidance_scale * (cond - uncond)
            sample = self.scheduler.step(noise, t, sample, generator=generator).prev_sample
        images = (sample / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            result = images
        else:
            arrays = (images.permute(0, 2, 3, 1).float().cpu().numpy() * 255).round()
            arrays = arrays.astype(np.uint8)
            result = [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arrays]
        return ImagePipelineOutput(images=result) if return_dict else (result,)
