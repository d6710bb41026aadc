"""Plain-words verdicts: did adaptation help, and did it overfit?"""

from __future__ import annotations

from tsuika.tasks.base import Task

BASELINE_NAMES = {
    "majority": "the majority class",
    "mean": "predicting the training mean",
    "scratch": "training from scratch",
}


def transfer_verdict(gain: dict[str, float], method: str, task: Task) -> dict[str, object]:
    """Negative transfer (Rosenstein et al. 2005; Wang et al. 2019): the adapted model is not
    better than its baseline — the same architecture trained from scratch on the same data
    when that ran, else the task's constant prediction — on the task's selection metric."""
    versus = BASELINE_NAMES.get(gain["baseline"], gain["baseline"])
    words = task.gain_words(gain["gain"])
    interval = f"95% CI {task.gain_number(gain['low'])} to {task.gain_number(gain['high'])}"
    if gain["gain"] <= 0:
        return {
            "negative_transfer": True,
            "text": f"NEGATIVE TRANSFER: {method} is {words} versus {versus} ({interval}); "
            "the pretrained weights did not help here.",
        }
    if gain["low"] <= 0:
        return {
            "negative_transfer": False,
            "text": f"{method} is {words} over {versus}, but the interval includes zero "
            f"({interval}): not a clear gain on this test set.",
        }
    return {
        "negative_transfer": False,
        "text": f"{method} beats {versus} by {words} ({interval}).",
    }


def overfitting_verdict(history: list[dict], best_epoch: int, task: Task) -> dict[str, object]:
    """Overfitting: after the validation peak, training loss keeps falling while validation
    loss rises (and the selection metric is no better). Reported with the train–validation gap
    in the selection metric at the best epoch (positive: training looks better)."""
    metric = task.selection
    best = history[best_epoch - 1]
    sign = 1 if task.higher_is_better else -1
    gap = sign * (best[f"train_{metric}"] - best[f"val_{metric}"])
    after = history[best_epoch - 1 :]
    overfit = (
        len(after) >= 3
        and after[-1]["train_loss"] < best["train_loss"]
        and after[-1]["val_loss"] > best["val_loss"]
        and not task.better(after[-1][f"val_{metric}"], best[f"val_{metric}"])
    )
    text = (
        f"validation peaked at epoch {best_epoch} of {len(history)}; "
        f"train–validation gap there {task.gain_words(gap)}"
    )
    if overfit:
        text = (
            f"OVERFITTING: after epoch {best_epoch} training loss kept falling "
            f"({best['train_loss']:.3f} → {after[-1]['train_loss']:.3f}) while validation "
            f"loss rose ({best['val_loss']:.3f} → {after[-1]['val_loss']:.3f}); "
            "the best epoch's weights were kept. " + text
        )
    return {"overfitting": overfit, "best_epoch": best_epoch, "train_val_gap": gap, "text": text}
