"""A finished run: the trained model, its task and summary; predicts without the config or
the data it was trained on, and without importing any training code."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tsuika.config import DataConfig, load_config
from tsuika.data.images import decode_for_prediction
from tsuika.data.reading import read_examples
from tsuika.errors import TsuikaError
from tsuika.feed import Feed, input_feed
from tsuika.feed.cache import cache_boundary, frozen_pass_settings
from tsuika.model_kinds import CAUSAL_LM, IMAGE_ENCODER, TEXT_TO_IMAGE
from tsuika.models.base import AdaptableModel, State
from tsuika.models.causal import Decoding, generate
from tsuika.run_files import SUMMARY, read_summary
from tsuika.run_folder import load_model_folder
from tsuika.tasks.base import Arrays, Task
from tsuika.tasks.classify import Classify


def text_problem(text: object) -> str | None:
    """Why `text` cannot be a model's input (None when it can): empty, or not UTF-8 (bytes
    that are not, given on the command line, reach Python as lone surrogates, which no
    tokenizer encodes)."""
    if not isinstance(text, str) or not text.strip():
        return "is empty; give non-empty texts"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "has bytes that are not UTF-8; give it as UTF-8 text"
    return None


def read_inputs(model: AdaptableModel, inputs: list, data: DataConfig) -> list:
    """Texts stay texts (an empty one is refused); for image models, paths are decoded under
    the run's own `data.max_image_pixels` (a bad file is an error naming it)."""
    if model.model_kind != IMAGE_ENCODER:
        chat = model.model_kind == CAUSAL_LM
        for number, text in enumerate(inputs, start=1):
            if chat and isinstance(text, list) and text:  # chat messages
                continue
            problem = text_problem(text)
            if problem:
                raise TsuikaError(f"text {number} to predict {problem}")
        return list(inputs)
    return [decode_for_prediction(Path(path), data.max_image_pixels) for path in inputs]


class Run:
    """A trained model and its results; `tsuika.load(path)` gives the same object back."""

    def __init__(
        self,
        path: Path,
        model: AdaptableModel,
        task: Task,
        summary: dict,
        data: DataConfig | None = None,
    ):
        self.path = Path(path)
        self.model = model.eval()
        self.task = task
        self.summary = summary
        self.data = data or DataConfig()
        """The data settings the run was trained with (image size limits for new inputs)."""

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    @property
    def labels(self) -> list[str]:
        """The class names of a single-column classification run."""
        if not isinstance(self.task, Classify) or len(self.task.columns) != 1:
            raise TsuikaError(f"a {self.task.name} run has no single label set")
        return self.task.labels[self.task.columns[0]]

    def outputs(self, inputs: list) -> State:
        """The model's outputs for raw inputs (texts, or image paths), in their order."""
        if isinstance(inputs, str):
            inputs = [inputs]
        feed = input_feed(self.model, read_inputs(self.model, list(inputs), self.data))
        return self.task.gather(self.model, feed)

    def predicted(self, inputs: list) -> Arrays:
        return self.task.predictions(self.outputs(inputs))

    def predict(self, inputs: list) -> list:
        """A label per input (classify), a dict of labels (multi-task), a number
        (regression), or the greedy answer to each prompt (causal-lm)."""
        if isinstance(inputs, str):
            inputs = [inputs]
        if len(inputs) == 0:
            return []
        return self.task.predict(self.model, read_inputs(self.model, list(inputs), self.data))

    def describe(self, inputs: list) -> list[str]:
        """One line per input, for `tsuika predict`: label and probability, labels per
        column, a number, or the generated answer."""
        return self.task.describe_inputs(
            self.model, read_inputs(self.model, list(inputs), self.data)
        )

    def generate(self, prompts: list, decoding: Decoding | None = None) -> list[str]:
        """A causal-LM run's answer to each prompt (text, or chat messages): greedy by
        default, sampled with `Decoding(sample=True, temperature=…, top_p=…, seed=…)`."""
        if self.model.model_kind != CAUSAL_LM:
            hint = "use images()" if self.model.model_kind == TEXT_TO_IMAGE else "use predict"
            raise TsuikaError(f"a {self.task.name} run does not generate text; {hint}")
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = read_inputs(self.model, list(prompts), self.data)
        return generate(self.model, prompts, decoding or Decoding())

    def images(
        self,
        prompt: str,
        n: int = 8,
        seed: int = 0,
        steps: int | None = None,
        guidance: float | None = None,
    ):
        """`n` pictures of `prompt` from a text-to-image run, [n, C, S, S] in [0, 1]; picture i
        comes from seed `seed + i`'s noise (the same whatever `n` is). Steps and guidance
        default to the run's."""
        from tsuika.models.diffusion import generate as generate_images

        if self.model.model_kind != TEXT_TO_IMAGE:
            raise TsuikaError(f"a {self.task.name} run does not generate images")
        if n < 1 or (steps is not None and steps < 1):
            raise TsuikaError("the number of images and --steps must be at least 1")
        # The scheduler refuses more sampling steps than the noise schedule it was trained on.
        schedule = getattr(self.model.library.scheduler.config, "num_train_timesteps", None)
        if steps is not None and schedule is not None and steps > schedule:
            raise TsuikaError(f"--steps {steps}: at most {schedule} (the model's noise schedule)")
        settings = self.task.to_meta()
        return generate_images(
            self.model,
            [prompt] * n,
            list(range(seed, seed + n)),
            steps or settings["sample_steps"],
            settings["guidance"] if guidance is None else guidance,
        )

    def predict_proba(self, inputs: list) -> np.ndarray:
        """Class probabilities [N, classes] of a single-column classification run."""
        labels = self.labels
        if len(inputs) == 0:
            return np.zeros((0, len(labels)), dtype=np.float32)
        return self.task.probabilities(self.outputs(inputs))[self.task.columns[0]]

    def evaluate(self, data: str | Path, input_column: str | None = None) -> dict[str, float]:
        """The task's test metrics on a labelled file: a CSV/TSV/JSONL (text or `path`
        column, and the run's target columns), or an image folder; its labels must be ones
        the run knows."""
        settings = self.data.model_copy(update={"strict": True})
        if input_column:
            image = self.model.model_kind == IMAGE_ENCODER
            key = "image_column" if image else "text_column"
            settings = settings.model_copy(update={key: input_column})
        problems: list[str] = []
        raw = read_examples(
            self.model.model_kind, str(data), "test", settings, self.task.columns, problems
        )
        if problems:
            raise TsuikaError(f"{problems[0]} (fix or remove the file to evaluate)")
        examples = self.task.encode(raw)
        feed = input_feed(self.model, examples.inputs, self.task.targets(examples))
        outputs = self.task.gather(self.model, self._frozen_pass(feed))
        metrics = self.task.test_metrics(self.task.truth(examples), self.task.predictions(outputs))
        return {**metrics, "examples": len(examples)}

    def _frozen_pass(self, feed: Feed) -> Feed:
        """`feed` through the run's frozen part (the stages below the first that trained), read
        from the activation store when the run scored the same file or an earlier evaluation
        did; the feed as it is when nothing was frozen or the run keeps no passes."""
        trained = set(self.summary.get("parameters", {}).get("trained_groups", []))
        names = self.model.stage_names
        boundary = min((i for i, name in enumerate(names) if name in trained), default=0)
        config = self.path / "config.yaml"
        if boundary == 0 or not config.is_file():
            return feed
        settings = frozen_pass_settings(load_config(config).train)
        if settings.store is None:
            return feed
        return cache_boundary(self.model, feed, boundary, settings, "evaluate")


def load(path: str | Path) -> Run:
    """Open a run folder: predicts without the original config or data."""
    path = Path(path)
    if not path.is_dir():
        raise TsuikaError(f"run folder {path} not found")
    # No summary: a model folder copied on its own. One there is checked before the model
    # is built (export's model card reads it).
    summary_path = path / SUMMARY
    summary = read_summary(summary_path) if summary_path.is_file() else {}
    model, task, _ = load_model_folder(path / "model")
    return Run(path, model, task, summary, _data_settings(path / "config.yaml"))


def _data_settings(path: Path) -> DataConfig:
    """The run's `data` section; defaults when config.yaml is missing (a copied model)."""
    if not path.is_file():
        return DataConfig()
    return load_config(path).data
