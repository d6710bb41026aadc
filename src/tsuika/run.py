"""A finished run: the trained model, its labels and summary; predicts without the config or
the data it was trained on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tsuika.adapt import input_feed
from tsuika.config import DataConfig, load_config
from tsuika.data.images import decode_for_prediction, list_images
from tsuika.data.splits import Examples
from tsuika.data.tables import read_table, resolve
from tsuika.errors import TsuikaError
from tsuika.evaluate.metrics import classification_metrics
from tsuika.models.base import AdaptableModel
from tsuika.runs import load_model_folder
from tsuika.train.loop import predict_probs


def read_inputs(model: AdaptableModel, inputs: list, data: DataConfig) -> list:
    """Texts stay texts (an empty one is refused); for image models, paths are decoded under
    the run's own `data.max_image_pixels` (a bad file is an error naming it)."""
    if model.spec.get("family") != "image":
        for number, text in enumerate(inputs, start=1):
            if not isinstance(text, str) or not text.strip():
                raise TsuikaError(f"text {number} to predict is empty; give non-empty texts")
        return list(inputs)
    return [decode_for_prediction(Path(path), data.max_image_pixels) for path in inputs]


class Run:
    """A trained model and its results; `tsuika.load(path)` gives the same object back."""

    def __init__(
        self,
        path: Path,
        model: AdaptableModel,
        labels: list[str],
        summary: dict,
        data: DataConfig | None = None,
    ):
        self.path = Path(path)
        self.model = model.eval()
        self.labels = labels
        self.summary = summary
        self.data = data or DataConfig()
        """The data settings the run was trained with (image size limits for new inputs)."""

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    def predict_proba(self, inputs: list[str]) -> np.ndarray:
        if isinstance(inputs, str):
            inputs = [inputs]
        if len(inputs) == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        examples = Examples(read_inputs(self.model, inputs, self.data), [0] * len(inputs))
        return predict_probs(self.model, input_feed(self.model, examples)).numpy()

    def predict(self, inputs: list[str]) -> list[str]:
        return [self.labels[i] for i in self.predict_proba(inputs).argmax(-1)]

    def evaluate(
        self, data: str | Path, text_column: str = "text", label_column: str = "label"
    ) -> dict[str, float]:
        """Accuracy and macro-F1 on a labelled file (its labels must be known to the run);
        for image runs, an image folder or a CSV/JSONL of `path,label`."""
        if self.model.spec.get("family") == "image":
            return self._evaluate_images(str(data))
        table = read_table(resolve(str(data), "test"), text_column, label_column)
        index = {name: i for i, name in enumerate(self.labels)}
        for label, line in zip(table.labels, table.lines, strict=True):
            if label not in index:
                raise TsuikaError(
                    f"{data} line {line}: label `{label}` is not one this run was trained on "
                    f"({', '.join(self.labels)})"
                )
        truth = np.array([index[label] for label in table.labels])
        predicted = self.predict_proba(table.texts).argmax(-1)
        return {**classification_metrics(truth, predicted), "examples": len(truth)}

    def _evaluate_images(self, data: str) -> dict[str, float]:
        listing = list_images(data, "test", self.data.model_copy(update={"strict": True}))
        unknown = sorted(set(listing.labels) - set(self.labels))
        if unknown:
            raise TsuikaError(
                f"{data}: class `{unknown[0]}` is not one this run was trained on "
                f"({', '.join(self.labels)})"
            )
        index = {name: i for i, name in enumerate(self.labels)}
        truth = np.array([index[label] for label in listing.labels])
        predicted = self.predict_proba([str(p) for p in listing.paths]).argmax(-1)
        return {**classification_metrics(truth, predicted), "examples": len(truth)}


def load(path: str | Path) -> Run:
    """Open a run folder: predicts without the original config or data."""
    path = Path(path)
    if not path.is_dir():
        raise TsuikaError(f"run folder {path} not found")
    model, labels, _ = load_model_folder(path / "model")
    summary_path = path / "summary.json"
    try:
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    except (ValueError, UnicodeDecodeError):
        raise TsuikaError(f"{summary_path} is not valid JSON; the run folder is damaged") from None
    return Run(path, model, labels, summary, _data_settings(path / "config.yaml"))


def _data_settings(path: Path) -> DataConfig:
    """The run's `data` section; defaults when config.yaml is missing (a copied model)."""
    if not path.is_file():
        return DataConfig()
    return load_config(path).data
