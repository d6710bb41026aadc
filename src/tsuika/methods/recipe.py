"""`method: auto` — the method and settings a run gets when none is named, chosen from the
data (how many examples each class has, text or images) and said in one line.

The rules are measured, not assumed (bench/small_data.py; figures in bench/RESULTS.md), and
every choice is an ordinary config setting the user can override by naming a method.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import median

from tsuika.config import Config, updated
from tsuika.data.splits import Splits
from tsuika.methods import method_class
from tsuika.model_kinds import IMAGE_ENCODER
from tsuika.tasks.base import Task

SMALL_IMAGE = 64
"""Source images whose median shorter side is at most this many pixels are read at
`SMALL_IMAGE_INPUT` instead of the model's own size (28-px Fashion-MNIST: 0.851 at 224 px,
0.843 at 128 px, a third of the time)."""
SMALL_IMAGE_INPUT = 128
FEW_SHOT = 128
"""Up to this many examples in the smallest class, text classifiers learn from contrastive
pairs; above it, from the labels directly."""
LONGER_CONTRASTIVE = 32
"""From this many examples per class, contrastive training runs 16 epochs instead of 8.
Measured on the reviews over 3 seeds: at k = 64, 8 → 16 epochs 71.8 → 73.5 %; at k = 8 it
overfits the 16 sentences, 61.5 → 58.1 %. The boundary between 8 and 64 was not measured."""


@dataclass
class Recipe:
    method: str
    settings: dict
    """Config overrides (sections as nested dicts) that come with the method."""
    reason: str

    def applied(self, config: Config) -> Config:
        """The config with the recipe's method and settings, then the method's own defaults
        under them (`resolved`): what the user set still wins (`train.epochs=…`)."""
        chosen = updated(config, {"method": self.method})  # in place of `auto`
        return method_class(self.method).configured(chosen, self.settings)


def per_class(splits: Splits, task: Task) -> int:
    """Training examples of the rarest class (what few-shot methods scale with)."""
    labels = splits.train.targets[task.columns[0]]
    counts: dict = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    return min(counts.values()) if counts else 0


def image_side(splits: Splits) -> int:
    """Median shorter side of the training images, in pixels."""
    return int(median(min(image.shape[-2:]) for image in splits.train.inputs))


def choose(config: Config, task: Task, splits: Splits, model_kind: str) -> Recipe:
    declared = task.recipe()
    if declared is not None:
        method, reason = declared
        return Recipe(method, {}, reason)
    k = per_class(splits, task)
    if model_kind == IMAGE_ENCODER:
        return _images(config, splits, k)
    return _text(k)


def fixed_schedule(epochs: int, batch_size: int, backbone_lr: float, lr: float) -> dict:
    """`train` settings of a schedule run to its end: warmup then cosine decay, no early
    stopping, the last epoch kept (with a few examples, a validation split is too small to
    choose an epoch by; it still reports)."""
    return {
        "epochs": epochs,
        "batch_size": batch_size,
        "backbone_lr": backbone_lr,
        "lr": lr,
        "warmup": 0.1,
        "patience": None,
        "select": "last",
    }


def _text(k: int) -> Recipe:
    """Both schedules keep the embeddings frozen (their output is cached: half of MiniLM's
    parameters, and their AdamW update, leave every step) and start from a probe's head."""
    start = {"freeze": 1, "head_init": "probe"}
    if k <= FEW_SHOT:
        epochs = 8 if k < LONGER_CONTRASTIVE else 16
        method, schedule = "contrastive", fixed_schedule(epochs, 32, backbone_lr=1e-4, lr=1e-2)
        how = (
            "contrastive pairs as in SetFit, every pair of a batch from one pass, "
            f"{epochs} epochs of at least 128 examples"
        )
    else:
        method, schedule = "finetune", fixed_schedule(3, 16, backbone_lr=5e-5, lr=1e-3)
        how = "a probe's head, then fine-tuning above the embeddings, 3 epochs"
    reason = f"{k} examples in the smallest class: {how}, the last kept"
    return Recipe(method, {"finetune": start, "train": schedule}, reason)


def _images(config: Config, splits: Splits, k: int) -> Recipe:
    """Every layer fine-tuned from a probe's head, BatchNorm statistics frozen (batches of 32
    from a new domain would otherwise train against statistics evaluation never uses)."""
    settings: dict = {
        "finetune": {"freeze": 0, "head_init": "probe", "batchnorm": "frozen"},
        "train": fixed_schedule(4, 32, backbone_lr=3e-4, lr=1e-3),
    }
    why = [
        f"{k} images in the smallest class: a probe's head, then every layer fine-tuned "
        "(BatchNorm statistics frozen), 4 epochs, the last kept"
    ]
    side = image_side(splits)
    if config.data.image_size is None and side <= SMALL_IMAGE:
        settings["data"] = {"image_size": SMALL_IMAGE_INPUT}
        why.append(f"{side}-px images read at {SMALL_IMAGE_INPUT} px")
    return Recipe("finetune", settings, "; ".join(why))
