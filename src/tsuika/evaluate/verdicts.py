"""Plain-words verdicts: did adaptation help, and did it overfit?"""

from __future__ import annotations


def transfer_verdict(gain: dict[str, float], method: str) -> dict[str, object]:
    """Negative transfer (Rosenstein et al. 2005; Wang et al. 2019): the adapted model is not
    better than the same architecture trained from scratch on the same data."""
    points = 100 * gain["gain"]
    interval = f"95% CI {100 * gain['low']:+.1f} to {100 * gain['high']:+.1f} points"
    if gain["gain"] <= 0:
        return {
            "negative_transfer": True,
            "text": f"NEGATIVE TRANSFER: {method} is {points:+.1f} accuracy points versus "
            f"training from scratch ({interval}); the pretrained weights did not help here.",
        }
    if gain["low"] <= 0:
        return {
            "negative_transfer": False,
            "text": f"{method} is {points:+.1f} points over training from scratch, but the "
            f"interval includes zero ({interval}): not a clear gain on this test set.",
        }
    return {
        "negative_transfer": False,
        "text": f"{method} beats training from scratch by {points:+.1f} points ({interval}).",
    }


def overfitting_verdict(history: list[dict], best_epoch: int) -> dict[str, object]:
    """Overfitting: after the validation peak, training loss keeps falling while validation
    loss rises. Reported with the train–validation accuracy gap at the best epoch."""
    best = history[best_epoch - 1]
    gap = best["train_accuracy"] - best["val_accuracy"]
    after = history[best_epoch - 1 :]
    overfit = (
        len(after) >= 3
        and after[-1]["train_loss"] < best["train_loss"]
        and after[-1]["val_loss"] > best["val_loss"]
        and after[-1]["val_accuracy"] <= best["val_accuracy"]
    )
    text = (
        f"validation peaked at epoch {best_epoch} of {len(history)}; "
        f"train–validation accuracy gap there {100 * gap:+.1f} points"
    )
    if overfit:
        text = (
            f"OVERFITTING: after epoch {best_epoch} training loss kept falling "
            f"({best['train_loss']:.3f} → {after[-1]['train_loss']:.3f}) while validation "
            f"loss rose ({best['val_loss']:.3f} → {after[-1]['val_loss']:.3f}); "
            "the best epoch's weights were kept. " + text
        )
    return {"overfitting": overfit, "best_epoch": best_epoch, "train_val_gap": gap, "text": text}
