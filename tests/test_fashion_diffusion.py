"""The bundled text-to-image model as shipped: it draws the classes it was pretrained on at its
own guidance scale, and not the class it never saw (what the concept methods have to teach).
Thresholds from 16 seeds measured on 2026-12-04 (trousers 16/16, bags 16/16; "a shoe": 13
sandals or ankle boots, 1 sneaker), with margin."""

from __future__ import annotations

from pathlib import Path

import pytest

from tsuika.models.diffusion import bundled_folder, diffusion_model, generate, judge_at

pytestmark = pytest.mark.integration


def judged(model, judge, prompt: str) -> list[str]:
    images = generate(model, [prompt] * 16, list(range(16)), 25)  # the model's guidance
    return [judge.classes[i] for i in judge.classify(images * 2 - 1)]


def test_bundled_model_draws_what_it_knows_and_not_the_held_out_class() -> None:
    model = diffusion_model("fashion-diffusion")
    assert model.library.config.guidance_scale == 1.5  # measured at pretraining
    judge = judge_at(str(bundled_folder() / "judge"))
    assert judged(model, judge, "a photo of a trouser").count("trouser") >= 14
    assert judged(model, judge, "a photo of a bag").count("bag") >= 14
    shoes = judged(model, judge, "a photo of a shoe")
    assert shoes.count("sandal") + shoes.count("ankle boot") >= 10
    assert shoes.count("sneaker") <= 3


def test_the_bundled_pipeline_file_is_the_one_tsuika_exports() -> None:
    """The bundled model folder carries its own `pipeline.py` (plain diffusers loads it with
    `custom_pipeline=`), a verbatim copy of `tsuika/models/pixel_pipeline.py`, which exports
    write into every pixel-space folder: the two must not drift apart."""
    from tsuika.models import pixel_pipeline

    exported = Path(pixel_pipeline.__file__).read_bytes()
    bundled = Path(pixel_pipeline.__file__).parents[1] / "data/bundled/fashion-diffusion"
    assert (bundled / "pipeline.py").read_bytes() == exported
