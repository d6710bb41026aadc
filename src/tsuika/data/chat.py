"""Prompt → completion data for causal language models: JSONL rows with `prompt` and
`completion` fields, or chat `messages` whose last turn is the assistant's answer (the formats
TRL's SFTTrainer reads). Errors name the file, the line and the fix."""

from __future__ import annotations

from pathlib import Path

from tsuika.data.formats import json_records, read_text_file
from tsuika.data.splits import Examples
from tsuika.data.tables import resolve, text_value
from tsuika.errors import TsuikaError

ROLES = {"system", "user", "assistant"}


def _messages(path: Path, line: int, value: object, key: str) -> list[dict[str, str]]:
    """A list of {"role", "content"} turns, checked."""
    if not isinstance(value, list) or not value:
        raise TsuikaError(
            f'{path} line {line}: `{key}` must be a non-empty list of {{"role", "content"}} turns'
        )
    turns = []
    for number, turn in enumerate(value, start=1):
        # A role that is not a string (a list, say) is refused before the set lookup,
        # which would fail on an unhashable value.
        role = turn.get("role") if isinstance(turn, dict) else None
        if not isinstance(role, str) or role not in ROLES:
            raise TsuikaError(
                f"{path} line {line}: turn {number} of `{key}` needs a role "
                f"({', '.join(sorted(ROLES))}) and a content"
            )
        content = text_value(path, line, f"{key}[{number}].content", turn.get("content"))
        turns.append({"role": turn["role"], "content": content})
    return turns


def _prompt(path: Path, line: int, value: object) -> str | list[dict[str, str]]:
    """A `prompt` field: text, or chat turns."""
    if isinstance(value, list):
        return _messages(path, line, value, "prompt")
    return text_value(path, line, "prompt", value)


def _one_form(path: Path, line: int, row: dict) -> None:
    """A row is `prompt`/`completion` or `messages`, not both: which one is meant cannot be
    told, and reading either would silently drop the other."""
    other = [key for key in ("prompt", "completion") if key in row]
    if "messages" in row and other:
        raise TsuikaError(
            f"{path} line {line}: has both `messages` and `{other[0]}`; keep one form "
            "(`prompt` and `completion`, or `messages`)"
        )


def _example(path: Path, line: int, row: dict) -> tuple[str | list[dict[str, str]], str]:
    _one_form(path, line, row)
    if "messages" in row:
        turns = _messages(path, line, row["messages"], "messages")
        if len(turns) < 2 or turns[-1]["role"] != "assistant":
            raise TsuikaError(
                f"{path} line {line}: `messages` must end with the assistant's answer after "
                "at least one earlier turn (that answer is what the model learns)"
            )
        return turns[:-1], turns[-1]["content"]
    if "prompt" not in row or "completion" not in row:
        keys = ", ".join(sorted(row)) or "none"
        raise TsuikaError(
            f"{path} line {line}: needs `prompt` and `completion` fields, or `messages` "
            f"(keys here: {keys})"
        )
    prompt = _prompt(path, line, row["prompt"])
    completion = row["completion"]
    if isinstance(completion, list):  # conversational: one assistant turn
        turns = _messages(path, line, completion, "completion")
        if turns[-1]["role"] != "assistant":
            raise TsuikaError(
                f"{path} line {line}: the last turn of `completion` must be the assistant's "
                f"answer (what the model learns), not the {turns[-1]['role']}'s"
            )
        completion = turns[-1]["content"]
    return prompt, text_value(path, line, "completion", completion)


def read_chat_examples(path: str, split: str) -> Examples:
    """Prompts (text or chat turns) with their completions, one per JSONL line."""
    file = resolve(path, split)
    if file.suffix.lower() not in {".jsonl", ".json", ".ndjson"}:
        raise TsuikaError(
            f"{file}: a causal language model learns from JSONL (one object per line with "
            "`prompt` and `completion`, or `messages`); convert the file to .jsonl"
        )
    rows, lines, _ = json_records(file, read_text_file(file))
    if not rows:
        raise TsuikaError(f"{file} has no rows")
    prompts, completions = [], []
    for row, line in zip(rows, lines, strict=True):
        prompt, completion = _example(file, line, row)
        prompts.append(prompt)
        completions.append(completion)
    return Examples(prompts, {"completion": completions}, str(file), lines)


def read_prompts(path: str | Path) -> list[str | list[dict[str, str]]]:
    """Prompts to answer, one per JSONL line: `prompt` (text or turns) or `messages` (chat
    turns; a final assistant turn, if any, is left out)."""
    file = Path(path)
    rows, lines, _ = json_records(file, read_text_file(file))
    prompts: list[str | list[dict[str, str]]] = []
    for row, line in zip(rows, lines, strict=True):
        _one_form(file, line, row)
        if "messages" in row:
            turns = _messages(file, line, row["messages"], "messages")
            prompts.append(turns[:-1] if turns[-1]["role"] == "assistant" else turns)
        elif "prompt" in row:
            prompts.append(_prompt(file, line, row["prompt"]))
        else:
            raise TsuikaError(f"{file} line {line}: needs a `prompt` or `messages` field")
    if not prompts:
        raise TsuikaError(f"{file} has no prompts")
    return prompts
