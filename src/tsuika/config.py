"""Typed configuration: YAML + dotted `key=value` overrides, validated, defaults in one place.

Unknown keys are errors (a typo must not silently fall back to a default). Every error names
the key and what was expected. A plugin's task or method (`tsuika.plugins`) brings its own
settings section under its name (`bitfit.lr=…`), validated as the built-in ones are.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points
from itertools import pairwise
from pathlib import Path
from string import Formatter
from types import UnionType
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from tsuika.errors import TsuikaError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, coerce_numbers_to_str=True)


EMPTY_PATH = "is empty; give a file or folder (or leave it out)"


def path_given(value: str | None) -> str | None:
    """`value` as given; ValueError (`EMPTY_PATH`) when it is an empty path, which must never
    quietly mean a default (the bundled data, the current folder). Every path-valued config
    key and command-line option goes through here."""
    if value is not None and not value.strip():
        raise ValueError(EMPTY_PATH)
    return value


class AugmentConfig(Section):
    """Training-time augmentation for images (torchvision transforms v2); off by default."""

    crop_scale: tuple[float, float] | None = None
    """Random resized crop with this area range, e.g. [0.6, 1.0]; null: the eval crop."""
    rotation: float = Field(0.0, ge=0, le=180)
    """Random rotation up to ± this many degrees."""
    hflip: bool = False
    vflip: bool = False
    color_jitter: float = Field(0.0, ge=0, le=1)
    """Brightness, contrast and saturation jitter strength."""

    @property
    def active(self) -> bool:
        return bool(
            self.crop_scale or self.rotation or self.hflip or self.vflip or self.color_jitter
        )


class DataConfig(Section):
    train: str | None = None
    """A CSV/TSV/JSONL table (text), an image folder or a CSV/JSONL of `path,label` (images),
    or `bundled:reviews` / `bundled:fashion`. Default: the bundled data of the model's kind.
    For bundled data its own test split is used when `test` is unset."""
    validation: str | None = None
    """Optional validation file/folder; otherwise `val_fraction` of train is held out."""
    test: str | None = None
    """Optional test file/folder; otherwise `test_fraction` of train is held out (stratified)."""
    text_column: str = "text"
    image_column: str = "path"
    """Column of image paths in a CSV/JSONL (relative paths are relative to the file)."""
    label_column: str | list[str] = "label"
    """The target column; several (`[topic, sentiment]`) for multi-task classification, a
    numeric column for `task: regression`."""
    val_fraction: float = Field(0.1, gt=0, lt=1)
    give_back: bool = True
    """A validation split held out of `train` that nothing selects on (the last epoch kept
    without early stopping, or a head solved in closed form, which picks its regularisation by
    cross-validation on training) goes back to training: 128 examples of two classes train on
    102, not 92. Not with a `validation` file or `k` per class; false keeps it, to report on."""
    test_fraction: float = Field(0.2, gt=0, lt=1)
    k: int | None = Field(None, ge=1)
    """Examples per class to keep from the training split (few-shot experiments)."""
    seed: int = 0
    strict: bool = False
    """Images: stop at a corrupt/unreadable/oversized file instead of skipping it."""
    max_image_pixels: int = Field(40_000_000, ge=1)
    """Images larger than this (width × height) are refused as too large."""
    image_size: int | None = Field(None, ge=16, le=1024)
    """Side in pixels of the square input an image model sees; null: the model's own (224 for
    EfficientNet-Lite0). Small images gain little from being enlarged to 224 while the cost
    grows with the square of the side: EfficientNet-Lite0 on 28-px Fashion-MNIST, 100 per
    class, measured 0.851 at 224 px and 0.843 at 128 px in a third of the time. Convolutional
    networks take any size; a model with a fixed input size (ViT) needs its own."""
    allow_outside_paths: bool = False
    """Image tables: allow `path` entries that lead outside the table's folder (absolute paths,
    `..`). Off by default, so a table received from someone else cannot read arbitrary files."""
    augment: AugmentConfig = AugmentConfig()
    retain: str | None = None
    """Examples of what the model could do before, measured every epoch (forgetting): for an
    encoder a labelled table or image folder of another task (a linear probe on the current
    features scores it), for a causal LM a prompt/completion JSONL of general use (loss per
    completion token). `bundled:speeches`: party-convention sentences labelled by party."""
    retain_label_column: str = "label"
    """The label column of `retain` (encoders)."""

    _paths = field_validator("train", "validation", "test", "retain")(path_given)


class HeadConfig(Section):
    type: Literal["linear", "mlp"] = "linear"
    hidden: int = Field(256, ge=1)
    """Width of the MLP head's hidden layer."""
    dropout: float = Field(0.0, ge=0, lt=1)
    pooling: Literal["auto", "mean", "cls"] = "auto"
    """`auto` takes the model's own pooling (sentence-transformers config), else mean."""
    fit: Literal["convex", "steps"] = "convex"
    """How a new linear head is fitted on the frozen model's features — by `transfer`, and
    by LP-FT's first stage (`finetune.head_init: probe`). `convex`: solved to the optimum of
    its convex loss on the cached features (L-BFGS logistic regression, or ridge for
    regression; regularisation chosen by cross-validation on the training split, so no
    examples are spent on a validation split the fit does not need), in one pass — no
    epochs. `steps`: AdamW epochs with early stopping, as every other method trains (also
    what an MLP head, augmented inputs or a Huber loss fall back to)."""


class TrainConfig(Section):
    epochs: int = Field(50, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(3e-3, gt=0)
    """Learning rate of the new head."""
    backbone_lr: float = Field(3e-5, gt=0)
    """Learning rate of pretrained parameters that train (finetune)."""
    weight_decay: float = Field(0.01, ge=0)
    warmup: float = Field(0.06, ge=0, lt=1)
    """Fraction of the optimizer steps spent in linear warmup."""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    patience: int | None = Field(10, ge=1)
    """Epochs without validation improvement before stopping; null disables early stopping."""
    select: Literal["best", "last"] = "best"
    """Which epoch's weights the run keeps: the best on validation, or the last (a fixed
    schedule, for data too small to hold out a validation split worth choosing by; the
    validation figures are still reported)."""
    balance: Literal["auto", "none", "weights", "sampler"] = "auto"
    """Imbalanced classes (classification). `auto`: from a largest/smallest class ratio of 3
    on, the classes weigh equally in the loss (n / (classes × count), in a closed-form head
    too) and the best epoch, the head's regularisation and the verdicts go by macro-F1
    instead of accuracy; balanced data is left as it is. `weights`: that, whatever the
    ratio; `sampler`: each epoch draws its examples with replacement, every class equally
    often (and selects on macro-F1); `none`: accuracy, no weighting."""
    budget_minutes: float | None = Field(10.0, gt=0)
    """`method: auto` keeps its estimated wall time (measured speed × examples × epochs,
    printed with an ETA before training) within this many minutes: fewer epochs first, then a
    head on frozen features (`transfer`) — and says so. A named method is estimated, never
    changed. null: no limit."""
    max_length: int | None = Field(None, ge=8)
    """Tokens per text; longer texts are cut. null: chosen from the data — the 95th
    percentile of the training texts' token lengths, rounded up to a multiple of 16, at most
    the model's own maximum (sentence-transformers' `max_seq_length`, else the tokenizer's
    and the position embeddings'); the run says how many texts are cut. Causal LMs: 128."""
    grad_accum: int = Field(1, ge=1)
    clip_grad_norm: float | None = Field(1.0, gt=0)
    bf16: bool = False
    cache: Literal["auto", "memory", "disk", "off"] = "auto"
    """Frozen-part activations: computed once and reused every epoch (`off` recomputes)."""
    cache_memory_mb: int = Field(2048, ge=1)
    """With `cache: auto`, above this size the cache spills to memory-mapped files in the run
    folder (`memory` never spills, `disk` always uses them)."""
    cache_across_runs: bool = True
    """Keep frozen passes in the user's activation store (`TSUIKA_CACHE`, else ~/.cache/tsuika;
    `tsuika cache ls|clear`) and read them in a later run on the same inputs and weights."""
    cache_limit_gb: float = Field(10.0, gt=0)
    """The activation store's size; the least recently used passes go beyond it."""
    checkpoint_every: int | None = Field(None, ge=1)
    """Also checkpoint every N optimizer steps (a checkpoint is always written per epoch)."""
    fsdp: bool = False
    """Shard the weights, gradients and optimizer state of full fine-tuning across the
    processes (FSDP), for a model that does not fit one device; with several processes only
    (`--processes N`, torchrun, `accelerate launch`). Checkpoints are sharded too."""


class FinetuneConfig(Section):
    freeze: Annotated[int, Field(ge=0)] | Literal["all-but-head"] | list[str] = 0
    """The N shallowest layer groups, `all-but-head`, or group-name patterns (`block[1-3]`)."""
    layer_decay: float = Field(1.0, gt=0, le=1)
    """Layer-wise rate decay γ: the pretrained group at depth d below the head trains at
    `backbone_lr × γ^(d-1)` (Clark et al. 2020, ELECTRA; timm `param_groups_layer_decay`)."""
    group_lr: dict[str, float] = {}
    """Rates for named groups (patterns allowed), overriding the rules above; 0 freezes."""
    unfreeze_every: int | None = Field(None, ge=1)
    """Gradual unfreezing (ULMFiT): head only, then one more group every E epochs."""
    batchnorm: Literal["update", "frozen"] = "update"
    """`frozen`: BatchNorm layers keep their pretrained running statistics and normalise with
    them in training as in evaluation (their scale and shift still train). With small batches
    of a new domain, training otherwise normalises by batch statistics that evaluation never
    uses: EfficientNet-Lite0's running statistics move by 1 % a step."""
    head_init: Literal["new", "probe"] = "new"
    """`probe`: before the first epoch the new head is fitted on the pretrained model's pooled
    features of the training split (linear probing, then fine-tuning: LP-FT, Kumar et al.
    2022), so fine-tuning starts from a fitted head instead of a random one, whose large
    early gradients distort the pretrained features. Costs one inference pass over the
    training split."""
    l2sp: float = Field(0.0, ge=0)
    """L2-SP (Li et al. 2018): `l2sp / 2 × ‖w − w₀‖²` over the pretrained weights that train,
    pulling them toward their pretrained values w₀ instead of toward zero. Reduces
    forgetting; 0 is plain fine-tuning. Typical: 0.01–1."""
    lwf: float = Field(0.0, ge=0)
    """Learning without forgetting (Li & Hoiem 2016): for encoders (`finetune`, `contrastive`,
    adapters), `lwf ×` the squared distance between the pooled features and the pretrained
    model's on the same training inputs (computed once before training); for a causal LM with
    adapters, `lwf ×` the KL divergence of its next-token distributions from those of the same
    network with its adapters switched off (one more forward pass a step). 0: off."""


class AdapterConfig(Section):
    """Parameter-efficient adapters through PEFT (`lora`, `dora`, `ia3`, `prompt-tuning`)."""

    r: int = Field(8, ge=1)
    """LoRA/DoRA rank of the update BA (Hu et al. 2021)."""
    alpha: float = Field(16.0, gt=0)
    """LoRA scaling: the update is (alpha / r) · BA."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the adapter's input (LoRA/DoRA). 0, PEFT's default: dropout keeps a copy
    of every adapted layer's input (measured on MiniLM: +305 MB peak, +17 % time, same
    accuracy; bench/RESULTS.md)."""
    target_modules: Literal["all-linear"] | list[str] = "all-linear"
    """`all-linear`: every Linear (and, in image models, every plain Conv2d) inside the layer
    groups; or name patterns matched against module names in the wrapped model
    (`*query`, `*value`, `encoder.layer.*.output.dense`)."""
    blocks: Literal["all"] | Annotated[int, Field(ge=1)] = "all"
    """Adapters in every layer group, or only in the top N: everything below stays frozen
    and its output is cached once."""
    lr: float | None = Field(None, gt=0)
    """Learning rate of the adapter parameters (the head uses `train.lr`); null: the
    method's own default — 5e-4 for lora, dora and ia3, 3e-2 for prompt-tuning's
    virtual tokens (Lester et al. 2021 train soft prompts at far higher rates)."""
    virtual_tokens: int = Field(20, ge=1)
    """prompt-tuning: learned vectors placed before every prompt (Lester et al. 2021)."""


class LanguageModelConfig(Section):
    """`task: causal-lm`: how examples become tokens, and how the model answers."""

    template: Literal["auto", "chat", "plain"] = "auto"
    """`chat`: prompts (text, or `messages`) are formatted with the tokenizer's chat template,
    as an instruction-tuned model expects; `plain`: prompt text then completion; `auto`: chat
    when the tokenizer has a template."""
    max_new_tokens: int = Field(32, ge=1)
    """Tokens to generate for `predict` (and the default of `tsuika generate`)."""


class DistillConfig(Section):
    """`method: distill`: a small student learns from a trained teacher's soft targets and
    from the labels (Hinton, Vinyals & Dean 2015)."""

    teacher: str | None = None
    """The teacher: a finished tsuika run folder (a fine-tuned or LoRA classifier)."""
    student: str = "teacher"
    """`teacher`: built from the teacher, keeping some of its blocks with their trained weights
    (DistilBERT-style); otherwise a model name or folder (`model` is set from it)."""
    blocks: list[Annotated[int, Field(ge=1)]] | None = Field(None, min_length=1)
    """Teacher blocks the student keeps, numbered as `tsuika inspect` names them (block1 …);
    null: half of them, evenly spaced, the first and the last included (DistilBERT's choice);
    an empty list is an error, not the default."""
    temperature: float = Field(2.0, gt=0)
    """Softmax temperature T of the soft targets; the soft loss is scaled by T²."""
    alpha: float = Field(0.5, ge=0, le=1)
    """Weight of the soft-target loss; 1 − alpha weighs the cross-entropy on the labels."""
    hidden_weight: float = Field(0.0, ge=0)
    """Weight of a cosine loss between the student's and the teacher's pooled features
    (DistilBERT's cosine loss); features of other widths go through a learned projection."""
    unlabelled: str | None = None
    """Inputs without labels, used for the soft-target loss only: a CSV/TSV/JSONL with the text
    (or image path) column, or a folder of images (flat, or in sub-folders whose names are not
    used)."""
    undistilled: bool = True
    """Baseline: the same student trained on the labels alone, with the same budget."""

    _paths = field_validator("teacher", "student", "unlabelled")(path_given)


class RegressionConfig(Section):
    loss: Literal["mse", "huber"] = "mse"
    huber_delta: float = Field(1.0, gt=0)
    """Huber loss threshold, in standard deviations of the training targets."""


class MultiTaskConfig(Section):
    weights: dict[str, float] = {}
    """Loss weight per label column (default 1 each); the losses are summed."""


class BaselineConfig(Section):
    """What the adapted model is compared with. The defaults are cheap (a few percent of a
    run): they answer "was the pretrained model worth its cost?" without a second training."""

    majority: bool = True
    """The task's constant prediction (majority class, training mean)."""
    classical: bool = True
    """A model without pretraining, as practitioners check first: TF-IDF word and character
    n-grams + logistic regression (text), logistic regression on downsampled pixels (images)."""
    probe: bool | Literal["auto"] = "auto"
    """A linear probe on the frozen pretrained model's pooled features; `auto`: for methods
    that change the pretrained weights (for `transfer` the probe is the run itself)."""
    scratch: bool = False
    """Also train the same architecture from random initialisation on the same data."""
    scratch_lr: float = Field(3e-4, gt=0)
    scratch_epochs: int | None = Field(None, ge=1)
    """The from-scratch budget in epochs; null: matched to the adapted run's compute
    (forward-pass FLOPs, training counted as 3×), at least one epoch."""
    base: bool = True
    """Language models: the pretrained model before adaptation, on the same held-out prompts
    (its exact-match score and loss)."""
    bootstrap: int = Field(1000, ge=100)


class DiffusionConfig(Section):
    """Teaching a text-to-image model a new concept from a few pictures (`task:
    text-to-image`)."""

    caption: str | None = None
    """Caption of every image that has none of its own (`metadata.jsonl` or `<image>.txt`);
    null: the method's prompt for the concept (`a photo of a <concept>`, `a photo of a sks
    shoe`). The concept's evidence is generated from this prompt."""
    class_word: str | None = None
    """What kind of thing the concept is, as a word the model knows (`shoe`, `dog`):
    Textual Inversion's initial embedding and DreamBooth's class noun. Bundled data names its
    own; other data must set it."""
    images: int | None = Field(None, ge=1)
    """Use only the first N images (by file name) of the folder; `bundled:sneakers`: 5."""
    repeats: int = Field(20, ge=1)
    """Copies of the concept's images in one epoch (diffusers' `--repeats`)."""
    lr: float | None = Field(None, gt=0)
    """Learning rate of what trains; null: the method's default."""
    judge: str = "auto"
    """An independent image classifier (a folder with judge.json) that scores generations;
    `auto`: the model's own `judge/` (the bundled model has one), `none`: no scores."""
    concept_class: str | None = None
    """The judge's class that the concept is; null: the data folder's name when it is one."""
    class_template: str = "a photo of a {}"
    """Prompt for each class the model already knew (prior preservation)."""
    eval_images: int = Field(32, ge=1)
    """Images generated per prompt for the evidence (concept and every known class)."""
    val_images: int = Field(8, ge=1)
    """Concept images generated per epoch to pick the best epoch (concept fidelity)."""
    sample_steps: int = Field(25, ge=1)
    """DDIM steps per generated image."""
    guidance: float | None = Field(None, ge=1)
    """Classifier-free guidance scale (1: none); null: the model's own (`guidance_scale` in
    its model_index.json, measured for the bundled model), else Stable Diffusion's 7.5."""

    _paths = field_validator("judge")(path_given)

    @field_validator("class_template")
    @classmethod
    def _one_class_placeholder(cls, value: str) -> str:
        problem = class_template_problem(value)
        if problem:
            raise ValueError(problem)
        return value


def class_template_problem(template: str) -> str | None:
    """Why `template` is not a prompt with exactly one plain `{}` for the class word (None
    when it is). Only `{}`: a name, index or attribute in the braces (`{x}`, `{0.__class__}`)
    would be looked up by `str.format`, which fails or reads attributes of the class word."""
    try:
        fields = [
            (name, spec, conversion)
            for _, name, spec, conversion in Formatter().parse(template)
            if name is not None
        ]
    except ValueError:  # a lone brace
        fields = []
    if fields == [("", "", None)]:
        return None
    return (
        "must hold exactly one {} where the class word goes (e.g. 'a photo of a {}'); "
        "write a literal brace as {{ or }}"
    )


class TextualInversionConfig(Section):
    token: str = "<concept>"
    """The new pseudo-word; prompts use it like any word."""
    vectors: int = Field(1, ge=1, le=8)
    """Embedding vectors for the token (`<concept>`, `<concept>_1`, … as diffusers loads them)."""


class DreamBoothConfig(Section):
    identifier: str = "sks"
    """The rare word bound to the subject: the concept is `<identifier> <class_word>`."""
    prior_weight: float = Field(1.0, ge=0)
    """w in mse_instance + w · mse_prior (Ruiz et al. 2022, eq. 2); 0: no prior preservation."""
    class_images: int = Field(50, ge=1)
    """Images of the class (`a photo of a <class_word>`) for the prior loss, generated once by
    the base model and cached (or the first N of `class_data`)."""
    class_data: str | None = None
    """A folder of class images to use instead of generating them."""
    _paths = field_validator("class_data")(path_given)
    train_text_encoder: bool = False
    """Also train the text encoder (full DreamBooth) or LoRA on it (dreambooth-lora)."""
    lora_targets: list[str] = ["to_q", "to_k", "to_v", "to_out.0"]
    """dreambooth-lora: the UNet layers LoRA adapts (its attention projections, as diffusers'
    DreamBooth LoRA script); rank, alpha and dropout come from `adapter`."""

    @field_validator("identifier")
    @classmethod
    def _identifier_not_blank(cls, value: str) -> str:
        # Without it the concept's prompt is the class prompt: the subject would be taught
        # as the whole class, against its own prior-preservation images.
        if not value.strip():
            raise ValueError("is empty; give a rare word that names the subject (e.g. sks)")
        return value


HYPERNETWORK_MAX_WEIGHTS = 64
"""The most weights one hypernetwork module may hold, in units of the context width squared
(its Linear layers: the sum of neighbouring `layer_structure` entries' products; [1, 2, 1]
holds 4, [1, 4, 4, 1] 24). 64 is 38 M weights at Stable Diffusion 1's width 768: larger only
exhausts memory ([1, 100000000, 1] would allocate terabytes)."""


def hypernetwork_size_problem(layer_structure: list[float]) -> str | None:
    """Why `layer_structure` is too large to build (None when it is not)."""
    weights = sum(a * b for a, b in pairwise(layer_structure))
    if weights <= HYPERNETWORK_MAX_WEIGHTS:
        return None
    return (
        f"is too large: its layers would hold {weights:,.2f}".removesuffix(".00")
        + f" × the context width² weights; the limit is {HYPERNETWORK_MAX_WEIGHTS} "
        "([1, 2, 1] holds 4, [1, 4, 4, 1] 24)"
    )


class HypernetworkConfig(Section):
    layer_structure: list[float] = [1.0, 2.0, 1.0]
    """Widths of the MLP's layers as multiples of the context width (the web UI's); at most
    `HYPERNETWORK_MAX_WEIGHTS` × width² weights in all."""
    activation: Literal["linear", "relu", "leakyrelu", "elu", "swish", "tanh", "sigmoid"] = "linear"
    layer_norm: bool = False
    dropout: float = Field(0.0, ge=0, lt=1)
    multiplier: float = Field(1.0, ge=0)
    """Strength, in training and generation: context + mlp(context) · multiplier (0 = the
    base model exactly)."""

    @field_validator("layer_structure")
    @classmethod
    def _not_too_large(cls, value: list[float]) -> list[float]:
        problem = hypernetwork_size_problem(value)
        if problem:
            raise ValueError(problem)
        return value


PLUGIN_GROUPS = ("tsuika.methods", "tsuika.tasks")
"""The entry-point groups of `tsuika.plugins`, whose parts may declare settings."""


@cache
def plugin_sections() -> dict[str, type[BaseModel]]:
    """The settings sections of installed plugins, by config key: a plugin's task or method
    class that declares `settings_model` (a pydantic model, documented per field) has its
    settings under its own name. Read from the entry points `tsuika.plugins` reads; a plugin
    that cannot be loaded, or takes a built-in key, has none here (`tsuika.plugins` names it)."""
    found: dict[str, type[BaseModel]] = {}
    for group in PLUGIN_GROUPS:
        for entry in sorted(entry_points(group=group), key=lambda e: e.name):
            if entry.name in Config.model_fields or entry.name in found:
                continue
            try:
                part = entry.load()
            except Exception:  # a broken plugin is reported where it is asked for
                continue
            section = getattr(part, "settings_model", None)
            if isinstance(section, type) and issubclass(section, BaseModel):
                found[entry.name] = section
    return found


class Config(Section):
    model_config = ConfigDict(extra="allow", validate_assignment=True, coerce_numbers_to_str=True)
    """Keys beyond the fields below are allowed only as plugins' settings sections
    (`plugin_sections`); any other is an unknown key, as in every section."""

    model: str = "minilm-l6"
    """A bundled name (`tsuika models`), a local Hugging Face model folder, or
    `timm:<name>` / `torchvision:<name>` with `model_weights`."""
    model_weights: str | None = None
    """Local weights file (safetensors, or a tensors-only .pth) for timm:/torchvision: models."""
    task: str = "auto"
    """`classify`, `multi-task` (several label columns, one head each), `regression`, or
    `causal-lm` (prompt → completion with a causal language model), `text-to-image` (teach a
    diffusion model a new concept from a few pictures); `auto`: classify, or
    multi-task when `data.label_column` lists several columns."""
    method: str = "auto"
    """`auto` (chosen from the data and said in one line: see `tsuika.methods.recipe`),
    `transfer`, `finetune`, `contrastive` (SetFit-style pairs), the PEFT methods `lora`,
    `dora`, `ia3` and (causal
    language models) `prompt-tuning`, `distill`, or (text-to-image) `textual-inversion`,
    `dreambooth`, `dreambooth-lora`, `hypernetwork` (see `tsuika.methods`)."""
    data: DataConfig = DataConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    adapter: AdapterConfig = AdapterConfig()
    regression: RegressionConfig = RegressionConfig()
    lm: LanguageModelConfig = LanguageModelConfig()
    multitask: MultiTaskConfig = MultiTaskConfig()
    distill: DistillConfig = DistillConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    textual_inversion: TextualInversionConfig = TextualInversionConfig()
    dreambooth: DreamBoothConfig = DreamBoothConfig()
    hypernetwork: HypernetworkConfig = HypernetworkConfig()
    head: HeadConfig = HeadConfig()
    train: TrainConfig = TrainConfig()
    baselines: BaselineConfig = BaselineConfig()
    track: Literal["none", "tensorboard", "mlflow"] = "none"
    """Experiment tracking through Accelerate's trackers, in local file stores: TensorBoard
    event files in `<run>/tensorboard`, or an MLflow SQLite store in
    `<output>/mlruns/mlflow.db`."""
    output: str = "runs"
    """Parent folder of run folders; a new run never overwrites an existing folder."""
    name: str | None = None
    """Run folder name (default: `<method>-<model>-<timestamp>`)."""
    seed: int = 0
    progress: bool = True
    report: bool = True
    """Write `report.html` when the run ends; false skips it (about half a second of charts
    per run: for sweeps of many small runs), and `tsuika report RUN` writes it later from
    the folder alone."""

    _paths = field_validator("model_weights", "output")(path_given)

    @field_validator("model")
    @classmethod
    def _model_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name a model (see `tsuika models`)")
        return value

    @model_validator(mode="after")
    def _plugin_settings(self) -> Config:
        """Each extra key is a plugin's section, validated by its model and kept as the
        mapping the user gave (so what the user set stays distinguishable from defaults)."""
        extra = self.__pydantic_extra__ or {}
        sections = plugin_sections() if extra else {}
        for key, given in extra.items():
            if key not in sections:
                raise PydanticCustomError("unknown_key", "unknown key", {"key": key})
            try:
                extra[key] = sections[key].model_validate(given).model_dump(exclude_unset=True)
            except ValidationError as err:
                problem = err.errors()[0]
                where = ".".join(str(part) for part in (key, *problem["loc"]))
                raise PydanticCustomError(
                    "plugin_setting",
                    "{problem}",
                    {"key": where, "problem": problem["msg"], "input": problem.get("input")},
                ) from None
        return self

    def part_settings(self, key: str) -> BaseModel:
        """A settings section by its key: a built-in one, or a plugin's (its defaults where
        the user set nothing)."""
        if key in type(self).model_fields:
            return getattr(self, key)
        section = plugin_sections().get(key)
        if section is None:
            raise TsuikaError(f"no settings section `{key}` (no installed part declares one)")
        return section.model_validate((self.__pydantic_extra__ or {}).get(key, {}))


GLOBAL_SECTIONS = ("data", "head", "train", "baselines")
"""Sections every run reads; the others belong to the tasks and methods that declare them
(`ReadsSettings.sections`)."""


class ReadsSettings:
    """What a task or a method (both are one) declares of the settings it reads."""

    name: ClassVar[str]
    sections: ClassVar[tuple[str, ...]] = ()
    """The config sections this part reads besides the global ones (`GLOBAL_SECTIONS`): a
    section the user sets that neither the run's method nor its task reads is named in a
    warning (it would change nothing)."""
    settings_model: ClassVar[type[BaseModel] | None] = None
    """A plugin part's own settings: a pydantic model, its section under the part's name
    (`plugin_sections`; read with `config.part_settings(name)`)."""

    @classmethod
    def config_sections(cls) -> tuple[str, ...]:
        """Every non-global section this part reads, its own plugin section included."""
        return cls.sections + ((cls.name,) if cls.settings_model is not None else ())


def unread_settings(config: Config, read: set[str]) -> list[str]:
    """The settings the user set (through YAML, the command line or the API) in sections
    that neither the run's method nor its task reads (`read`): they would change nothing."""
    user = config.model_dump(exclude_unset=True)
    return [
        f"{section}.{key}"
        for section, values in user.items()
        if isinstance(values, dict) and section not in GLOBAL_SECTIONS and section not in read
        for key in values
    ]


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise TsuikaError(f"config: `{key}` is a value, not a section, in override `{dotted}`")
        node = child
    node[keys[-1]] = value


def declared_type(dotted: str) -> Any:
    """The annotation of the config field at `a.b.c`, or None when no such field exists
    (the unknown key is then reported by validation, with its name)."""
    annotation: Any = Config
    for key in dotted.split("."):
        annotation = _field_of(annotation, key)
        if annotation is None:
            return None
    return annotation


def _field_of(annotation: Any, key: str) -> Any:
    for option in _options(annotation):
        if isinstance(option, type) and issubclass(option, BaseModel):
            field = option.model_fields.get(key)
            return field.annotation if field else None
        if get_origin(option) is dict:
            return get_args(option)[1]
    return None


def _options(annotation: Any) -> list[Any]:
    """The members of a union (`int | None` → [int, NoneType]), else [annotation]."""
    if get_origin(annotation) in (Union, UnionType):
        return list(get_args(annotation))
    return [annotation]


def _admits(annotation: Any, kinds: tuple[type, ...]) -> bool:
    for option in _options(annotation):
        origin = get_origin(option)
        if origin is Annotated:
            option = get_args(option)[0]
            origin = get_origin(option)
        if origin is Literal:
            if any(isinstance(value, kinds) for value in get_args(option)):
                return True
        elif (origin or option) in kinds or (
            isinstance(origin or option, type) and issubclass(origin or option, kinds)
        ):
            return True
    return False


def parse_value(dotted: str, raw: str) -> Any:
    """An override's text → a value for the key's declared type. Text fields keep the text
    exactly (`name=0x10` stays "0x10", `data.train=null` names a file called `null`); numbers
    and booleans are converted by validation; `[...]`/`{...}` are read as YAML flow lists
    and mappings for list/dict fields; `null`/`~` clears an optional non-text field."""
    annotation = declared_type(dotted)
    if annotation is None or (_admits(annotation, (str,)) and not _admits(annotation, (list,))):
        return raw
    text = raw.strip()
    if text.lower() in {"null", "~", "none", ""} and type(None) in _options(annotation):
        return None
    if text.startswith(("[", "{")) and _admits(annotation, (list, tuple, dict, BaseModel)):
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or "not a valid list or mapping"
            if "alias" in problem:  # `[*query]`: in YAML a bare `*` starts an alias
                problem += "; quote patterns that start with * (['*query', '*value'])"
            raise TsuikaError(
                f"override `{dotted}={raw}`: {problem} (write lists as [a, b], mappings as "
                "{key: value})"
            ) from None
    return raw


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`["train.lr=1e-4", "data.k=64"]` → nested dict. Each value is read by its key's
    declared type (`parse_value`), never as free YAML, so no text is silently reinterpreted."""
    tree: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise TsuikaError(f"override `{pair}` is not key=value (e.g. train.epochs=10)")
        key, raw = pair.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise TsuikaError(f"override `{pair}` has no key name before `=` (e.g. train.lr=1e-4)")
        set_dotted(tree, key, parse_value(key, raw))
    return tree


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise TsuikaError(f"config file {path} not found")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise TsuikaError(f"config file {path} is not valid YAML: {err}") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise TsuikaError(f"config file {path} must be a mapping of keys (model:, data:, ...)")
    return tree


def _explain(err: ValidationError, source: str) -> str:
    lines = []
    for problem in err.errors():
        key = ".".join(str(part) for part in problem["loc"])
        if problem["type"] in ("unknown_key", "plugin_setting"):
            key = problem["ctx"]["key"]
        if problem["type"] == "plugin_setting":
            given = problem["ctx"]["input"]
            lines.append(f"`{key}`: {problem['ctx']['problem']} (got {given!r})")
        elif problem["type"] in ("extra_forbidden", "unknown_key"):
            lines.append(f"unknown key `{key}` (check the spelling; see examples/*.yaml)")
        else:
            lines.append(f"`{key}`: {problem['msg']} (got {problem.get('input')!r})")
    return f"{source}: " + "; ".join(lines)


def build_config(tree: dict[str, Any], source: str = "config") -> Config:
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise TsuikaError(_explain(err, source)) from None


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
) -> Config:
    """Read YAML (optional), apply overrides (dotted strings or a nested dict), validate."""
    tree = read_yaml(path) if path else {}
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    tree = merge(tree, overrides or {})
    return build_config(tree, source=str(path) if path else "config")


def resolved(config: Config, *defaults: dict[str, Any], chosen: dict | None = None) -> Config:
    """The one way settings are decided. What the user set (`config`'s fields set: through
    YAML, the command line or the API) wins over `chosen` (a recipe's choices for this data),
    which wins over `defaults` — layers of nested settings, the least specific first (a
    method's) — which win over the global defaults. A value the user set counts even when it
    equals the global default (`--method dreambooth train.epochs=50` trains 50 epochs, not
    the method's 30). Values nobody set keep what they hold (the global default, or a value
    derived before: `updated`) where no layer names them.

    The result remembers the user's fields and `chosen`'s as set, so resolving it again (a
    method's `configured`, or the run's config.yaml on `--resume`) gives the same answer."""
    decided = merge(chosen or {}, config.model_dump(exclude_unset=True))
    tree = config.model_dump()
    for layer in defaults:
        tree = merge(tree, layer)
    out = build_config(merge(tree, decided))
    _set_fields(out, decided)
    return out


def updated(config: Config, changes: dict[str, Any]) -> Config:
    """`config` with nested `changes` (derived values, not the user's); what the user set
    stays exactly what was set."""
    out = build_config(merge(config.model_dump(), changes))
    _set_fields(out, config.model_dump(exclude_unset=True))
    return out


def _set_fields(section: BaseModel, user: dict[str, Any]) -> None:
    """Mark exactly the keys of `user` as set in `section` and in its nested sections."""
    section.__pydantic_fields_set__ = set(user) & set(type(section).model_fields)
    for name in type(section).model_fields:
        value = getattr(section, name)
        if isinstance(value, BaseModel):
            given = user.get(name)
            _set_fields(value, given if isinstance(given, dict) else {})


def to_yaml(config: Config) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
