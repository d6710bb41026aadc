"""`--format hf`: a folder that plain libraries load, adapters merged into the weights.

Text: the encoder as a transformers folder (config, weights, tokenizer), and the head as
`head.safetensors` of plain `torch.nn` layers; a dozen documented lines (pooling, head) give
tsuika's outputs. Images: `model.safetensors`, the whole network with the head in place of its
classifier, which `timm.create_model(name, num_classes=K)` (or torchvision's `get_model`, or
`EfficientNet.from_name`) loads. A causal LM: the merged transformers folder, LM head included.

The documented code is not only shown: the export runs it on the written folder and compares
its outputs with tsuika's, so the card cannot drift from what the folder holds.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from transformers import PreTrainedModel

from tsuika.errors import TsuikaError
from tsuika.export.graph import (
    Written,
    check_batches,
    check_texts,
    compared,
    encoder_task,
    literal,
    merge_adapters,
    output_name,
    pixels_code,
    predict_code,
    preprocessing,
    reference,
    targets,
    task_output,
    tokenize_code,
)
from tsuika.finished_run import Run
from tsuika.model_kinds import CAUSAL_LM, IMAGE_ENCODER
from tsuika.models import REGISTERED
from tsuika.models.base import AdaptableModel
from tsuika.models.heads import MultiHead
from tsuika.tasks.base import Task
from tsuika.tasks.classify import Classify
from tsuika.tasks.regression import Regression

WEIGHTS = "model.safetensors"
HEAD = "head.safetensors"


def write_hf(run: Run, folder: Path, name: str) -> Written:
    kind = run.model.model_kind
    if kind == CAUSAL_LM:
        return write_causal(run, folder, name)
    task = encoder_task(run.task, "hf")
    if kind == IMAGE_ENCODER:
        return write_image(run, task, folder, name)
    return write_text(run, task, folder, name)


# -- the head ----------------------------------------------------------------------------------
def plain_head(head: nn.Module, task: Classify | Regression) -> nn.Module:
    """The head as plain `torch.nn` layers, dropout left out (inactive at inference): one
    Linear, or Linear → GELU → Linear. Several label columns' heads become one module with
    their outputs side by side (first layers stacked; an MLP's second layer block-diagonal,
    so each column still sees only its own hidden units), and a regression's standardisation
    is folded into the last layer: the module's output is the task's output as it is."""
    heads = list(head.heads) if isinstance(head, MultiHead) else [head]
    layers = [[m for m in h.net if isinstance(m, nn.Linear)] for h in heads]
    with torch.no_grad():
        first = _linear(
            torch.cat([ls[0].weight for ls in layers]), torch.cat([ls[0].bias for ls in layers])
        )
        if all(len(ls) == 1 for ls in layers):
            plain: nn.Module = first
        else:
            second = _linear(
                torch.block_diag(*(ls[1].weight for ls in layers)),
                torch.cat([ls[1].bias for ls in layers]),
            )
            plain = nn.Sequential(first, nn.GELU(), second)
        last = plain if isinstance(plain, nn.Linear) else plain[-1]
        if isinstance(task, Regression):
            last.weight.mul_(task.std)
            last.bias.mul_(task.std).add_(task.mean)
    return plain.eval()


def _linear(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    layer.weight.copy_(weight)
    layer.bias.copy_(bias)
    return layer


def head_layers(head: nn.Module) -> list[str]:
    """The head's layers in `torch.nn` terms, for export.json and the documented code."""
    layers = [head] if isinstance(head, nn.Linear) else list(head)
    return [
        f"Linear({m.in_features}, {m.out_features})" if isinstance(m, nn.Linear) else "GELU()"
        for m in layers
    ]


def head_code(head: nn.Module) -> str:
    """The expression that builds `head` (whose state dict then loads into it)."""
    layers = [f"torch.nn.{layer}" for layer in head_layers(head)]
    if len(layers) == 1:
        return layers[0]
    return "torch.nn.Sequential(\n    " + ", ".join(layers) + "\n)"


def tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in module.state_dict().items()}


def run_code(code: str, **given: Any) -> dict[str, Any]:
    """Execute generated documentation code (ours: every value in it is a literal tsuika
    wrote) and return what it defined."""
    namespace = dict(given)
    try:
        exec(compile(code, "README.md", "exec"), namespace)
    except Exception as err:  # the model is one the documented recipe does not fit
        raise TsuikaError(
            f"the documented loading code does not work for this model ({type(err).__name__}: "
            f"{err}); nothing was exported — use --format onnx"
        ) from None
    return namespace


def usage(summary: str, code: str) -> str:
    return f"{summary}\n\n```python\n{code}```\n"


# -- text ----------------------------------------------------------------------------------
def write_text(run: Run, task: Classify | Regression, folder: Path, name: str) -> Written:
    model = run.model
    texts = check_texts(model)
    expected = [task_output(task, run.outputs(texts)).numpy()]
    merge_adapters(model)
    model.library.save_pretrained(folder)
    model.preprocess.tokenizer.save_pretrained(folder)
    head = plain_head(model.head, task)
    save_file(tensors(head), str(folder / HEAD))
    written = run_code(text_code(model, task, head, str(folder)))
    with torch.no_grad():
        got = [np.asarray(written["outputs"](texts))]
    description = {
        "format": "hf",
        **targets(task),
        **preprocessing(model),
        "head": {"file": HEAD, "layers": head_layers(head), "output": output_name(task)},
        "check": {"code": "README.md", **compared(expected, got, "the documented code")},
    }
    summary = (
        "The encoder (adapters merged) loads with `transformers.AutoModel`; the pooling and "
        f"the head (`{HEAD}`) are the lines below, which give the run's {output_name(task)}."
    )
    return Written(description, usage(summary, text_code(model, task, head, name)))


def pooling_code(model: AdaptableModel) -> str:
    if model.spec.get("pooling") == "cls":
        lines = "        features = hidden[:, 0]  # the first ([CLS]) token\n"
    else:
        lines = (
            '        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)\n'
            "        features = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # mean\n"
        )
    if model.spec.get("normalize"):
        lines += "        features = torch.nn.functional.normalize(features, dim=-1)\n"
    return lines


def text_code(model: AdaptableModel, task: Task, head: nn.Module, folder: str) -> str:
    return (
        "import torch\n"
        "from safetensors.torch import load_file\n"
        "from transformers import AutoModel, AutoTokenizer\n\n"
        f"folder = {literal(folder)}  # this folder\n"
        "tokenizer = AutoTokenizer.from_pretrained(folder)\n"
        "encoder = AutoModel.from_pretrained(folder).eval()\n"
        f"head = {head_code(head)}\n"
        f'head.load_state_dict(load_file(f"{{folder}}/{HEAD}"))\n\n\n'
        "def outputs(texts):\n" + tokenize_code(model, "pt") + "    with torch.no_grad():\n"
        "        hidden = encoder(**batch).last_hidden_state\n"
        + pooling_code(model)
        + "        return head(features)\n\n\n"
        + predict_code(task)
    )


# -- images --------------------------------------------------------------------------------
def write_image(run: Run, task: Classify | Regression, folder: Path, name: str) -> Written:
    model = run.model
    batches = check_batches(model)
    expected = reference(model, task, batches)
    merge_adapters(model)
    head = plain_head(model.head, task)
    classifier, imports, build = image_recipe(model, head)
    network = copy.deepcopy(model.library)
    network.set_submodule(classifier, copy.deepcopy(head))
    save_file(tensors(network), str(folder / WEIGHTS))
    given = registered_builder(model)
    recipe = (classifier, imports, build)
    written = run_code(image_code(model, task, head, recipe, str(folder)), **given)
    with torch.no_grad():
        got = [np.asarray(written["forward"](batch["pixels"])) for batch in batches]
    description = {
        "format": "hf",
        **targets(task),
        **preprocessing(model),
        "weights": {"file": WEIGHTS, "classifier": classifier, "head": head_layers(head)},
        "check": {"code": "README.md", **compared(expected, got, "the documented code")},
    }
    summary = (
        f"`{WEIGHTS}` holds the whole network (adapters merged) with the run's head in place "
        f"of its classifier `{classifier}`; the lines below load it and give the run's "
        f"{output_name(task)}. (tsuika also turns images upright by their EXIF orientation, "
        "puts transparency on white, and first shrinks an image whose shorter side exceeds "
        "320 pixels.)"
    )
    return Written(description, usage(summary, image_code(model, task, head, recipe, name)))


def image_recipe(model: AdaptableModel, head: nn.Module) -> tuple[str, str, str]:
    """Where the head goes in the library's network (the classifier's name), the import and
    the line that build that network — with a classifier of the head's width where the
    library can be asked for one."""
    source = model.spec["source"]
    outputs = head.out_features if isinstance(head, nn.Linear) else head[-1].out_features
    if source == "efficientnet-lite0":
        build = f'net = EfficientNet.from_name("efficientnet-lite0", num_classes={outputs})\n'
        if "keep_blocks" in model.spec:  # a distilled student keeps some of the blocks
            kept = model.spec["keep_blocks"]
            build += (
                f"net._blocks = torch.nn.ModuleList(net._blocks[i - 1] for i in {literal(kept)})\n"
            )
        return "_fc", "from efficientnet_lite_pytorch import EfficientNet", build
    if source.startswith("timm:"):
        classifier = model.library.pretrained_cfg.get("classifier")
        if not isinstance(classifier, str):
            raise TsuikaError(f"{source} has no single classifier layer; use --format onnx")
        name = source.removeprefix("timm:")
        return (
            classifier,
            "import timm",
            f"net = timm.create_model({literal(name)}, num_classes={outputs})\n",
        )
    if source.startswith("torchvision:"):
        name = source.removeprefix("torchvision:")
        build = (
            f"net = torchvision.models.get_model({literal(name)}, weights=None, "
            f"num_classes={outputs})\n"
        )
        return torchvision_classifier(name), "import torchvision", build
    classifier = REGISTERED[source].classifier
    return (
        classifier,
        "",
        f"net = make_module()  # your module, built as registered: {literal(source)}\n",
    )


def torchvision_classifier(name: str) -> str:
    """The name of the last Linear of torchvision's `name`: the layer tsuika's head replaced
    (built on the meta device: no memory, no weights)."""
    import torchvision

    with torch.device("meta"):
        net = torchvision.models.get_model(name, weights=None)
    return [n for n, m in net.named_modules() if isinstance(m, nn.Linear)][-1]


def registered_builder(model: AdaptableModel) -> dict[str, Any]:
    """For a registered module, the `make_module()` the documented code expects from its
    reader: the registered `build`, without pretrained weights."""
    recipe = REGISTERED.get(model.spec["source"])
    return {"make_module": lambda: recipe.build(False)} if recipe else {}


def forward_code(model: AdaptableModel, classifier: str) -> str:
    """A registered module runs as tsuika runs it (its groups, average pooling, classifier);
    the libraries' networks run their own forward."""
    recipe = REGISTERED.get(model.spec["source"])
    if recipe is None:
        return "def forward(batch):\n    with torch.no_grad():\n        return net(batch)\n"
    return (
        "def forward(batch):\n"
        "    x = batch\n"
        "    with torch.no_grad():\n"
        f"        for group in {literal(recipe.groups)}:\n"
        "            x = net.get_submodule(group)(x)\n"
        "        x = torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)\n"
        f"        return net.get_submodule({literal(classifier)})(x)\n"
    )


def sorted_imports(lines: list[str]) -> str:
    """Import lines in isort's order: `import x` first, then `from x import y`, by module."""

    def order(line: str) -> tuple[bool, str]:
        return line.startswith("from"), line.split()[1].lower()

    return "".join(f"{line}\n" for line in sorted(filter(None, lines), key=order))


def image_code(
    model: AdaptableModel, task: Task, head: nn.Module, recipe: tuple[str, str, str], folder: str
) -> str:
    classifier, imports, build = recipe
    if not isinstance(head, nn.Linear) or model.spec["source"] in REGISTERED:
        build += f"head = {head_code(head)}\nnet.set_submodule({literal(classifier)}, head)\n"
    return (
        sorted_imports(
            [
                imports,
                "import torch",
                "from PIL import Image",
                "from safetensors.torch import load_file",
                "from torchvision.transforms import v2",
            ]
        )
        + f"\nfolder = {literal(folder)}  # this folder\n"
        + build
        + f'net.load_state_dict(load_file(f"{{folder}}/{WEIGHTS}"))\n'
        "net.eval()\n"
        + pixels_code(model)
        + "\n\n"
        + forward_code(model, classifier)
        + "\n\ndef outputs(paths):\n"
        "    return forward(pixels(paths))\n\n\n" + predict_code(task)
    )


# -- causal language models ----------------------------------------------------------------
def write_causal(run: Run, folder: Path, name: str) -> Written:
    """The merged network, LM head included: the folder is the whole model."""
    model = run.model
    if not isinstance(model.library, PreTrainedModel):
        raise TsuikaError(
            f"{run.path}: this run's network ({model.spec.get('source')}) is not a "
            "transformers model, so it has no Hugging Face folder"
        )
    merge_adapters(model)
    model.library.save_pretrained(folder)
    model.preprocess.tokenizer.save_pretrained(folder)
    code = (
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        f"folder = {literal(name)}  # this folder\n"
        "tokenizer = AutoTokenizer.from_pretrained(folder)\n"
        "model = AutoModelForCausalLM.from_pretrained(folder).eval()\n"
    )
    summary = (
        "A transformers causal LM (adapters merged into the weights): no tsuika or peft needed."
    )
    description = {"format": "hf", "task": run.task.name, "base_model": model.spec.get("source")}
    return Written(description, usage(summary, code))
