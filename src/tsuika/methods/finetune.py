"""Fine-tuning: pretrained groups train too, at small rates, with the shallowest frozen."""

from __future__ import annotations

from tsuika.methods.base import Method, decay_groups, set_trainable
from tsuika.models.base import AdaptableModel


class Finetune(Method):
    """All groups train except the `freeze` shallowest; the head at `train.lr`, pretrained
    groups at `train.backbone_lr`."""

    name = "finetune"

    def __init__(self, config, freeze: int = 0, backbone_lr: float | None = None) -> None:
        super().__init__(config)
        self.freeze = freeze
        self.backbone_lr = backbone_lr or config.train.backbone_lr

    def prepare(self, model: AdaptableModel) -> None:
        set_trainable(model, set(range(self.freeze, model.num_stages)))

    def param_groups(self, model: AdaptableModel) -> list[dict]:
        train = self.config.train
        groups = []
        for group in model.layer_groups():
            is_head = group.index == model.num_stages - 1
            lr = train.lr if is_head else self.backbone_lr
            groups += decay_groups(group.module, lr, train.weight_decay, group.name)
        return groups
