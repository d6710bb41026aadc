"""Shallower students built from a teacher: the same network keeping some of its blocks, each
with the teacher's trained weights (DistilBERT, Sanh et al. 2019, arXiv:1910.01108, §3).

Only blocks that leave the shape of their input unchanged can go: every transformer block, and
the repeated (residual) MBConv blocks of an EfficientNet stage — its first block changes width
or resolution and always stays. The library's own network is cut the same way, so the student
is still a plain transformers (or efficientnet_lite_pytorch) model that exports and reloads
without tsuika. Blocks are numbered from 1, as `tsuika inspect` names them.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from tsuika.errors import TsuikaError
from tsuika.models.base import AdaptableModel
from tsuika.models.images import MBConvStage
from tsuika.models.text import BlockStage


def evenly_spaced(count: int, keep: int) -> list[int]:
    """`keep` of `count` positions (0-based), evenly spaced with the first and the last:
    for BERT-base's 12 layers and 6 kept, DistilBERT's own [0, 2, 4, 7, 9, 11]."""
    return sorted({int(i) for i in np.rint(np.linspace(0, count - 1, keep))})


def default_blocks(model: AdaptableModel) -> list[int]:
    """Half of the removable blocks (rounded up), evenly spaced: for a transformer, over all
    its blocks; for a CNN, within each stage, whose first block stays."""
    if _text_blocks(model):
        count = len(_text_blocks(model))
        return [i + 1 for i in evenly_spaced(count, (count + 1) // 2)]
    kept, number = [], 0
    for stage in _cnn_stages(model):
        count = len(stage.blocks)
        kept += [number + i + 1 for i in evenly_spaced(count, (count + 1) // 2)]
        number += count
    return kept


def block_count(model: AdaptableModel) -> int:
    return len(_text_blocks(model)) or sum(len(s.blocks) for s in _cnn_stages(model))


def keep_blocks(model: AdaptableModel, blocks: list[int]) -> AdaptableModel:
    """`model` (changed in place, and returned) keeping only `blocks`; its spec records them,
    so a run folder rebuilds the same student."""
    count = block_count(model)
    if count == 0:
        raise TsuikaError(
            f"cannot build a student from {model.spec.get('source')}: tsuika splits only "
            "BERT-family encoders and EfficientNet into blocks; give another model as "
            "distill.student"
        )
    wanted = sorted(set(blocks))
    outside = [b for b in wanted if not 1 <= b <= count]
    if outside:
        raise TsuikaError(
            f"distill.blocks: block {outside[0]} does not exist; the teacher has blocks 1…{count}"
        )
    if len(wanted) == count:
        raise TsuikaError(
            f"distill.blocks keeps all {count} blocks: the student would be the teacher; keep fewer"
        )
    if _text_blocks(model):
        _cut_transformer(model, wanted)
    else:
        _cut_cnn(model, wanted)
    model.spec["keep_blocks"] = wanted
    return model


def _text_blocks(model: AdaptableModel) -> list[int]:
    return [i for i, stage in enumerate(model.stages) if isinstance(stage, BlockStage)]


def _cnn_stages(model: AdaptableModel) -> list[MBConvStage]:
    return [stage for stage in model.stages if isinstance(stage, MBConvStage)]


def _cut_transformer(model: AdaptableModel, wanted: list[int]) -> None:
    positions = _text_blocks(model)
    kept = [model.stages[positions[b - 1]] for b in wanted]
    first, last = positions[0], positions[-1]
    names = model.stage_names[:first] + [f"block{i + 1}" for i in range(len(kept))]
    names += model.stage_names[last + 1 :]
    stages = list(model.stages[:first]) + kept + list(model.stages[last + 1 :])
    _replace_stages(model, names, stages)
    encoder = model.library
    encoder.encoder.layer = nn.ModuleList(stage.block for stage in kept)
    encoder.config.num_hidden_layers = len(kept)


def _cut_cnn(model: AdaptableModel, wanted: list[int]) -> None:
    number, kept_blocks = 0, []
    for stage in _cnn_stages(model):
        count = len(stage.blocks)
        keep = [i for i in range(count) if number + i + 1 in wanted]
        if 0 not in keep:
            raise TsuikaError(
                f"distill.blocks must keep block {number + 1}: the first block of each stage "
                "changes the width or resolution, so it cannot be removed"
            )
        stage.blocks = nn.ModuleList(stage.blocks[i] for i in keep)
        stage.rates = [stage.rates[i] for i in keep]
        kept_blocks += list(stage.blocks)
        number += count
    model.library._blocks = nn.ModuleList(kept_blocks)


def _replace_stages(model: AdaptableModel, names: list[str], stages: list[nn.Module]) -> None:
    model.stage_names = names
    model.stages = nn.ModuleList(stages)
