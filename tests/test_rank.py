"""`tsuika rank`: LogME against the paper's formulation, and the ranking command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from tsuika.advice.rank import column_evidence, logme, probe_score


def exact_log_evidence(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """log p(y | F, α, β) of the paper's model — w ~ N(0, α⁻¹I), y ~ N(Fw, β⁻¹I) — with w
    integrated out: y ~ N(0, β⁻¹I + α⁻¹FFᵀ), computed directly (an N×N covariance)."""
    covariance = np.eye(len(y)) / beta + f @ f.T / alpha
    return float(multivariate_normal(np.zeros(len(y)), covariance).logpdf(y))


def _data(n: int, d: int, seed: int = 0, noise: float = 0.5):
    rng = np.random.default_rng(seed)
    f = rng.normal(size=(n, d))
    y = f @ rng.normal(size=d) * 0.3 + noise * rng.normal(size=n)
    return f, y


@pytest.mark.parametrize("n,d", [(60, 8), (20, 40)])  # more examples than dimensions, and fewer
def test_logme_is_the_exact_evidence_at_its_maximising_precisions(n, d):
    f, y = _data(n, d)
    _, singular, right = np.linalg.svd(f, full_matrices=False)
    evidence, alpha, beta = column_evidence(f, y, singular**2, right[singular > 1e-10])
    assert evidence == pytest.approx(exact_log_evidence(f, y, alpha, beta) / n, rel=1e-6)
    # The fixed point stops at 1 % change of α/β (the paper's rule): no precisions on a grid
    # around it are better by more than 1e-3 nats per example, and far ones are worse.
    grid = [0.25, 0.5, 0.8, 1.25, 2.0, 4.0]
    around = [exact_log_evidence(f, y, alpha * a, beta * b) / n for a in grid for b in grid]
    assert max(around) < evidence + 1e-3
    assert exact_log_evidence(f, y, alpha * 4, beta / 4) / n < evidence - 0.05


def test_logme_prefers_features_that_predict_the_labels():
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1, 2], 40)
    informative = np.eye(3)[labels] * 2 + rng.normal(size=(120, 3))
    informative = np.hstack([informative, rng.normal(size=(120, 13))])
    noise = rng.normal(size=(120, 16))
    assert logme(informative, labels) > logme(noise, labels)
    # measured: 0.80 and 0.43 (chance 0.33)
    assert probe_score(informative, labels, True) > 0.7 > 0.6 > probe_score(noise, labels, True)


def test_rank_scores_each_candidate_with_its_seconds_and_refuses_an_unknown_one(
    tiny_bert_dir: Path, tiny_csv: Path, capsys
):
    from tsuika.cli import main

    args = ["rank", "--data", str(tiny_csv), "--models", "random:" + str(tiny_bert_dir)]
    args += ["--models", str(tiny_bert_dir), "train.max_length=32", "--json"]
    assert main(args) == 0
    results = json.loads(capsys.readouterr().out)
    assert sorted(r["model"].startswith("random:") for r in results) == [False, True]
    assert results[0]["logme"] >= results[1]["logme"]  # best first
    assert {r["examples"] for r in results} == {28}  # 40 rows less validation and test
    assert all(set(r["seconds"]) == {"features", "logme", "probe"} for r in results)
    assert main(["rank", "--data", str(tiny_csv), "--models", "nope-model"]) == 2


def test_the_random_twin_is_the_same_network_whatever_ran_before(tiny_bert_dir, tiny_csv):
    """Its weights are drawn from the run's seed, not from wherever the global generator
    stood (the bench's random MiniLM scored 0.602, then 0.567 after a change elsewhere)."""
    import torch

    from tsuika.advice.commands import rank

    twin = "random:" + str(tiny_bert_dir)
    config = {"model": str(tiny_bert_dir), "data": {"train": str(tiny_csv)}}
    first = rank(config, models=[twin])
    torch.rand(1000)  # whatever else the process did meanwhile
    assert rank(config, models=[twin])[0]["logme"] == first[0]["logme"]
