"""Knowledge distillation: a small student learns from a trained teacher (Hinton, Vinyals &
Dean 2015, arXiv:1503.02531).

Per example the student's loss is

    alpha · T² · KL(softmax(z_t / T) ‖ softmax(z_s / T)) + (1 − alpha) · CE(z_s, y)
        [+ hidden_weight · (1 − cos(W · h_s, h_t))]

— the soft targets carry what the teacher thinks is similar (its mistakes included); T²
keeps their gradients on the scale of the hard loss's as T changes (Hinton et al. §2). The
cosine term on the pooled features is DistilBERT's (Sanh et al. 2019); W is the identity, or a
learned projection when the widths differ. Examples without a
label (`distill.unlabelled`) add soft targets only.

The teacher is frozen and deterministic, so its logits (and features) are computed once before
training and travel with the training feed as targets: an epoch costs student passes only.
With random augmentation each batch differs, and the teacher runs live on the student's
augmented pixels (said in a notice).

The student is built from the teacher (some of its blocks, with their trained weights:
`tsuika.models.student`) or is another model (`distill.student`). Everything else — rates,
freezing, schedule, early stopping on the labels — is fine-tuning's.
"""

from __future__ import annotations

import copy
import statistics
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from tsuika.config import Config, updated
from tsuika.console import warn
from tsuika.data.reading import read_examples
from tsuika.data.splits import Examples, Splits
from tsuika.errors import TsuikaError
from tsuika.feed import Batch, Feed, input_feed
from tsuika.feed.cache import CacheSettings, pooled_pass
from tsuika.methods.base import save_weights, stage_state
from tsuika.methods.finetune import Finetune
from tsuika.model_kinds import ENCODERS
from tsuika.models import model_from_spec
from tsuika.models.base import AdaptableModel, State
from tsuika.models.student import block_count, default_blocks, keep_blocks
from tsuika.tasks.base import Task

LABELLED = "labelled"
"""Target key: 1 for an example with a label, 0 for one that adds soft targets only."""
TEACHER_LOGITS, TEACHER_FEATURES = "teacher_logits", "teacher_features"
PROJECTION = "distill_projection"
"""A student's pooling stage holds this Linear when its features are narrower or wider
than the teacher's and `hidden_weight` matches them."""


def soft_target_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float):
    """T² · KL(softmax(teacher / T) ‖ softmax(student / T)) per example, [B]."""
    log_student = nn.functional.log_softmax(student.float() / temperature, dim=-1)
    log_teacher = nn.functional.log_softmax(teacher.float() / temperature, dim=-1)
    kl = (log_teacher.exp() * (log_teacher - log_student)).sum(-1)
    return temperature**2 * kl


def cosine_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """1 − cos(student, teacher) per example, [B] (DistilBERT's hidden-state loss)."""
    return 1 - nn.functional.cosine_similarity(student.float(), teacher.float(), dim=-1)


def load_teacher(folder: str) -> tuple[AdaptableModel, Task, dict]:
    """A finished classification run, frozen, in eval mode."""
    from tsuika.methods.saved import load_model_folder  # it imports every method, this one too

    path = Path(folder).expanduser()
    if not path.is_dir():
        raise TsuikaError(
            f"distill.teacher: run folder {path} not found; give a finished run (the folder "
            "`tsuika train` printed)"
        )
    model, task, meta = load_model_folder(path / "model")
    model.requires_grad_(False)
    return model.eval(), task, meta


class Distill(Finetune):
    name = "distill"
    sections = ("distill", "finetune")
    model_kinds = ENCODERS
    tasks = frozenset({"classify", "multi-task"})

    def __init__(self, config: Config, task: Task) -> None:
        super().__init__(config, task)
        self.kd = config.distill
        if config.finetune.lwf:
            raise TsuikaError(
                "finetune.lwf: distillation already learns from a teacher (distill.alpha); "
                "use finetune.l2sp to keep the student near its starting weights"
            )
        if self.kd.teacher is None:
            raise TsuikaError("method distill needs distill.teacher=<a finished run folder>")
        self.teacher, self.teacher_task, self.teacher_meta = load_teacher(self.kd.teacher)
        if self.teacher_task.name != task.name:
            raise TsuikaError(
                f"distill.teacher is a {self.teacher_task.name} run; this run's task is {task.name}"
            )
        self.teacher_test: State | None = None
        self.unlabelled = 0
        """How many inputs without labels the training feed gained."""
        self.extra: Examples | None = None
        """The inputs of `distill.unlabelled`, read by `prepare` (before any run folder)."""
        self.teacher_live = False
        """Whether the teacher ran on every batch (augmentation) rather than once."""
        self.measures_teacher = True
        """False for the undistilled baseline: it never consults the teacher."""

    def extra_baselines(self) -> frozenset[str]:
        return frozenset({"undistilled"} if self.kd.undistilled else ())

    @classmethod
    def completed(cls, config: Config) -> Config:
        """`model` is the student: the teacher's base model when it is built from the
        teacher, else `distill.student`."""
        if config.distill.teacher is None:
            raise TsuikaError("method distill needs distill.teacher=<a finished run folder>")
        from tsuika.methods.saved import read_meta  # it imports every method, this one too

        meta_path = Path(config.distill.teacher).expanduser() / "model" / "meta.json"
        if not meta_path.is_file():
            raise TsuikaError(
                f"distill.teacher: {meta_path.parent.parent} is not a finished tsuika run "
                "(no model/meta.json); give the folder `tsuika train` printed"
            )
        student = config.distill.student
        model = read_meta(meta_path)["base"] if student == "teacher" else student
        return updated(config, {"model": model})

    @property
    def uses_teacher(self) -> bool:
        return self.kd.alpha > 0 or self.kd.hidden_weight > 0

    @property
    def new_head(self) -> bool:
        """A student built from the teacher starts with the teacher's trained head."""
        return self.kd.student != "teacher"

    # -- the student -----------------------------------------------------------------------
    def build_model(self, config: Config, pretrained: bool = True) -> AdaptableModel:
        self._check_labels()
        if self.kd.student != "teacher":
            student = super().build_model(config, pretrained)
            self._match_widths(student)
            return student
        if not pretrained:  # the from-scratch baseline: the student's shape, random weights
            spec = self._student_spec()
            head = config.head
            return model_from_spec(spec, lambda width: self.task.head(width, head), False)
        student = copy.deepcopy(self.teacher)
        if student.adapters is not None:  # a LoRA teacher: its blocks with adapters merged
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                student.adapters.merge_and_unload()
            object.__setattr__(student, "adapters", None)
        student.requires_grad_(True)
        return keep_blocks(student, self.kd.blocks or default_blocks(self.teacher))

    def _student_spec(self) -> dict:
        spec = copy.deepcopy(self.teacher.spec)
        spec["keep_blocks"] = self.kd.blocks or default_blocks(self.teacher)
        return spec

    def _check_labels(self) -> None:
        mine, theirs = self.task.to_meta()["labels"], self.teacher_task.to_meta()["labels"]
        if mine != theirs:
            raise TsuikaError(
                f"distill.teacher was trained on the labels {theirs}, and this data has "
                f"{mine}; distil on data with the teacher's label set"
            )

    def _match_widths(self, student: AdaptableModel) -> None:
        """Features of another width are compared through a learned linear projection (as
        TinyBERT's W_h, Jiao et al. 2020), kept in the stage that pools them so it trains and
        checkpoints with the student; it is left out of the saved student."""
        if self.kd.hidden_weight > 0:
            mine, theirs = _width(student), _width(self.teacher)
            if mine != theirs:
                student.stages[-2].add_module(PROJECTION, nn.Linear(mine, theirs))

    def without_teacher(self) -> Distill:
        """The same student and budget trained on the labels alone (the baseline that says
        what distillation added)."""
        plain = copy.copy(self)
        plain.kd = self.kd.model_copy(
            update={"alpha": 0.0, "hidden_weight": 0.0, "unlabelled": None}
        )
        plain.measures_teacher = False
        return plain

    def prepare(self, model: AdaptableModel) -> None:
        super().prepare(model)
        self.last = model.num_stages - 1  # the head; the stage before it pools the features
        self.pooler = model.stages[-2]
        if self.kd.unlabelled is not None and self.uses_teacher:
            # Read now, as the labelled data is: a bad file fails before any run folder.
            self.extra = self._read_unlabelled(model)

    def _read_unlabelled(self, model: AdaptableModel) -> Examples:
        problems: list[str] = []
        try:
            extra = read_examples(
                model.model_kind, self.kd.unlabelled, "unlabelled", self.config.data, [], problems
            )
        except TsuikaError as error:  # say which of the run's files it is
            raise TsuikaError(f"distill.unlabelled: {error}") from None
        if problems:
            warn(f"distill.unlabelled: skipped {len(problems)} file(s), e.g. {problems[0]}")
        if not len(extra):
            raise TsuikaError(f"distill.unlabelled: {self.kd.unlabelled} holds no examples")
        return extra

    # -- the teacher's targets, computed once ------------------------------------------------
    def precompute(
        self, model: AdaptableModel, feed: Feed, settings: CacheSettings, name: str
    ) -> Feed:
        self.teacher.to(next(model.parameters()).device)
        if name == "train" and self.uses_teacher:
            feed = self._with_teacher(model, feed, settings)
        if name == "test" and self.measures_teacher:
            logits, _ = self._teacher_outputs(feed.inputs, settings, "teacher-test")
            self.teacher_test = {"logits": logits}
        return super().precompute(model, feed, settings, name)

    def _with_teacher(self, model: AdaptableModel, feed: Feed, settings: CacheSettings) -> Feed:
        """The training feed with the unlabelled examples added and the teacher's targets:
        one teacher pass over labelled and unlabelled inputs together, which also gives the
        unlabelled ones their label slot (the teacher's choice, which only the training
        accuracy counts; the loss masks it). With augmentation the teacher runs on every
        augmented batch instead, and passes over the unlabelled inputs only for that slot."""
        extra = None
        if self.kd.unlabelled is not None:
            extra = self.extra if self.extra is not None else self._read_unlabelled(model)
        unlabelled = list(extra.inputs) if extra is not None else []
        if feed.augmented:
            self._check_live(model)
            self.teacher_live = True
            warn(
                "distill: augmentation is on, so the teacher runs on every augmented "
                "batch (its outputs cannot be cached)"
            )
            logits = features = guessed = None
            if unlabelled:
                guessed, _ = self._teacher_outputs(unlabelled, settings, "unlabelled")
        else:
            inputs = [*feed.inputs, *unlabelled]
            logits, features = self._teacher_outputs(inputs, settings, "teacher-train")
            guessed = logits[len(feed) :]
        targets = dict(feed.targets)
        if unlabelled:
            guesses = {c: x.argmax(-1) for c, x in self.task.split_logits(guessed).items()}
            targets = {key: torch.cat([value, guesses[key]]) for key, value in targets.items()}
        targets[LABELLED] = torch.cat([torch.ones(len(feed)), torch.zeros(len(unlabelled))])
        if unlabelled:
            self.unlabelled = len(unlabelled)
            units = None if feed.units is None else feed.units + [1.0] * len(unlabelled)
            augment = self.config.data.augment
            feed = input_feed(model, [*feed.inputs, *unlabelled], targets, augment, units)
        else:
            feed.targets = targets
        if logits is not None:
            feed.targets = {**feed.targets, TEACHER_LOGITS: logits}
            if self.kd.hidden_weight > 0:
                feed.targets[TEACHER_FEATURES] = features
        return feed

    @torch.no_grad()
    def _teacher_outputs(
        self, inputs: list, settings: CacheSettings, name: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and pooled features of the teacher on raw inputs, encoded the teacher's way
        (a student of another family tokenises differently); its pooled pass is read from
        the activation store when a run with this teacher on these inputs kept it."""
        teacher = self.teacher
        own = input_feed(teacher, inputs)
        features = pooled_pass(teacher, own, settings, name)
        device = next(teacher.parameters()).device
        logits = teacher.head({"features": features["features"].to(device)})["logits"]
        return logits.float().cpu(), features["features"]

    def _check_live(self, model: AdaptableModel) -> None:
        if model.spec.get("image") != self.teacher.spec.get("image"):
            raise TsuikaError(
                "distill: with augmentation the teacher sees the student's augmented pixels, "
                "and the two models take different image sizes; turn augmentation off or "
                "distil into a student with the teacher's input size"
            )

    # -- training ----------------------------------------------------------------------------
    def step(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        state = self.task.inputs(batch.state, batch.targets)
        if self.kd.hidden_weight > 0:  # the pooled features too: two spans, one graph
            pooled = model(state, batch.start, self.last)
            outputs = model(pooled, self.last)
        else:
            outputs = model(state, batch.start)
        targets = batch.targets
        labelled = targets.get(LABELLED, torch.ones(len(batch.indices)))
        loss = (
            (1 - self.kd.alpha)
            * self.task.losses(outputs, targets)
            * labelled.to(outputs["logits"].device)
        )
        if self.uses_teacher:
            teacher_logits, teacher_features = self._teacher_batch(batch)
            student = self.task.split_logits(outputs["logits"])
            teacher = self.task.split_logits(teacher_logits)
            for column in self.task.columns:
                soft = soft_target_loss(student[column], teacher[column], self.kd.temperature)
                loss = loss + self.kd.alpha * self.task.weights[column] * soft
            if self.kd.hidden_weight > 0:
                features = pooled["features"]
                projection = getattr(self.pooler, PROJECTION, None)
                if projection is not None:
                    features = projection(features)
                loss = loss + self.kd.hidden_weight * cosine_loss(features, teacher_features)
        return {"loss": loss.mean(), "outputs": outputs}

    def _teacher_batch(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        targets = batch.targets
        if TEACHER_LOGITS in targets:
            return targets[TEACHER_LOGITS], targets.get(TEACHER_FEATURES)
        with torch.no_grad():  # augmented: the same pixels the student sees
            features = self.teacher(batch.state, 0, self.teacher.num_stages - 1)
            return self.teacher.head(features)["logits"], features["features"]

    # -- saved format and evidence ------------------------------------------------------------
    def save(self, model: AdaptableModel, folder: Path) -> None:
        """The whole student: even its frozen groups hold the teacher's trained weights,
        which the base model the folder names does not have."""
        folder.mkdir(parents=True, exist_ok=True)
        state = stage_state(model, set(range(model.num_stages)))
        save_weights({k: v for k, v in state.items() if f".{PROJECTION}." not in k}, folder)

    def evidence(self, model: AdaptableModel, splits: Splits, summary: dict) -> dict:
        """Teacher and student side by side: accuracy, size and latency on this machine."""
        if self.teacher_test is None:
            return {}
        truth = self.task.truth(splits.test)
        teacher_metrics = self.task.test_metrics(truth, self.task.predictions(self.teacher_test))
        metric = self.task.selection
        inputs = list(splits.test.inputs[:64])
        sides = {
            "teacher": {"run": str(self.kd.teacher), **teacher_metrics},
            "student": {**summary["test"]},
        }
        for side, network in (("teacher", self.teacher), ("student", model)):
            sides[side] |= {
                "parameters": sum(p.numel() for p in network.parameters()),
                "blocks": _blocks(network),
                "model_bytes": state_bytes(network),
                **latency(network, inputs),
            }
        teacher, student = sides["teacher"], sides["student"]
        section = {
            **sides,
            "metric": metric,
            "retained_percent": 100 * student[metric] / teacher[metric]
            if teacher[metric]
            else None,
            "speedup_batch1": teacher["latency_batch1_ms"] / student["latency_batch1_ms"],
            "speedup_batch64": teacher["latency_batch64_ms"] / student["latency_batch64_ms"],
            "size_ratio": student["model_bytes"] / teacher["model_bytes"],
            "temperature": self.kd.temperature,
            "alpha": self.kd.alpha,
            "teacher_cached": not self.teacher_live,
            "unlabelled": self.unlabelled,
        }
        return {"distillation": section}


def _width(model: AdaptableModel) -> int:
    head = model.head
    linear = next(m for m in head.modules() if isinstance(m, nn.Linear))
    return linear.in_features


def _blocks(model: AdaptableModel) -> int | None:
    """Transformer or MBConv blocks (None for a network tsuika does not split into blocks)."""
    return block_count(model) or None


def state_bytes(model: nn.Module) -> int:
    """Bytes of the model's weights and buffers (each tensor once), as a safetensors file
    of the whole network would hold them."""
    seen, total = set(), 0
    for tensor in model.state_dict().values():
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        total += tensor.numel() * tensor.element_size()
    return total


@torch.no_grad()
def latency(model: AdaptableModel, inputs: list, repeats: int = 5) -> dict[str, float]:
    """Median milliseconds of one forward pass at batch 1 (over up to 16 inputs) and at
    batch 64 (the inputs repeated to 64), on the model's device, preprocessing excluded."""
    model = model.eval()
    device = next(model.parameters()).device
    items = model.preprocess.encode(inputs)
    if not items:
        return {}
    singles = [model.preprocess.collate([item]) for item in items[:16]]
    full = model.preprocess.collate([items[i % len(items)] for i in range(64)])

    def timed(state: State) -> float:
        state = {k: v.to(device) for k, v in state.items()}
        started = time.perf_counter()
        model(state)
        return 1000 * (time.perf_counter() - started)

    timed(singles[0]), timed(full)  # warm-up: first calls allocate
    batch1 = statistics.median(timed(s) for s in singles)
    batch64 = statistics.median(timed(full) for _ in range(repeats))
    return {"latency_batch1_ms": batch1, "latency_batch64_ms": batch64}
