"""Prompt → completion with a causal language model (`task: causal-lm`).

The loss is next-token cross-entropy on the completion's tokens only (the prompt is context,
not something to learn), averaged per token. The score is **exact match under greedy
decoding**, computed without generating: greedy decoding reproduces a completion exactly if
and only if, fed the prompt and the completion so far, the model's most likely next token is
the completion's next token at every position, end-of-sequence token included — which one
teacher-forced pass shows. So validation and test cost one forward pass, and the number is the
same one `tsuika generate` would give. Token accuracy and per-token loss (perplexity) are
reported beside it; the baseline is the pretrained model before adaptation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from tsuika.config import Config
from tsuika.data.splits import Examples
from tsuika.errors import TsuikaError
from tsuika.model_kinds import CAUSAL_LM
from tsuika.models import resolve_source
from tsuika.models.base import AdaptableModel, State
from tsuika.models.causal import (
    Decoding,
    Tokens,
    as_text,
    chat_template,
    example_tokens,
    generate,
    tokenizer_for,
)
from tsuika.tasks.base import METRIC_TITLES, Arrays, Task

IGNORE = -100
"""Label of a position that is not learned (prompt, padding), as in transformers."""


def shifted(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits at positions 0…T−2 and the tokens they predict, 1…T−1; `labels` may be
    wider than the batch (padded to the longest example of the split)."""
    length = logits.shape[1]
    return logits[:, :-1].float(), labels[:, 1:length]


@dataclass
class Learned:
    """The learned positions of a batch, packed: their logits [N, vocabulary], the tokens
    they should predict [N], the example each belongs to [N], and where they are, [B, T−1]
    (position t predicts token t + 1)."""

    logits: torch.Tensor
    wanted: torch.Tensor
    rows: torch.Tensor
    where: torch.Tensor

    @classmethod
    def of(cls, outputs: State, labels: torch.Tensor) -> Learned:
        if "predict" in outputs:  # the model computed logits at these positions only
            where = outputs["predict"].bool()[:, :-1]
            wanted = labels[:, 1 : where.shape[1] + 1][where]
            logits = outputs["logits"].float()
        else:  # full [B, T, vocabulary] logits
            predicting, following = shifted(outputs["logits"], labels)
            where = following != IGNORE
            wanted, logits = following[where], predicting[where]
        return cls(logits, wanted, where.nonzero()[:, 0], where)

    def losses(self) -> torch.Tensor:
        """Cross-entropy of every learned position, [N]."""
        return nn.functional.cross_entropy(self.logits, self.wanted, reduction="none")

    def per_example(self, values: torch.Tensor) -> torch.Tensor:
        """Sum of `values` [N] per example, [B]."""
        total = torch.zeros(len(self.where), dtype=values.dtype, device=values.device)
        return total.index_add(0, self.rows, values)

    def spread(self, values: torch.Tensor, fill: float) -> torch.Tensor:
        """`values` [N] back at their positions, [B, T−1]; `fill` elsewhere."""
        full = torch.full(self.where.shape, fill, dtype=values.dtype, device=values.device)
        full[self.where] = values
        return full


class CausalLM(Task):
    name = "causal-lm"
    model_kinds = frozenset({CAUSAL_LM})
    selection = "exact_match"
    higher_is_better = True
    shown = ("exact_match", "token_accuracy", "loss")
    metric_titles: ClassVar[dict[str, str]] = {
        **METRIC_TITLES,
        "exact_match": "exact match",
        "token_accuracy": "token accuracy",
        "loss": "loss per token",
    }
    baselines = ("base",)
    sections = ("lm",)
    forgetting = "loss"
    export_forms = ("hf",)
    no_export = "a causal LM exports as one merged Hugging Face folder"
    inference_batch = 16

    @classmethod
    def recipe(cls) -> tuple[str, str] | None:
        return "lora", "causal language model: LoRA adapters (PEFT)"

    """Logits are [batch, tokens, vocabulary]: 16 × 80 × 49,152 floats is 250 MB."""
    gain_unit = "exact-match points"
    gain_scale = 100.0

    def __init__(
        self, source: str, template: str = "auto", max_length: int = 128, max_new_tokens: int = 32
    ) -> None:
        super().__init__(["completion"])
        self.source = source
        self.template = template
        self.max_length = max_length
        self.max_new_tokens = max_new_tokens

    @classmethod
    def from_config(cls, config: Config) -> CausalLM:
        return cls(
            config.model,
            config.lm.template,
            config.train.max_length or 128,
            config.lm.max_new_tokens,
        )

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> CausalLM:
        return cls(meta["source"], meta["template"], meta["max_length"], meta["max_new_tokens"])

    def to_meta(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "template": self.template,
            "max_length": self.max_length,
            "max_new_tokens": self.max_new_tokens,
        }

    @classmethod
    def meta_problem(cls, meta: dict[str, Any]) -> str | None:
        if not isinstance(meta.get("source"), str) or not meta["source"]:
            return "`source` is not a model name"
        if meta.get("template") not in ("auto", "chat", "plain"):
            return "`template` is not auto, chat or plain"
        for key in ("max_length", "max_new_tokens"):
            value = meta.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                return f"`{key}` is not a positive integer"
        return None

    @cached_property
    def tokenizer(self) -> Any:
        _, folder = resolve_source(self.source)
        return tokenizer_for(folder)

    # -- data ------------------------------------------------------------------------------
    def encode(self, raw: Examples, problems: list[str] | None = None) -> Examples:
        """Prompts and completions → `Tokens` (the inputs); the texts stay as targets."""
        chat = chat_template(self.tokenizer, self.template)
        tokens = [
            example_tokens(self.tokenizer, prompt, completion, chat, self.max_length)
            for prompt, completion in zip(raw.inputs, raw.targets["completion"], strict=True)
        ]
        names = [as_text(prompt) for prompt in raw.inputs]
        return Examples(tokens, dict(raw.targets), raw.source, raw.lines, names)

    def fit(self, train: Examples) -> None:
        if len(train) < 2:
            raise TsuikaError(f"{train.source}: at least two training examples are needed")

    def labels(self, examples: Examples) -> torch.Tensor:
        """[N, longest] token ids to predict: the completion's, IGNORE elsewhere."""
        tokens: list[Tokens] = examples.inputs
        longest = max((len(t.ids) for t in tokens), default=1)
        labels = torch.full((len(tokens), longest), IGNORE, dtype=torch.long)
        for row, t in enumerate(tokens):
            labels[row, t.prompt_tokens : len(t.ids)] = torch.tensor(t.ids[t.prompt_tokens :])
        return labels

    def targets(self, examples: Examples) -> dict[str, torch.Tensor]:
        return {"labels": self.labels(examples)}

    def units(self, examples: Examples) -> list[float]:
        """Loss units are completion tokens: a batch's loss is its mean per token."""
        return [float(len(t.ids) - t.prompt_tokens) for t in examples.inputs]

    def truth(self, examples: Examples) -> Arrays:
        return {"completion": self.labels(examples).numpy()}

    # -- training and validation -----------------------------------------------------------
    def inputs(self, state: State, targets: dict[str, torch.Tensor]) -> State:
        """With labels, the model computes next-token logits only where a completion token
        follows (`predict`): about 3 of 75 positions per example on the bundled data."""
        if "labels" not in targets:
            return state
        length = state["attention_mask"].shape[1]
        predict = torch.zeros(state["attention_mask"].shape, dtype=torch.bool)
        predict[:, :-1] = targets["labels"][:, 1:length] != IGNORE
        return {**state, "predict": predict.to(state["attention_mask"].device)}

    def losses(self, outputs: State, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean loss per completion token of each example, [B]."""
        if "token_loss" in outputs:  # gathered outputs (see `kept`)
            losses, learned = outputs["token_loss"], outputs["tokens"] != IGNORE
            return (losses * learned).sum(1) / learned.sum(1).clamp(min=1)
        learned = Learned.of(outputs, targets["labels"])
        counts = learned.per_example(torch.ones_like(learned.wanted, dtype=torch.float))
        return learned.per_example(learned.losses()) / counts.clamp(min=1)

    def divergence(
        self, outputs: State, reference: State, targets: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """Mean KL(reference ‖ outputs) of the next-token distributions over the batch's
        completion tokens: how far the model has moved from a reference model's predictions
        (learning without forgetting, with the pretrained model as the reference)."""
        moved = Learned.of(outputs, targets["labels"]).logits.log_softmax(-1)
        before = Learned.of(reference, targets["labels"]).logits.log_softmax(-1)
        return nn.functional.kl_div(moved, before, log_target=True, reduction="batchmean")

    def loss(self, outputs: State, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean over the batch's completion tokens (each token weighs the same)."""
        learned = Learned.of(outputs, targets["labels"])
        return learned.losses().sum() / max(len(learned.wanted), 1)

    def sums(
        self,
        outputs: State,
        targets: dict[str, torch.Tensor],
        loss: torch.Tensor | None = None,
    ) -> dict[str, float]:
        with torch.no_grad():
            learned = Learned.of(outputs, targets["labels"])
            tokens = len(learned.wanted)
            if loss is not None:  # a training step's mean: no second cross-entropy
                total = loss.detach().item() * tokens
            else:
                total = learned.losses().sum().item()
            right = learned.logits.argmax(-1) == learned.wanted
            wrong = learned.per_example((~right).float())
            return {
                "n": float(len(learned.where)),
                "tokens": float(tokens),
                "loss": total,
                "correct_tokens": float(right.sum().item()),
                "exact": float((wrong == 0).sum().item()),
            }

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        tokens = max(sums.get("tokens", 0.0), 1.0)
        loss = sums.get("loss", 0.0) / tokens
        return {
            "loss": loss,
            "perplexity": math.exp(min(loss, 50.0)),
            "token_accuracy": sums.get("correct_tokens", 0.0) / tokens,
            "exact_match": sums.get("exact", 0.0) / max(sums.get("n", 0.0), 1.0),
        }

    def kept(self, outputs: State, targets: dict[str, torch.Tensor]) -> State:
        """What a gathered pass keeps of [B, T, vocabulary] logits: at every learned position
        the greedy next token (IGNORE elsewhere) and its loss, [B, L−1] each, where L is the
        width of the split's labels (so every batch's rows have one shape). Prompts alone
        (no labels) keep the logits of the first answer token."""
        if "labels" not in targets:
            last = outputs["attention_mask"].sum(1).long() - 1
            rows = torch.arange(len(last))
            return {"next_token_logits": outputs["logits"][rows, last]}
        learned = Learned.of(outputs, targets["labels"])
        tokens = learned.spread(learned.logits.argmax(-1), IGNORE)
        losses = learned.spread(learned.losses(), 0.0)
        extra = targets["labels"].shape[1] - 1 - tokens.shape[1]
        return {
            "tokens": nn.functional.pad(tokens, (0, extra), value=IGNORE),
            "token_loss": nn.functional.pad(losses, (0, extra)),
        }

    # -- predictions and test metrics ------------------------------------------------------
    def predictions(self, outputs: State) -> Arrays:
        """Greedy next tokens at the completion's positions (aligned with `truth`, whose
        first column is never learned), and their losses."""
        tokens, losses = outputs["tokens"].numpy(), outputs["token_loss"].numpy()
        pad = np.full((len(tokens), 1), IGNORE)
        return {
            "completion": np.concatenate([pad, tokens], axis=1),
            "loss": np.concatenate([np.zeros_like(pad, dtype=losses.dtype), losses], axis=1),
        }

    @staticmethod
    def _aligned(truth: Arrays, predicted: Arrays) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Truth, greedy tokens and losses, one width: `kept` pads to the labels' width."""
        return truth["completion"], predicted["completion"], predicted["loss"]

    def per_example(self, truth: Arrays, predicted: Arrays) -> np.ndarray:
        wanted, guess, _ = self._aligned(truth, predicted)
        learned = wanted != IGNORE
        return np.all((guess == wanted) | ~learned, axis=1).astype(float)

    def test_metrics(self, truth: Arrays, predicted: Arrays) -> dict[str, float]:
        wanted, guess, losses = self._aligned(truth, predicted)
        learned = wanted != IGNORE
        tokens = max(int(learned.sum()), 1)
        loss = float((losses * learned).sum() / tokens)
        return {
            "exact_match": float(self.per_example(truth, predicted).mean()),
            "token_accuracy": float(((guess == wanted) & learned).sum() / tokens),
            "loss": loss,
            "perplexity": math.exp(min(loss, 50.0)),
        }

    def decoded(self, predicted: Arrays) -> list:
        """The completion tokens as text. For predictions these are the greedy next tokens
        given the true completion so far: equal to the generated answer when it is an exact
        match, and up to its first wrong token otherwise."""
        return [
            self.tokenizer.decode(
                [int(t) for t in row if t != IGNORE], skip_special_tokens=True
            ).strip()
            for row in predicted["completion"]
        ]

    def describe(self, predicted: Arrays, row: int, outputs: State | None = None) -> str:
        return self.decoded({"completion": predicted["completion"][row : row + 1]})[0]

    def predict(self, model: AdaptableModel, inputs: list) -> list:
        """Generation: each prompt's greedy answer."""
        return generate(model, inputs, Decoding(max_new_tokens=self.max_new_tokens))

    def describe_inputs(self, model: AdaptableModel, inputs: list) -> list[str]:
        return [answer.replace("\n", " ") for answer in self.predict(model, inputs)]

    def gain_number(self, gain: float) -> str:
        return f"{self.gain_scale * gain:+.1f}"
