"""Teaching a text-to-image model a new concept: what is shared by every such method.

Every method trains with the same denoising step (the `unet` stage of
`tsuika.models.diffusion`, the task's MSE); they differ in which parameters learn, what the
concept's prompt is, and what they save — each in the format the ecosystem loads:

    textual-inversion   new token rows only          learned_embeds.safetensors
    dreambooth          the UNet (+ text encoder)    a diffusers folder
    dreambooth-lora     LoRA on attention (PEFT)     pytorch_lora_weights.safetensors
    hypernetwork        MLPs on cross-attention K/V  hypernetwork.safetensors (web UI layout)
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from tsuika.config import Config, updated
from tsuika.data.captioned import (
    BUNDLED_CLASS_WORDS,
    BUNDLED_IMAGES,
    DEFAULT_CONCEPT,
    CaptionedImage,
    read_captioned_images,
)
from tsuika.errors import TsuikaError
from tsuika.feed import Batch, Feed
from tsuika.feed.cache import CacheSettings
from tsuika.files import atomic_file, fresh_folder, write_atomic
from tsuika.methods.base import Method, save_weights
from tsuika.model_kinds import TEXT_TO_IMAGE, kinds_in_words
from tsuika.models import model_kinds_of
from tsuika.models.base import AdaptableModel
from tsuika.models.causal import cache_root
from tsuika.models.diffusion import generate
from tsuika.tasks.text_to_image import NOT_JUDGED

CONCEPT_TRAINING = {"epochs": 30, "batch_size": 16, "warmup": 0.0, "patience": None}
"""What `train` means for a handful of pictures, when the config leaves it as it is for
classification: epochs of `diffusion.repeats` copies (5 pictures: 210 steps of 16, about the
image passes of diffusers' DreamBooth examples), the best epoch by validation fidelity, no
early stopping on a fidelity measured on a few generations. On the bundled model 8 epochs
left every method's fidelity at 6–41 % and 40 epochs reached 31–50 % (bench/RESULTS.md)."""


class ConceptMethod(Method):
    name = "concept"
    sections = ("diffusion",)
    model_kinds = frozenset({TEXT_TO_IMAGE})
    tasks = frozenset({"text-to-image"})
    default_lr = 1e-4

    # -- configuration ---------------------------------------------------------------------
    @classmethod
    def concept_words(cls, config: Config) -> str:
        """How prompts name the concept (`<concept>`, `sks shoe`)."""
        raise NotImplementedError

    @classmethod
    def defaults(cls, config: Config) -> dict:
        """The text-to-image task, the bundled model and concept, and concept-sized
        training (`CONCEPT_TRAINING`) — where the user chose none of them."""
        return {
            "task": "text-to-image",
            "model": "fashion-diffusion",  # the global default is a text encoder
            "data": {"train": DEFAULT_CONCEPT},
            "train": CONCEPT_TRAINING,
        }

    @classmethod
    def completed(cls, config: Config) -> Config:
        """The bundled concept's class word and image count, and the concept's prompt."""
        if config.task == "auto":
            config = updated(config, {"task": next(iter(cls.tasks))})
        if config.task not in cls.tasks:
            return config  # the method refuses the task with its own message
        _check_text_to_image(cls.name, config.model)
        diffusion = config.diffusion
        found = {
            "images": diffusion.images or BUNDLED_IMAGES.get(config.data.train),
            "class_word": diffusion.class_word or BUNDLED_CLASS_WORDS.get(config.data.train),
        }
        if found["class_word"] is None:
            raise TsuikaError(
                f"method {cls.name} needs diffusion.class_word: a word the model knows for what "
                "the concept is (e.g. diffusion.class_word=dog)"
            )
        config = updated(config, {"diffusion": found})
        if config.diffusion.caption is None:
            caption = config.diffusion.class_template.format(cls.concept_words(config))
            config = updated(config, {"diffusion": {"caption": caption}})
        return config

    @property
    def lr(self) -> float:
        return self.config.diffusion.lr or self.default_lr

    # -- what trains -----------------------------------------------------------------------
    def trained(self, model: AdaptableModel) -> list[nn.Parameter]:
        """The parameters this method trains (after `prepare`)."""
        return [p for p in model.parameters() if p.requires_grad]

    def prepare(self, model: AdaptableModel) -> None:
        if getattr(model, "concept_prepared", False):
            return  # idempotent
        model.requires_grad_(False)
        self.make_trainable(model)
        object.__setattr__(model, "concept_prepared", True)
        if self.cache_boundary(model) == 0 and self.config.train.cache in ("memory", "disk"):
            raise TsuikaError(
                f"train.cache={self.config.train.cache}: {self.name} trains the text encoder "
                "(its outputs change every step), so they cannot be cached; use train.cache=auto "
                "or off"
            )

    def make_trainable(self, model: AdaptableModel) -> None:
        raise NotImplementedError

    def trainable_groups(self, model: AdaptableModel) -> set[int]:
        return {g.index for g in model.layer_groups() if g.trainable}

    def trainable_parameters(self, model: AdaptableModel) -> dict[str, nn.Parameter]:
        return {n: p for n, p in model.named_parameters() if p.requires_grad}

    def param_groups(self, model: AdaptableModel) -> list[dict]:
        params = self.trained(model)
        decay = self.config.train.weight_decay
        matrices = [p for p in params if p.dim() >= 2]
        vectors = [p for p in params if p.dim() < 2]
        groups = [{"params": matrices, "lr": self.lr, "weight_decay": decay, "name": self.name}]
        if vectors:
            groups.append(
                {"params": vectors, "lr": self.lr, "weight_decay": 0.0, "name": self.name}
            )
        return [g for g in groups if g["params"]]

    # -- saving ----------------------------------------------------------------------------
    def save(self, model: AdaptableModel, folder: Path) -> None:
        """The method's own file(s) (`save_concept`); weights.safetensors is empty (the base
        model comes from its source)."""
        folder.mkdir(parents=True, exist_ok=True)
        self.save_concept(model, folder)
        save_weights({}, folder)

    def save_concept(self, model: AdaptableModel, folder: Path) -> None:
        raise NotImplementedError

    # -- evidence --------------------------------------------------------------------------
    def evidence(self, model: AdaptableModel, splits, summary: dict) -> dict:
        """Concept fidelity and prior preservation before and after, and FORGETTING when the
        known classes' accuracy fell beyond its 95% interval (two independent proportions:
        the base and the adapted model's generations share seeds, so this is conservative)."""
        test, base = summary.get("test", {}), summary.get("baselines", {}).get("base")
        if base is None or "prior_preservation" not in test:
            return {}
        known = [k.removeprefix("accuracy/") for k in test if k.startswith("accuracy/")]
        n = max(self.config.diffusion.eval_images * len(known), 1)
        after, before = test["prior_preservation"], base["prior_preservation"]
        change = after - before
        spread = 1.96 * math.sqrt((after * (1 - after) + before * (1 - before)) / n)
        forgot = change + spread < 0
        words = f"{100 * change:+.1f} points (95% CI {100 * (change - spread):+.1f} to " + (
            f"{100 * (change + spread):+.1f})"
        )
        text = (
            f"FORGETTING: the classes the model already knew are generated less recognisably "
            f"after {self.name}: {words}"
            if forgot
            else f"no forgetting measured: the known classes' accuracy changed by {words}"
        )
        concept = {
            "fidelity": test["concept_fidelity"],
            "base_fidelity": base["concept_fidelity"],
            "prior_preservation": after,
            "base_prior_preservation": before,
            "prior_change": {"change": change, "low": change - spread, "high": change + spread},
            "per_class": {c: [base[f"accuracy/{c}"], test[f"accuracy/{c}"]] for c in known},
            "prompt": self.config.diffusion.caption,
            "images_per_prompt": self.config.diffusion.eval_images,
        }
        verdicts = {
            **summary.get("verdicts", {}),
            "forgetting": {"forgetting": forgot, "text": text},
        }
        return {"concept": concept, "verdicts": verdicts}


def _check_text_to_image(method: str, model: str) -> None:
    """A model the user named is theirs: a concept method refuses one that is not a
    text-to-image model rather than putting the bundled one in its place."""
    kinds = model_kinds_of(model)
    if TEXT_TO_IMAGE not in kinds:
        raise TsuikaError(
            f"method {method} teaches a text-to-image model a concept, and model `{model}` is "
            f"{kinds_in_words(kinds, article=True)} model; name a text-to-image model "
            "(fashion-diffusion or a diffusers folder), or leave `model` out for the bundled one"
        )


# -- Textual Inversion -----------------------------------------------------------------------
class TextualInversion(ConceptMethod):
    """Only the new pseudo-word's embedding rows learn (Gal et al. 2022, arXiv:2208.01618):
    the token is added to the tokenizer, its rows start as `class_word`'s embedding, and a
    gradient mask keeps every other row exactly as it was (AdamW moves nothing whose gradient
    and weight decay are zero)."""

    name = "textual-inversion"
    sections = ("diffusion", "textual_inversion")
    default_lr = 5e-3

    @classmethod
    def concept_words(cls, config: Config) -> str:
        return config.textual_inversion.token

    def tokens(self) -> list[str]:
        """`<concept>`, `<concept>_1`, …: the names diffusers' loader gives extra vectors."""
        token, n = self.config.textual_inversion.token, self.config.textual_inversion.vectors
        return [token] + [f"{token}_{i}" for i in range(1, n)]

    def make_trainable(self, model: AdaptableModel) -> None:
        pipeline = model.library
        tokenizer, encoder = pipeline.tokenizer, pipeline.text_encoder
        init = tokenizer(self.config.diffusion.class_word, add_special_tokens=False).input_ids
        if len(init) != 1 or init[0] == tokenizer.unk_token_id:
            raise TsuikaError(
                f"diffusion.class_word {self.config.diffusion.class_word!r} is not one word of "
                "the model's vocabulary; Textual Inversion starts the new token from it"
            )
        tokens = self.tokens()
        for token in tokens:
            if _known_word(tokenizer, token):
                raise TsuikaError(
                    f"textual_inversion.token {token!r} is already a word of the model's "
                    "vocabulary; the token must be new to the tokenizer (training it would "
                    f"change what {token!r} means in every prompt): choose one such as "
                    f"<{token}>"
                )
        if tokenizer.add_tokens(tokens) != len(tokens):
            raise TsuikaError(
                f"textual_inversion.token {tokens[0]!r} is already a word of the model; "
                "choose another, e.g. <my-concept>"
            )
        encoder.resize_token_embeddings(len(tokenizer))
        ids = tokenizer.convert_tokens_to_ids(tokens)
        weight = encoder.get_input_embeddings().weight
        with torch.no_grad():
            weight[ids] = weight[init[0]].clone()
        mask = torch.zeros(len(weight), 1)
        mask[ids] = 1.0
        weight.requires_grad_(True)
        weight.register_hook(lambda grad: grad * mask.to(grad.device, grad.dtype))
        object.__setattr__(model, "concept_token_ids", ids)

    def param_groups(self, model: AdaptableModel) -> list[dict]:
        # No weight decay: decoupled decay would shrink every row of the table, not only the
        # new ones (diffusers' script restores the other rows after each step instead).
        params = self.trained(model)
        return [{"params": params, "lr": self.lr, "weight_decay": 0.0, "name": self.name}]

    def save_concept(self, model: AdaptableModel, folder: Path) -> None:
        """`{token: [vectors, width]}`, the file diffusers' `load_textual_inversion` reads."""
        from safetensors.torch import save_file

        weight = model.library.text_encoder.get_input_embeddings().weight
        rows = weight[model.concept_token_ids].detach().cpu().clone()
        with atomic_file(folder / "learned_embeds.safetensors") as tmp:
            save_file({self.tokens()[0]: rows}, str(tmp))

    @classmethod
    def restore(cls, model: AdaptableModel, folder: Path) -> None:
        path = folder / "learned_embeds.safetensors"
        if not path.is_file():
            raise TsuikaError(f"{folder}: no learned_embeds.safetensors; the run folder is damaged")
        model.library.load_textual_inversion(str(path))


def _known_word(tokenizer, word: str) -> bool:
    """Whether `word` already means something to `tokenizer`: a vocabulary entry, or text it
    reads as one known token. `add_tokens` misses the second (CLIP's BPE stores `shoe` as
    `shoe</w>`), and the new token would then shadow the word."""
    if word in tokenizer.get_vocab():
        return True
    ids = tokenizer(word, add_special_tokens=False).input_ids
    return len(ids) == 1 and ids[0] != tokenizer.unk_token_id


# -- DreamBooth ------------------------------------------------------------------------------
def prior_preservation_loss(
    losses: torch.Tensor, prior: torch.Tensor, weight: float
) -> torch.Tensor:
    """mean(instance losses) + weight · mean(prior losses) over a batch (Ruiz et al. 2022,
    arXiv:2208.12242, eq. 2, as diffusers' train_dreambooth.py computes it); `prior` marks the
    class images, [B]. A batch without one kind adds nothing for it."""
    is_prior = prior > 0
    total = losses.sum() * 0.0
    if (~is_prior).any():
        total = total + losses[~is_prior].mean()
    if weight > 0 and is_prior.any():
        total = total + weight * losses[is_prior].mean()
    return total


class DreamBooth(ConceptMethod):
    """Fine-tune the denoiser (and, with `dreambooth.train_text_encoder`, the text encoder)
    on `<identifier> <class_word>`, with the prior-preservation loss on class images the base
    model generated (cached) or the user supplied."""

    name = "dreambooth"
    sections = ("diffusion", "dreambooth")
    default_lr = 1e-4
    given_class_images: list[torch.Tensor] | None = None
    """The pictures of `dreambooth.class_data`, read by `prepare`."""

    @classmethod
    def concept_words(cls, config: Config) -> str:
        return f"{config.dreambooth.identifier} {config.diffusion.class_word}"

    @property
    def class_prompt(self) -> str:
        return self.config.diffusion.class_template.format(self.config.diffusion.class_word)

    def make_trainable(self, model: AdaptableModel) -> None:
        model.library.unet.requires_grad_(True)
        if self.config.dreambooth.train_text_encoder:
            model.library.text_encoder.requires_grad_(True)

    def prepare(self, model: AdaptableModel) -> None:
        super().prepare(model)
        settings = self.config.dreambooth
        if settings.class_data is not None and settings.prior_weight > 0:
            # Read now, as the concept's own pictures are: a bad folder fails before any run
            # folder exists.
            self.given_class_images = self._read_class_data()

    def _read_class_data(self) -> list[torch.Tensor]:
        settings = self.config.dreambooth
        examples = read_captioned_images(
            settings.class_data, self.class_prompt, settings.class_images,
            self.config.data.max_image_pixels, [], key="dreambooth.class_data",
        )  # fmt: skip
        return [example.image for example in examples.inputs]

    def step(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        outputs = model(self.task.inputs(batch.state, batch.targets), batch.start)
        losses = self.task.losses(outputs, batch.targets)
        weight = self.config.dreambooth.prior_weight
        return {
            "loss": prior_preservation_loss(losses, batch.targets["prior"], weight),
            "outputs": outputs,
        }

    # -- class images ----------------------------------------------------------------------
    def precompute(
        self, model: AdaptableModel, feed: Feed, settings: CacheSettings, name: str
    ) -> Feed:
        if name == "train" and self.config.dreambooth.prior_weight > 0:
            feed = self._with_class_images(model, feed)
        return super().precompute(model, feed, settings, name)

    def _with_class_images(self, model: AdaptableModel, feed: Feed) -> Feed:
        images = self.class_images(model)
        examples = [CaptionedImage(image, self.class_prompt) for image in images]
        items = model.preprocess.encode(examples)
        n = len(items)
        targets = {
            "class": torch.cat([feed.targets["class"], torch.full((n,), NOT_JUDGED)]),
            "seed": torch.cat([feed.targets["seed"], torch.arange(n)]),
            "prior": torch.cat([feed.targets["prior"], torch.ones(n)]),
        }
        inputs = list(feed.inputs or []) + examples
        return replace(
            feed, items=list(feed.items) + items, targets=targets, inputs=inputs, origin=None
        )

    def class_images(self, model: AdaptableModel) -> list[torch.Tensor]:
        """`dreambooth.class_images` pictures of the class, uint8 RGB [3, S, S] each: the first
        of `class_data`, or generated by the model before training and cached under
        ~/.cache/tsuika/class-images (keyed by the model's weights and the settings)."""
        settings, diffusion = self.config.dreambooth, self.config.diffusion
        if settings.class_data is not None:
            if self.given_class_images is not None:
                return self.given_class_images
            return self._read_class_data()
        key = {
            "weights": weights_digest(model),
            "prompt": self.class_prompt,
            "n": settings.class_images,
            "steps": diffusion.sample_steps,
            "guidance": self.task.settings["guidance"],
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        path = cache_root() / "class-images" / f"{digest}.safetensors"
        from safetensors.torch import load_file, save_file

        if path.is_file():
            return list(load_file(str(path))["images"])
        seeds = list(range(2_000_000, 2_000_000 + settings.class_images))
        generated = generate(
            model,
            [self.class_prompt] * len(seeds),
            seeds,
            diffusion.sample_steps,
            self.task.settings["guidance"],
        )
        images = (generated * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as tmp:
            save_file({"images": images}, str(tmp))
        return list(images)

    # -- saving ----------------------------------------------------------------------------
    def save_concept(self, model: AdaptableModel, folder: Path) -> None:
        """The whole adapted pipeline as a diffusers folder, with its `pipeline.py`."""
        save_pipeline(model.library, folder / "pipeline")

    @classmethod
    def restore(cls, model: AdaptableModel, folder: Path) -> None:
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel

        source = folder / "pipeline"
        if not (source / "unet").is_dir():
            raise TsuikaError(f"{folder}: no pipeline/unet folder; the run folder is damaged")
        pipeline = model.library
        unet = UNet2DConditionModel.from_pretrained(source / "unet", local_files_only=True)
        pipeline.unet.load_state_dict(unet.state_dict())
        encoder = CLIPTextModel.from_pretrained(source / "text_encoder", local_files_only=True)
        pipeline.text_encoder.load_state_dict(encoder.state_dict())


def save_pipeline(pipeline, folder: Path) -> None:
    """A diffusers folder (safetensors) that plain diffusers loads: a Stable Diffusion folder
    with `DiffusionPipeline.from_pretrained(folder)`, a pixel-space one with
    `custom_pipeline=folder` (its `pipeline.py` is written beside it)."""
    from tsuika.models import pixel_pipeline

    with fresh_folder(folder) as staging:
        pipeline.save_pretrained(str(staging), safe_serialization=True)
        if isinstance(pipeline, pixel_pipeline.PixelDiffusionPipeline):
            source = Path(pixel_pipeline.__file__).read_text(encoding="utf-8")
            write_atomic(staging / "pipeline.py", source)


def weights_digest(model: AdaptableModel) -> str:
    """A digest of the base UNet's and text encoder's weights, as loaded."""
    digest = hashlib.sha256()
    for module in (model.library.unet, model.library.text_encoder):
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


# -- DreamBooth with LoRA --------------------------------------------------------------------
TEXT_ENCODER_LORA = ["q_proj", "k_proj", "v_proj", "out_proj"]


class DreamBoothLora(DreamBooth):
    """DreamBooth's data and loss, with LoRA (through PEFT, diffusers' `add_adapter`) on the
    UNet's attention projections — and the text encoder's, with `train_text_encoder` — in
    place of full fine-tuning; the base stays frozen (Hu et al. 2021, arXiv:2106.09685)."""

    name = "dreambooth-lora"
    sections = ("diffusion", "dreambooth", "adapter")
    default_lr = 1e-3

    def lora_config(self, targets: list[str]):
        from peft import LoraConfig

        settings = self.config.adapter
        return LoraConfig(
            r=settings.r,
            lora_alpha=settings.alpha,
            lora_dropout=settings.dropout,
            init_lora_weights="gaussian",  # B = 0: the adapted model starts as the base
            target_modules=targets,
        )

    def make_trainable(self, model: AdaptableModel) -> None:
        pipeline = model.library
        pipeline.unet.add_adapter(self.lora_config(self.config.dreambooth.lora_targets))
        if self.config.dreambooth.train_text_encoder:
            pipeline.text_encoder.add_adapter(self.lora_config(TEXT_ENCODER_LORA))
        for module in (pipeline.unet, pipeline.text_encoder):
            for param_name, param in module.named_parameters():
                param.requires_grad_("lora_" in param_name)

    def save_concept(self, model: AdaptableModel, folder: Path) -> None:
        """`pytorch_lora_weights.safetensors`, written by diffusers' own `save_lora_weights`
        with the adapters' configs as metadata (so alpha survives loading)."""
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        pipeline = model.library
        layers, metadata = {}, {}
        for name in ("unet", "text_encoder"):
            module = getattr(pipeline, name)
            if getattr(module, "peft_config", None):
                state = get_peft_model_state_dict(module)
                layers[f"{name}_lora_layers"] = convert_state_dict_to_diffusers(state)
                config = next(iter(module.peft_config.values()))
                metadata[f"{name}_lora_adapter_metadata"] = config.to_dict()
        type(pipeline).save_lora_weights(str(folder), **layers, **metadata)

    @classmethod
    def restore(cls, model: AdaptableModel, folder: Path) -> None:
        path = folder / "pytorch_lora_weights.safetensors"
        if not path.is_file():
            raise TsuikaError(f"{folder}: no pytorch_lora_weights.safetensors; the run is damaged")
        model.library.load_lora_weights(str(folder))


# -- Hypernetwork ----------------------------------------------------------------------------
class HypernetworkMethod(ConceptMethod):
    """Small residual MLPs rewrite the text context of every cross-attention layer before its
    key and value projections (the Stable Diffusion web UI's hypernetworks, through a custom
    attention processor: `tsuika.models.hypernetwork`). The UNet and text encoder stay frozen,
    so the text encoder's outputs are cached when there is no augmentation. The prompt is the
    plain class prompt: a hypernetwork adds no word, it changes how every prompt is read."""

    name = "hypernetwork"
    sections = ("diffusion", "hypernetwork")
    default_lr = 1e-3

    @classmethod
    def concept_words(cls, config: Config) -> str:
        return config.diffusion.class_word

    def make_trainable(self, model: AdaptableModel) -> None:
        from tsuika.models.hypernetwork import new_hypernetwork

        settings = self.config.hypernetwork
        hypernetwork = new_hypernetwork(
            model.library.unet,
            settings.layer_structure,
            settings.activation,
            settings.layer_norm,
            settings.dropout,
            name=self.config.diffusion.class_word,
        )
        _attach_hypernetwork(model, hypernetwork, settings.multiplier)
        hypernetwork.requires_grad_(True)

    def save_concept(self, model: AdaptableModel, folder: Path) -> None:
        """`hypernetwork.safetensors` in the web UI's layout (`save_hypernetwork`)."""
        from tsuika.models.hypernetwork import save_hypernetwork

        hypernetwork = _denoiser(model).hypernetwork
        save_hypernetwork(hypernetwork, folder / "hypernetwork.safetensors")
        # The strength is a user setting, not part of the web UI's file: kept beside it.
        settings = {"multiplier": hypernetwork.multiplier}
        write_atomic(folder / "hypernetwork.json", json.dumps(settings))

    @classmethod
    def restore(cls, model: AdaptableModel, folder: Path) -> None:
        from tsuika.models.hypernetwork import load_hypernetwork

        path, settings = folder / "hypernetwork.safetensors", folder / "hypernetwork.json"
        if not path.is_file() or not settings.is_file():
            raise TsuikaError(
                f"{folder}: no hypernetwork.safetensors or hypernetwork.json; the run folder "
                "is damaged"
            )
        try:
            multiplier = float(json.loads(settings.read_text(encoding="utf-8"))["multiplier"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise TsuikaError(f"{settings}: cannot be read ({error}); the run is damaged") from None
        hypernetwork = load_hypernetwork(path).to(model.library.unet.device)
        _attach_hypernetwork(model, hypernetwork, multiplier)


def _denoiser(model: AdaptableModel) -> nn.Module:
    return model.stages[-1]


def _attach_hypernetwork(model: AdaptableModel, hypernetwork, multiplier: float) -> None:
    """Route the UNet's cross-attention through `hypernetwork`, and register it on the denoising
    stage so that the model's parameters, state dict and train/eval mode include it."""
    from tsuika.models.hypernetwork import attach

    hypernetwork.multiplier = multiplier
    attach(model.library.unet, hypernetwork)
    _denoiser(model).hypernetwork = hypernetwork
