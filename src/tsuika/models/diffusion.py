"""Text-to-image diffusion models as an `AdaptableModel`: a text encoder stage and a denoiser,
after a VAE stage for latent diffusion folders (Stable Diffusion 1.x/2.x layout).

    {input_ids, pixels} → [vae: pixels → latents] → text_encoder → {context, pixels}
                        → unet (+ noise ε, draw u) → {prediction, target}

No method trains the VAE, so its latents are always cacheable (when there is no augmentation);
the text encoder is what every concept-learning method but Textual Inversion (and text-encoder
training) leaves frozen, so its output — the prompt's hidden states — is the next boundary.
The `unet` stage holds the one denoising step every method shares (diffusers' training
scripts): noise ε, a timestep t from a uniform draw u, `add_noise(x0, ε, t)`, the UNet's
prediction, and the target ε (epsilon prediction) or v (v-prediction); the task takes the
MSE. The wrapped library model is the diffusers pipeline, whose `vae`, `unet` and
`text_encoder` are the stages' own modules: adapters injected there, a hypernetwork's
attention processors and new token rows all show in generation at once.

Folders are read with `local_files_only=True`; nothing is fetched.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from tsuika.data.captioned import CaptionedImage
from tsuika.errors import TsuikaError
from tsuika.model_kinds import TEXT_TO_IMAGE
from tsuika.models.base import AdaptableModel, State, unwrapped
from tsuika.models.judge import ImageJudge

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, DDPMScheduler, DiffusionPipeline, UNet2DConditionModel

# diffusers and CLIP are imported where a pipeline is loaded or built: importing them takes
# about 2.5 s (diffusers brings peft), which every run of another task paid at start-up.

BUNDLED_NAME = "fashion-diffusion"
COMPONENTS = ("unet", "text_encoder", "tokenizer", "scheduler")


def bundled_folder() -> Path:
    return Path(__file__).resolve().parents[1] / "data" / "bundled" / BUNDLED_NAME


class LatentStage(nn.Module):
    """Pixels in [-1, 1] → the VAE's latents, scaled as the UNet was trained on them. The
    latent distribution's mean rather than a sample, so that latents can be cached and a
    cached run equals an uncached one (diffusers' and kohya's caches store one sample)."""

    def __init__(self, vae: AutoencoderKL) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, state: State) -> State:
        if "pixels" not in state:  # prompts only (generation's inputs)
            return state
        latents = self.vae.encode(state["pixels"]).latent_dist.mean
        return {**state, "pixels": latents * self.vae.config.scaling_factor}


class TextStage(nn.Module):
    """Token ids → the text encoder's last hidden state (`context`); pixels pass through."""

    def __init__(self, text_encoder: nn.Module) -> None:
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, state: State) -> State:
        out = {k: v for k, v in state.items() if k != "input_ids"}
        out["context"] = self.text_encoder(state["input_ids"])[0]
        return out


class DenoiserStage(nn.Module):
    """The shared denoising step: clean pixels (or latents) x0, noise ε and a uniform draw u
    per example → the UNet's prediction for x_t = add_noise(x0, ε, t), t = ⌊u·T⌋, and its
    target. ε and u are drawn here, where x0's shape is known (a VAE changes it), from the
    global generator on the CPU, so a resumed run and a cached one draw the same; a state may
    bring its own (tests)."""

    def __init__(self, unet: UNet2DConditionModel, scheduler: DDPMScheduler) -> None:
        super().__init__()
        self.unet = unet
        object.__setattr__(self, "scheduler", scheduler)  # not a module: no parameters

    def forward(self, state: State) -> State:
        x0, context = state["pixels"], state["context"]
        noise = state.get("noise")
        if noise is None:
            noise = torch.randn(x0.shape).to(x0.device, x0.dtype)
        u = state.get("u")
        if u is None:
            u = torch.rand(len(x0)).to(x0.device)
        steps = self.scheduler.config.num_train_timesteps
        t = (u * steps).long().clamp(0, steps - 1)
        noisy = self.scheduler.add_noise(x0, noise, t)
        prediction = self.unet(noisy, t, encoder_hidden_states=context).sample
        if self.scheduler.config.prediction_type == "v_prediction":
            target = self.scheduler.get_velocity(x0, noise, t)
        else:
            target = noise
        return {"prediction": prediction, "target": target}


class DiffusionPreprocess:
    """Raw inputs → items: a `CaptionedImage` becomes token ids and pixels in [-1, 1] at the
    UNet's size and channels; a prompt string becomes token ids only (for generation)."""

    ragged = False

    def __init__(self, pipeline: DiffusionPipeline) -> None:
        self.pipeline = pipeline
        vae = getattr(pipeline, "vae", None)
        unet = pipeline.unet.config
        # What the first stage reads: the VAE's input for latent diffusion, else the UNet's.
        self.channels = vae.config.in_channels if vae is not None else unet.in_channels
        self.size = unet.sample_size * (pipeline.vae_scale_factor if vae is not None else 1)

    @property
    def tokenizer(self):
        return self.pipeline.tokenizer

    def token_ids(self, prompts: list[str]) -> torch.Tensor:
        prompts = self.pipeline.maybe_convert_prompt(list(prompts), self.tokenizer)
        return self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids

    def pixels(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 RGB [3, H, W] → float [C, S, S] in [-1, 1] at the model's image size
        (bilinear, antialiased, as the bundled model was pretrained); grayscale by the ITU-R
        601 luma weights (PIL's) for a one-channel model."""
        x = image.float() / 255
        if self.channels == 1:
            x = (x * torch.tensor([0.299, 0.587, 0.114])[:, None, None]).sum(0, keepdim=True)
        size = self.size
        if x.shape[-2:] != (size, size):
            x = nn.functional.interpolate(
                x[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )[0]
        return x.clamp(0, 1) * 2 - 1

    def encode(self, inputs: list) -> list[State]:
        captioned = [x for x in inputs if isinstance(x, CaptionedImage)]
        if captioned and len(captioned) != len(inputs):
            raise TsuikaError("a text-to-image split mixes captioned images and prompts")
        texts = [x.caption for x in captioned] if captioned else [str(x) for x in inputs]
        ids = self.token_ids(texts) if texts else torch.zeros(0, 1, dtype=torch.long)
        items = [{"input_ids": row} for row in ids]
        for item, example in zip(items, captioned, strict=False):
            item["pixels"] = self.pixels(example.image)
        return items

    def length(self, item: State) -> int:
        return 1

    def collate(self, items: list[State]) -> State:
        return collate_items(items)

    def augmented(self, augment):
        """Random horizontal flips (diffusers' `--random_flip`); other augmentations would
        change what the concept looks like and are refused by the task."""

        def collate(items: list[State]) -> State:
            batch = collate_items(items)
            flip = torch.rand(len(items)) < 0.5
            batch["pixels"] = torch.where(
                flip[:, None, None, None], batch["pixels"].flip(-1), batch["pixels"]
            )
            return batch

        return collate


def collate_items(items: list[State]) -> State:
    """Every item has the same keys and shapes: stack them."""
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}


def is_diffusers_folder(path: Path) -> bool:
    return (path / "model_index.json").is_file()


def resolve_diffusion_source(name: str) -> tuple[str, Path]:
    """The bundled name or a local diffusers folder → (source to record, folder)."""
    if name == BUNDLED_NAME:
        folder = bundled_folder()
        if not is_diffusers_folder(folder):
            raise TsuikaError(
                f"the bundled model {BUNDLED_NAME} is missing from {folder}; reinstall tsuika or "
                "run scripts/pretrain_fashion_diffusion.py"
            )
        return name, folder
    path = Path(name).expanduser()
    if path.suffix in (".safetensors", ".ckpt") and path.is_file():
        raise TsuikaError(
            f"{path} is a single checkpoint file; tsuika needs its diffusers config folder too: "
            "give model=<diffusers folder> and model_weights=<the .safetensors file of its UNet>"
        )
    if not is_diffusers_folder(path):
        raise TsuikaError(f"{path}: not a diffusers folder (no model_index.json)")
    return str(path.resolve()), path.resolve()


DEFAULT_GUIDANCE = 7.5
"""Classifier-free guidance for a folder that records none: Stable Diffusion's default."""


def recommended_guidance(folder: Path) -> float:
    """The guidance scale the model's folder recommends (`guidance_scale` in model_index.json,
    which tsuika's pretraining script measures), else Stable Diffusion's 7.5."""
    index = json.loads((folder / "model_index.json").read_text())
    value = index.get("guidance_scale", DEFAULT_GUIDANCE)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 1:
        raise TsuikaError(
            f"{folder / 'model_index.json'}: guidance_scale {value!r} is not a number ≥ 1; "
            "fix it or remove it (then 7.5 is used)"
        )
    return float(value)


def unet_class() -> type[UNet2DConditionModel]:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel


def load_pipeline(folder: Path, weights: str | None = None) -> DiffusionPipeline:
    """The pipeline's components, each read with its own library from the local folder: a
    pixel-space pipeline (unet, text_encoder, tokenizer, scheduler), or with a `vae/` a
    Stable Diffusion pipeline (1.x/2.x layout; no safety checker, as diffusers' training
    scripts load it). DDIM samples either (diffusers converts the scheduler's config)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline
    from transformers import AutoTokenizer, CLIPTextModel

    from tsuika.models.pixel_pipeline import PixelDiffusionPipeline

    latent = "vae" in json.loads((folder / "model_index.json").read_text())
    needed = COMPONENTS + (("vae",) if latent else ())
    missing = [c for c in needed if not (folder / c).is_dir()]
    if missing:
        raise TsuikaError(f"{folder}: the diffusers folder lacks {', '.join(missing)}/")
    try:
        unet = unet_class().from_pretrained(folder / "unet", local_files_only=True)
        text = CLIPTextModel.from_pretrained(folder / "text_encoder", local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
        scheduler = DDIMScheduler.from_pretrained(folder / "scheduler", local_files_only=True)
        vae = None
        if latent:
            vae = AutoencoderKL.from_pretrained(folder / "vae", local_files_only=True)
    except (OSError, ValueError) as error:
        raise TsuikaError(f"{folder}: cannot be loaded as a diffusers pipeline ({error})") from None
    if weights is not None:
        load_unet_weights(unet, Path(weights))
    if latent:
        # No guidance_scale in its config: diffusers checks a Stable Diffusion pipeline's
        # config keys against its components. Its own default (7.5) is the fallback.
        pipeline = StableDiffusionPipeline(
            vae, text, tokenizer, unet, scheduler, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False,
        )  # fmt: skip
    else:
        guidance = recommended_guidance(folder)
        pipeline = PixelDiffusionPipeline(unet, text, tokenizer, scheduler, guidance_scale=guidance)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def load_unet_weights(unet: UNet2DConditionModel, path: Path) -> None:
    """A single `.safetensors` file of UNet weights, checked against the folder's config."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise TsuikaError(
            f"model_weights {path}: cannot be read as safetensors ({error})"
        ) from None
    expected = unet.state_dict()
    wrong = [k for k, v in state.items() if k not in expected or v.shape != expected[k].shape]
    missing = [k for k in expected if k not in state]
    if wrong or missing:
        example = (wrong or missing)[0]
        raise TsuikaError(
            f"model_weights {path}: does not fit the folder's UNet config ({len(wrong)} unknown or "
            f"misshapen, {len(missing)} missing tensors, e.g. {example})"
        )
    unet.load_state_dict(state)


@cache
def judge_at(folder: str) -> ImageJudge:
    """The independent classifier in `folder` (judge.json + judge.safetensors), loaded once.

    Built without drawing from the global random numbers: its layers' initial values are
    replaced by the file's anyway, and since only the first run of a process loads it, a draw
    here would give that run other random numbers than every later run with the same seed."""
    try:
        with torch.random.fork_rng(devices=[]):
            return ImageJudge.load(Path(folder))
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise TsuikaError(f"judge {folder}: cannot be loaded ({error})") from None


@torch.no_grad()
def generate(
    model: nn.Module,
    prompts: list[str],
    seeds: list[int],
    steps: int,
    guidance: float | None = None,
    batch: int = 64,
) -> torch.Tensor:
    """One image per prompt from its own seed's noise (so a prompt and seed give the same
    image whatever else is in the batch), [N, C, S, S] in [0, 1], in eval mode; `guidance`
    None: the model's recommended scale."""
    model = unwrapped(model)
    pipeline = model.library
    if guidance is None:
        guidance = pipeline.config.get("guidance_scale", DEFAULT_GUIDANCE)
    config = pipeline.unet.config
    shape = (config.in_channels, config.sample_size, config.sample_size)
    was_training = model.training
    model.eval()
    images = []
    try:
        for start in range(0, len(prompts), batch):
            chunk = seeds[start : start + batch]
            noise = [torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in chunk]
            out = pipeline(
                prompts[start : start + batch],
                num_inference_steps=steps,
                guidance_scale=guidance,
                latents=torch.stack(noise),
                output_type="pt",
            )
            images.append(out.images.float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(images) if images else torch.zeros(0, *shape)


def image_grid(rows: list[torch.Tensor], scale: int = 4, gap: int = 2):
    """A PIL RGB image of `rows` (each [N, C, S, S] in [0, 1], C = 1 or 3, N may differ),
    every picture enlarged `scale`× with nearest-neighbour (small pictures stay sharp), on a
    white ground."""
    from PIL import Image

    size = max(row.shape[-1] for row in rows) * scale
    width = max(len(row) for row in rows)
    grid = Image.new("RGB", (width * (size + gap) + gap, len(rows) * (size + gap) + gap), "white")
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8).expand(3, -1, -1)
            tile = Image.fromarray(pixels.permute(1, 2, 0).contiguous().numpy(), "RGB")
            grid.paste(
                tile.resize((size, size), Image.NEAREST),
                (gap + c * (size + gap), gap + r * (size + gap)),
            )
    return grid


def diffusion_model(
    name: str, weights: str | None = None, pretrained: bool = True
) -> AdaptableModel:
    from diffusers import DDPMScheduler
    from transformers import CLIPTextModel

    source, folder = resolve_diffusion_source(name)
    pipeline = load_pipeline(folder, weights)
    if not pretrained:  # the same architecture at random initialisation
        torch.manual_seed(0)
        pipeline.unet = unet_class().from_config(pipeline.unet.config)
        pipeline.text_encoder = CLIPTextModel(pipeline.text_encoder.config)
    training_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
    vae = getattr(pipeline, "vae", None)
    stages = [("vae", LatentStage(vae))] if vae is not None else []
    stages += [
        ("text_encoder", TextStage(pipeline.text_encoder)),
        ("unet", DenoiserStage(pipeline.unet, training_scheduler)),
    ]
    preprocess = DiffusionPreprocess(pipeline)
    spec = {
        "model_kind": TEXT_TO_IMAGE,
        "source": source,
        "head": {},
        "weights": weights,
        "size": preprocess.size,
        "channels": preprocess.channels,
    }
    return AdaptableModel(stages, spec, preprocess, library=pipeline)
