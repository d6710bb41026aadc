"""Text-to-image: teach a diffusion model a new concept from a few captioned pictures.

Training minimises the denoising MSE of the model's `unet` stage (ε or v target; the stage
draws ε and the timestep, see `tsuika.models.diffusion`). The evidence is generated, not
read: the test split is prompts — the concept's own prompt and `class_template` of every
class the model already knew, `eval_images` seeds each — whose images an independent
classifier (the judge) labels:

    concept fidelity     share of the concept's images that the judge calls the concept
    prior preservation   mean over the known classes of the share judged as that class

Validation each epoch is the denoising loss of the training images at fixed noise, and the
concept fidelity of `val_images` generations from seeds the test never uses; the best epoch
is the one with the highest fidelity (without a judge: the lowest loss). The baseline is the
model before adaptation, given the same prompts and seeds, so every difference is paired.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tsuika.config import Config, DataConfig, class_template_problem
from tsuika.data.captioned import DEFAULT_CONCEPT, concept_class_of, read_captioned_images
from tsuika.data.splits import Examples, Splits
from tsuika.errors import TsuikaError
from tsuika.feed import Feed
from tsuika.model_kinds import TEXT_TO_IMAGE
from tsuika.models.base import AdaptableModel, State
from tsuika.models.diffusion import (
    generate,
    judge_at,
    recommended_guidance,
    resolve_diffusion_source,
)
from tsuika.models.judge import ImageJudge
from tsuika.tasks.base import Arrays, Task

VALIDATION_SEED = 1_000_000
"""Seeds of validation generations start here; test generations use 0, 1, 2, …"""
NOT_JUDGED = -1


class TextToImage(Task):
    name = "text-to-image"
    model_kinds = frozenset({TEXT_TO_IMAGE})
    baselines = ("base",)
    sections = ("diffusion",)
    forgetting = None  # what a concept costs the model is judged by its class images instead
    no_export = (
        "the files in its model/ folder already load without tsuika (see the README's "
        "text-to-image methods)"
    )
    inference_batch = 64

    @classmethod
    def recipe(cls) -> tuple[str, str] | None:
        return (
            "dreambooth",
            "text-to-image: DreamBooth with prior preservation (the most faithful of the four "
            "concept methods on the bundled model)",
        )

    gain_unit = "fidelity points"
    gain_scale = 100.0

    def __init__(self, settings: dict[str, Any]) -> None:
        super().__init__(["class"])
        self.settings = dict(settings)
        self.judge: ImageJudge | None = judge_at(settings["judge"]) if settings["judge"] else None
        judged = self.judge is not None
        self.selection = "concept_fidelity" if judged else "loss"
        self.higher_is_better = judged
        self.shown = ("concept_fidelity", "prior_preservation") if judged else ("loss",)

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: Config) -> TextToImage:
        settings = config.diffusion
        if settings.caption is None:
            raise TsuikaError("text-to-image needs diffusion.caption (the concept's prompt)")
        _, folder = resolve_diffusion_source(config.model)
        judge: Path | None = None
        if settings.judge == "auto":
            judge = folder / "judge" if (folder / "judge" / "judge.json").is_file() else None
        elif settings.judge != "none":
            judge = Path(settings.judge).expanduser()
            if not (judge / "judge.json").is_file():
                raise TsuikaError(
                    f"diffusion.judge: {judge} is not a judge folder (no judge.json); "
                    "give one, or auto / none"
                )
        concept = None
        if judge is not None:
            classes = ImageJudge.classes_at(judge)
            concept = settings.concept_class or concept_class_of(config.data.train, classes)
            if concept not in classes:
                raise TsuikaError(
                    f"diffusion.concept_class {concept!r} is not a class of the judge "
                    f"({', '.join(classes)}); name the class the concept is"
                )
        return cls(
            {
                "source": config.model,
                "judge": str(judge) if judge is not None else None,
                "concept_class": concept,
                "prompt": settings.caption,
                "images": settings.images,
                "repeats": settings.repeats,
                "class_template": settings.class_template,
                "eval_images": settings.eval_images,
                "val_images": settings.val_images,
                "sample_steps": settings.sample_steps,
                "guidance": (
                    recommended_guidance(folder) if settings.guidance is None else settings.guidance
                ),
            }
        )

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> TextToImage:
        return cls({k: v for k, v in meta.items() if k != "name"})

    def to_meta(self) -> dict[str, Any]:
        return {"name": self.name, **self.settings}

    @classmethod
    def meta_problem(cls, meta: dict[str, Any]) -> str | None:
        for key in ("source", "prompt", "class_template"):
            if not isinstance(meta.get(key), str):
                return f"`{key}` is not a string"
        template = class_template_problem(meta["class_template"])
        if template:
            return f"`class_template` {template}"
        for key in ("eval_images", "val_images", "sample_steps"):
            value = meta.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                return f"`{key}` is not a positive integer"
        if not isinstance(meta.get("guidance"), int | float):
            return "`guidance` is not a number"
        if meta.get("judge") is not None and not isinstance(meta["judge"], str):
            return "`judge` is not a folder"
        return None

    # -- data ------------------------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        return self.judge.classes if self.judge is not None else []

    @property
    def known_classes(self) -> list[str]:
        return [c for c in self.classes if c != self.settings["concept_class"]]

    def concept_splits(self, data: DataConfig) -> Splits:
        """Train: the concept's images with their captions. Validation: the same images (a
        handful of pictures leaves none to hold out; what validation adds is fidelity on
        fresh seeds). Test: the evaluation prompts."""
        problems: list[str] = []
        raw = read_captioned_images(
            data.train or DEFAULT_CONCEPT,
            self.settings["prompt"],
            self.settings["images"],
            data.max_image_pixels,
            problems,
        )
        if data.strict and problems:
            raise TsuikaError(f"{problems[0]} (data.strict is on; fix or remove the file)")
        train = self.encode(raw)
        repeats = self.settings["repeats"]
        repeated = train.subset([i for _ in range(repeats) for i in range(len(train))])
        notes = [
            f"{len(train)} images of the concept, {repeats} times per epoch; validation is the "
            "same images (denoising loss at fixed noise) and "
            f"{self.settings['val_images']} generations on fresh seeds",
        ]
        return Splits(repeated, train, self.encode(self.evaluation()), notes, problems)

    def checked_splits(self, splits: Splits) -> Splits:
        """Only the concept's pictures, once each (the validation split). By design the
        training split repeats them, validation is the same pictures (a handful leaves none
        to hold out) and the test split is prompts this task wrote, each for several seeds:
        none of that is a duplicate or a leak of the user's data."""
        nothing = splits.val.subset([])
        return Splits(splits.val, nothing, nothing, splits.notes, splits.skipped)

    def evaluation(self) -> Examples:
        """The test split: the concept's prompt and every known class's, `eval_images` seeds
        each (the same seeds for every prompt and for the baseline)."""
        n = self.settings["eval_images"]
        prompts = [(self.settings["prompt"], self.settings["concept_class"])]
        template = self.settings["class_template"]
        prompts += [(template.format(c), c) for c in self.known_classes]
        inputs = [p for p, _ in prompts for _ in range(n)]
        classes = [c for _, c in prompts for _ in range(n)]
        seeds = [s for _ in prompts for s in range(n)]
        names = [f"{p} (seed {s})" for p, s in zip(inputs, seeds, strict=True)]
        return Examples(inputs, {"class": classes, "seed": seeds}, "evaluation prompts", [], names)

    def encode(self, raw: Examples, problems: list[str] | None = None) -> Examples:
        """Class names → the judge's indices; captioned images are the concept."""
        n = len(raw)
        classes = raw.targets.get("class", [self.settings["concept_class"]] * n)
        index = {c: i for i, c in enumerate(self.classes)}
        targets = {
            "class": [index.get(c, NOT_JUDGED) for c in classes],
            "seed": list(raw.targets.get("seed", range(n))),
        }
        return Examples(raw.inputs, targets, raw.source, raw.lines, raw.names)

    def targets(self, examples: Examples) -> dict[str, torch.Tensor]:
        return {
            "class": torch.tensor(examples.targets["class"], dtype=torch.long),
            "seed": torch.tensor(examples.targets["seed"], dtype=torch.long),
            "prior": torch.zeros(len(examples)),
        }

    def truth(self, examples: Examples) -> Arrays:
        return {"class": np.asarray(examples.targets["class"])}

    # -- training and validation -----------------------------------------------------------
    def losses(self, outputs: State, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        """Denoising MSE of every example, [B] (zero for generated outputs)."""
        if "prediction" not in outputs:
            return torch.zeros(len(targets["class"]))
        error = (outputs["prediction"].float() - outputs["target"].float()) ** 2
        return error.flatten(1).mean(1)

    def sums(
        self, outputs: State, targets: dict[str, torch.Tensor], loss: torch.Tensor | None = None
    ) -> dict[str, float]:
        n = len(targets["class"])
        return {"n": float(n), "loss": self.loss_sum(outputs, targets, loss)}

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        metrics = {"loss": sums.get("loss", 0.0) / max(sums.get("n", 0.0), 1.0)}
        if "fidelity_n" in sums:
            metrics["concept_fidelity"] = sums["fidelity_hits"] / sums["fidelity_n"]
        return metrics

    def evaluate(self, model: nn.Module, feed: Feed) -> dict[str, float]:
        """The denoising loss at fixed noise (a forked generator, so training's draws are
        untouched) and, with a judge, the fidelity of `val_images` fresh generations."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(VALIDATION_SEED)
            metrics = super().evaluate(model, feed)
        if self.judge is not None:
            n = self.settings["val_images"]
            seeds = list(range(VALIDATION_SEED, VALIDATION_SEED + n))
            classes = self._judged(model, [self.settings["prompt"]] * n, seeds)
            wanted = self.classes.index(self.settings["concept_class"])
            metrics["concept_fidelity"] = float((classes == wanted).float().mean())
        return metrics

    # -- generation and test metrics -------------------------------------------------------
    def _generated(self, model: nn.Module, prompts: list[str], seeds: list[int]) -> torch.Tensor:
        return generate(
            model,
            prompts,
            seeds,
            self.settings["sample_steps"],
            self.settings["guidance"],
            self.inference_batch,
        )

    def _judged(self, model: nn.Module, prompts: list[str], seeds: list[int]) -> torch.Tensor:
        images = self._generated(model, prompts, seeds)
        return self.judge.classify(images * 2 - 1)

    def gather(self, model: nn.Module, feed: Feed) -> State:
        """Generate every test prompt's image from its seed, and the judge's class of it."""
        seeds = feed.targets["seed"].tolist()
        images = self._generated(model, [str(p) for p in feed.inputs], seeds)
        outputs = {"images": (images * 255).round().to(torch.uint8)}
        if self.judge is not None:
            outputs["class"] = self.judge.classify(images * 2 - 1)
        return outputs

    def predictions(self, outputs: State) -> Arrays:
        if "class" not in outputs:
            return {"class": np.full(len(outputs["images"]), NOT_JUDGED)}
        return {"class": outputs["class"].numpy()}

    def _concept_rows(self, truth: Arrays) -> np.ndarray:
        concept = self.classes.index(self.settings["concept_class"]) if self.judge else None
        return truth["class"] == concept

    def per_example(self, truth: Arrays, predicted: Arrays) -> np.ndarray:
        """Hits on the concept's rows scaled by N / N_concept (0 elsewhere): their mean is
        the concept fidelity, so the paired bootstrap resamples it."""
        rows = self._concept_rows(truth)
        hits = (predicted["class"] == truth["class"]) & rows
        return hits * (len(rows) / max(int(rows.sum()), 1))

    def test_metrics(self, truth: Arrays, predicted: Arrays) -> dict[str, float]:
        if self.judge is None:
            return {"loss": math.nan}
        hits = predicted["class"] == truth["class"]
        rows = self._concept_rows(truth)
        per_class = {
            self.classes[k]: float(hits[truth["class"] == k].mean())
            for k in sorted(set(truth["class"][~rows].tolist()))
        }
        return {
            "concept_fidelity": float(hits[rows].mean()),
            "prior_preservation": float(np.mean(list(per_class.values()))),
            **{f"accuracy/{name}": value for name, value in per_class.items()},
        }

    def decoded(self, predicted: Arrays) -> list:
        return [self.classes[k] if k != NOT_JUDGED else None for k in predicted["class"]]

    def describe(self, predicted: Arrays, row: int, outputs: State | None = None) -> str:
        return str(self.decoded(predicted)[row])

    def predict(self, model: AdaptableModel, inputs: list) -> list:
        raise TsuikaError("a text-to-image run generates images: use `tsuika generate RUN PROMPT`")

    def gain_number(self, gain: float) -> str:
        return f"{self.gain_scale * gain:+.1f}"
