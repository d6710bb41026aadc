"""Plain-words verdicts: did adaptation help, and did it overfit?"""

from __future__ import annotations

from tsuika.tasks.base import Task


def transfer_verdict(
    gain: dict[str, float], method: str, task: Task, versus: str, pretrained: bool
) -> dict[str, object]:
    """Did adaptation help? Judged against the strongest baseline (`versus`, in words) on the
    task's selection metric, with the paired bootstrap interval. A gain ≤ 0 is negative
    transfer (Rosenstein et al. 2005; Wang et al. 2019): the run is no better than what needs
    no adaptation — a model without pretraining or, when that is stronger, a linear probe on
    the unchanged pretrained features (`pretrained`)."""
    words = task.gain_words(gain["gain"])
    interval = f"95% CI {task.gain_number(gain['low'])} to {task.gain_number(gain['high'])}"
    if gain["gain"] <= 0:
        why = (
            "changing the pretrained weights did worse than keeping them frozen"
            if pretrained
            else "the pretrained model did not pay for itself here"
        )
        return {
            "negative_transfer": True,
            "text": f"NEGATIVE TRANSFER: {method} is {words} versus the strongest baseline, "
            f"{versus} ({interval}); {why}.",
        }
    if gain["low"] <= 0:
        return {
            "negative_transfer": False,
            "text": f"{method} is {words} over the strongest baseline, {versus}, but the "
            f"interval includes zero ({interval}): not a clear gain on this test set.",
        }
    return {
        "negative_transfer": False,
        "text": f"{method} beats the strongest baseline, {versus}, by {words} ({interval}).",
    }


def overfitting_verdict(history: list[dict], best_epoch: int, task: Task) -> dict[str, object]:
    """Overfitting: after the validation peak, training loss keeps falling while validation
    loss rises (and the selection metric is no better). Reported with the train–validation gap
    in the selection metric at the best epoch (positive: training looks better)."""
    metric = task.selection
    best = history[best_epoch - 1]
    sign = 1 if task.higher_is_better else -1
    # A metric measured on validation only (a text-to-image run's fidelity of generations)
    # has no training value: the gap is then unknown, not zero.
    trained = best.get(f"train_{metric}")
    gap = sign * (trained - best[f"val_{metric}"]) if trained is not None else None
    after = history[best_epoch - 1 :]
    overfit = (
        len(after) >= 3
        and after[-1]["train_loss"] < best["train_loss"]
        and after[-1]["val_loss"] > best["val_loss"]
        and not task.better(after[-1][f"val_{metric}"], best[f"val_{metric}"])
    )
    text = f"validation peaked at epoch {best_epoch} of {len(history)}"
    if gap is not None:
        text += f"; train–validation gap there {task.gain_words(gap)}"
    if overfit:
        text = (
            f"OVERFITTING: after epoch {best_epoch} training loss kept falling "
            f"({best['train_loss']:.3f} → {after[-1]['train_loss']:.3f}) while validation "
            f"loss rose ({best['val_loss']:.3f} → {after[-1]['val_loss']:.3f}); "
            "the best epoch's weights were kept. " + text
        )
    return {"overfitting": overfit, "best_epoch": best_epoch, "train_val_gap": gap, "text": text}
