"""Plain-words verdicts: did adaptation help, and did it overfit? Each fires only beyond
noise: a gain or a loss whose 95 % interval spans zero is "no clear difference", on either
side, and a validation loss must rise by more than its standard error allows."""

from __future__ import annotations

from tsuika.tasks.base import Task

NOISE = 2.0
"""A validation loss counts as risen when it exceeds the best epoch's by more than this many
standard errors of that mean loss (about a 95 % one-sided band; the two epochs' losses are
of the same examples, so their difference varies less and the test errs toward silence)."""


def transfer_verdict(
    gain: dict[str, float],
    method: str,
    task: Task,
    versus: str,
    pretrained: bool,
    head_only: bool = False,
    over_probe: dict[str, float] | None = None,
) -> dict[str, object]:
    """Did adaptation help? Judged against the strongest baseline (`versus`, in words) on the
    task's selection metric, with the paired bootstrap interval. NEGATIVE TRANSFER (Rosenstein
    et al. 2005; Wang et al. 2019) only when the whole interval is below zero: the run is
    worse than what needs no adaptation — a model without pretraining or, when that is
    stronger, a linear probe on the unchanged pretrained features (`pretrained`).

    A run that trains only a head (`head_only`) and is clearly beaten by a linear probe on the
    same frozen features (`over_probe`: the run's gain over it) has a head that underfit: the
    features were there, and the verdict says so rather than blaming pretraining."""
    interval = f"95% CI {task.gain_number(gain['low'])} to {task.gain_number(gain['high'])}"
    if head_only and over_probe is not None and over_probe["high"] < 0:
        probe_interval = (
            f"95% CI {task.gain_number(over_probe['low'])} to "
            f"{task.gain_number(over_probe['high'])}"
        )
        return {
            "negative_transfer": False,
            "head_underfit": True,
            "text": f"HEAD UNDERFIT: {method} is {task.gain_words(over_probe['gain'])} versus a "
            f"linear probe on the same frozen features ({probe_interval}): the head fell short "
            "of what the pretrained features hold, so this says nothing against pretraining. "
            "Fit the head in closed form (head.fit=convex, the default) or train it longer "
            "(more train.epochs, a higher train.lr, train.patience).",
        }
    words = task.gain_words(gain["gain"])
    if gain["high"] < 0:
        why = (
            "changing the pretrained weights did worse than keeping them frozen"
            if pretrained and not head_only
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
            "text": f"no clear difference: {method} is {words} versus the strongest baseline, "
            f"{versus}, and the interval includes zero ({interval}).",
        }
    return {
        "negative_transfer": False,
        "text": f"{method} beats the strongest baseline, {versus}, by {words} ({interval}).",
    }


def overfitting_verdict(history: list[dict], best_epoch: int, task: Task) -> dict[str, object]:
    """Overfitting: after the validation peak, training loss keeps falling while validation
    loss rises beyond noise (more than `NOISE` standard errors, when the task reports them)
    and the selection metric is no better. Reported with the train–validation gap in the
    selection metric at the best epoch (positive: training looks better)."""
    metric = task.selection
    best = history[best_epoch - 1]
    if f"val_{metric}" not in best:  # validation given back to training
        text = "no validation split (given back to training): overfitting is not judged"
        return {"overfitting": False, "best_epoch": best_epoch, "train_val_gap": None, "text": text}
    sign = 1 if task.higher_is_better else -1
    # A metric measured on validation only (a text-to-image run's fidelity of generations)
    # has no training value: the gap is then unknown, not zero.
    trained = best.get(f"train_{metric}")
    gap = sign * (trained - best[f"val_{metric}"]) if trained is not None else None
    after = history[best_epoch - 1 :]
    noise = NOISE * best.get("val_loss_se", 0.0)
    overfit = (
        len(after) >= 3
        and after[-1]["train_loss"] < best["train_loss"]
        and after[-1]["val_loss"] > best["val_loss"] + noise
        and not task.better(after[-1][f"val_{metric}"], best[f"val_{metric}"])
    )
    text = f"validation peaked at epoch {best_epoch} of {len(history)}"
    if gap is not None:
        text += f"; train–validation gap there {task.gain_words(gap)}"
    if overfit:
        text = (
            f"OVERFITTING: after epoch {best_epoch} training loss kept falling "
            f"({best['train_loss']:.3f} → {after[-1]['train_loss']:.3f}) while validation "
            f"loss rose ({best['val_loss']:.3f} → {after[-1]['val_loss']:.3f}) beyond its "
            f"noise (±{noise:.3f}); the best epoch's weights were kept. " + text
        )
    return {"overfitting": overfit, "best_epoch": best_epoch, "train_val_gap": gap, "text": text}
