"""Transfer learning: the pretrained network stays frozen; only a new head trains on its
pooled features (Yosinski et al. 2014, "How transferable are features in deep neural
networks?"). With nothing below the head training, the loop runs on cached features."""

from __future__ import annotations

from tsuika.methods.base import Method, decay_groups, set_trainable
from tsuika.models.base import AdaptableModel


class Transfer(Method):
    name = "transfer"

    def trainable_groups(self, model: AdaptableModel) -> set[int]:
        return {model.num_stages - 1}

    def prepare(self, model: AdaptableModel) -> None:
        set_trainable(model, self.trainable_groups(model))

    def param_groups(self, model: AdaptableModel) -> list[dict]:
        train = self.config.train
        return decay_groups(model.head, train.lr, train.weight_decay, "head")
