"""Teaching a text-to-image model a concept, on a tiny pipeline built in code (no hub):
UNet `block_out_channels=(32, 64)`, cross-attention width 32, a 2-layer CLIP text encoder and
a word tokenizer written here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, StableDiffusionPipeline
from PIL import Image
from safetensors.torch import load_file

from tsuika.api import train
from tsuika.errors import TsuikaError
from tsuika.finished_run import load
from tsuika.methods.concepts import prior_preservation_loss
from tsuika.models.diffusion import diffusion_model, generate
from tsuika.models.diffusion_parts import noise_scheduler, pixel_unet, text_encoder, word_tokenizer
from tsuika.models.judge import ImageJudge
from tsuika.models.pixel_pipeline import PixelDiffusionPipeline

CLASSES = ["shoe", "bag", "sneaker"]
WORDS = ["a", "photo", "of", "shoe", "bag", "sks"]


def tiny_pipeline() -> PixelDiffusionPipeline:
    torch.manual_seed(0)
    tokenizer = word_tokenizer(WORDS, max_length=12)
    encoder = text_encoder(tokenizer, width=32, layers=2, heads=2)
    unet = pixel_unet(8, 1, (32, 64), cross_attention_dim=32)
    scheduler = DDIMScheduler.from_config(noise_scheduler().config)
    pipeline = PixelDiffusionPipeline(unet, encoder, tokenizer, scheduler)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny pipeline as a diffusers folder, with a (random) judge of three classes."""
    folder = tmp_path_factory.mktemp("tiny-diffusion")
    tiny_pipeline().save_pretrained(folder, safe_serialization=True)
    torch.manual_seed(0)
    ImageJudge(CLASSES, 8).save(folder / "judge")
    return folder


@pytest.fixture(scope="module")
def sneakers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("concept") / "sneaker"  # the name says the judge's class
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (12, 12), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def tiny_run(folder: Path, data: Path, method: str, out: Path, **sections) -> object:
    settings = {
        "model": str(folder),
        "method": method,
        "data": {"train": str(data)},
        "diffusion": {
            "class_word": "shoe",
            "eval_images": 2,
            "val_images": 2,
            "sample_steps": 2,
            "repeats": 2,
            "lr": 1e-2,
        },
        "dreambooth": {"class_images": 2},
        "train": {"epochs": 1, "batch_size": 4},
        "output": str(out),
        "progress": False,
    }
    for key, value in sections.items():
        settings[key] = {**settings.get(key, {}), **value}
    return train(**settings)


# -- the losses and the shared step -----------------------------------------------------------
def test_prior_preservation_loss_is_the_hand_computed_sum() -> None:
    losses = torch.tensor([1.0, 3.0, 10.0, 20.0, 30.0])
    prior = torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0])
    assert prior_preservation_loss(losses, prior, 0.5).item() == pytest.approx(2.0 + 0.5 * 20.0)
    assert prior_preservation_loss(losses, prior, 0.0).item() == pytest.approx(2.0)
    only_prior = prior_preservation_loss(losses[2:], prior[2:], 1.0)
    assert only_prior.item() == pytest.approx(20.0)


def test_denoising_step_targets_the_noise_and_the_velocity(tiny_folder: Path) -> None:
    model = diffusion_model(str(tiny_folder))
    stage = model.stages[1]
    torch.manual_seed(0)
    state = {
        "pixels": torch.rand(2, 1, 8, 8) * 2 - 1,
        "noise": torch.randn(2, 1, 8, 8),
        "u": torch.tensor([0.0, 0.5]),
        "context": torch.randn(2, 12, 32),
    }
    out = stage(state)
    assert torch.equal(out["target"], state["noise"])
    stage.scheduler.register_to_config(prediction_type="v_prediction")
    velocity = stage(state)["target"]
    t = torch.tensor([0, 500])
    expected = stage.scheduler.get_velocity(state["pixels"], state["noise"], t)
    assert torch.allclose(velocity, expected)
    assert not torch.allclose(velocity, state["noise"])


# -- Textual Inversion ------------------------------------------------------------------------
@pytest.mark.slow
def test_textual_inversion_changes_only_the_new_rows(tiny_folder, sneakers, tmp_path) -> None:
    base = diffusion_model(str(tiny_folder)).library.text_encoder.get_input_embeddings().weight
    run = tiny_run(
        tiny_folder, sneakers, "textual-inversion", tmp_path, textual_inversion={"vectors": 2}
    )
    pipeline = run.model.library
    weight = pipeline.text_encoder.get_input_embeddings().weight
    assert weight.shape[0] == base.shape[0] + 2
    assert torch.equal(weight[: base.shape[0]], base)  # every old row exactly as it was
    new = weight[base.shape[0] :]
    shoe = base[pipeline.tokenizer.convert_tokens_to_ids("shoe")]
    assert not torch.equal(new[0], shoe) and not torch.equal(new[1], shoe)  # both learned
    for name, param in pipeline.unet.state_dict().items():
        assert torch.equal(param, diffusion_model(str(tiny_folder)).library.unet.state_dict()[name])


def test_learned_embeds_load_in_diffusers(tiny_folder, sneakers, tmp_path) -> None:
    run = tiny_run(tiny_folder, sneakers, "textual-inversion", tmp_path)
    path = run.path / "model" / "learned_embeds.safetensors"
    saved = load_file(str(path))
    assert list(saved) == ["<concept>"] and saved["<concept>"].shape == (1, 32)
    fresh = tiny_pipeline()
    fresh.load_textual_inversion(str(path))  # diffusers' own loader
    prompt = run.summary["concept"]["prompt"]
    assert "<concept>" in prompt
    mine = generate(run.model, [prompt], [3], 2)  # both at the model's own guidance
    noise = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    theirs = fresh(prompt, num_inference_steps=2, latents=noise, output_type="pt").images
    assert torch.allclose(mine, theirs, atol=1e-6)


def test_textual_inversion_refuses_a_forced_cache(tiny_folder, sneakers, tmp_path) -> None:
    with pytest.raises(TsuikaError, match="cannot be cached"):
        tiny_run(tiny_folder, sneakers, "textual-inversion", tmp_path, train={"cache": "memory"})


# -- DreamBooth -------------------------------------------------------------------------------
def test_dreambooth_folder_loads_in_plain_diffusers(tiny_folder, sneakers, tmp_path) -> None:
    run = tiny_run(tiny_folder, sneakers, "dreambooth", tmp_path)
    folder = run.path / "model" / "pipeline"
    plain = DiffusionPipeline.from_pretrained(
        str(folder), custom_pipeline=str(folder), trust_remote_code=True
    )
    prompt = run.summary["concept"]["prompt"]
    assert prompt == "a photo of a sks shoe"
    noise = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    theirs = plain(prompt, num_inference_steps=2, latents=noise, output_type="pt").images
    assert torch.allclose(generate(run.model, [prompt], [5], 2), theirs, atol=1e-6)
    base_unet = diffusion_model(str(tiny_folder)).library.unet.state_dict()
    changed = [
        k
        for k, v in run.model.library.unet.state_dict().items()
        if not torch.equal(v, base_unet[k])
    ]
    assert changed  # the UNet trained
    assert run.summary["data"]["train"] == 6  # 3 images × 2 repeats; class images come on top


def test_dreambooth_cache_on_equals_cache_off(tiny_folder, sneakers, tmp_path) -> None:
    on = tiny_run(tiny_folder, sneakers, "dreambooth", tmp_path / "on")
    off = tiny_run(tiny_folder, sneakers, "dreambooth", tmp_path / "off", train={"cache": "off"})
    assert on.summary["training"]["optimizer_steps"] == off.summary["training"]["optimizer_steps"]
    a, b = on.model.library.unet.state_dict(), off.model.library.unet.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


# -- LoRA -------------------------------------------------------------------------------------
def test_lora_at_scale_zero_is_the_base_and_only_lora_learns(
    tiny_folder, sneakers, tmp_path
) -> None:
    from diffusers.utils.peft_utils import scale_lora_layers, unscale_lora_layers

    run = tiny_run(tiny_folder, sneakers, "dreambooth-lora", tmp_path)
    base = diffusion_model(str(tiny_folder))
    prompt = ["a photo of a sks shoe"]
    adapted = generate(run.model, prompt, [1], 2, 3.0)
    assert not torch.allclose(adapted, generate(base, prompt, [1], 2, 3.0))
    unet = run.model.library.unet
    scale_lora_layers(unet, 0.0)
    assert torch.equal(
        generate(run.model, prompt, [1], 2, 3.0), generate(base, prompt, [1], 2, 3.0)
    )
    unscale_lora_layers(unet, 0.0)
    trained = [n for n, p in unet.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n for n in trained)
    # every base weight is untouched: LoRA-wrapped layers keep theirs under `.base_layer.`
    adapted_base = {
        name.replace(".base_layer.", "."): tensor
        for name, tensor in unet.state_dict().items()
        if "lora_" not in name
    }
    base_state = base.library.unet.state_dict()
    assert adapted_base.keys() == base_state.keys()
    assert all(torch.equal(base_state[name], adapted_base[name]) for name in base_state)


def test_lora_weights_load_in_diffusers(tiny_folder, sneakers, tmp_path) -> None:
    run = tiny_run(tiny_folder, sneakers, "dreambooth-lora", tmp_path, adapter={"r": 4, "alpha": 8})
    fresh = tiny_pipeline()
    fresh.load_lora_weights(str(run.path / "model"))  # diffusers' own loader
    noise = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    prompt = "a photo of a sks shoe"
    theirs = fresh(prompt, num_inference_steps=2, latents=noise, output_type="pt").images
    assert torch.allclose(generate(run.model, [prompt], [2], 2), theirs, atol=1e-6)
    reloaded = load(run.path)
    assert torch.equal(
        generate(reloaded.model, [prompt], [2], 2, 3.0), generate(run.model, [prompt], [2], 2, 3.0)
    )


# -- hypernetwork ----------------------------------------------------------------------------
def test_hypernetwork_at_multiplier_zero_is_the_base_and_only_it_learns(
    tiny_folder, sneakers, tmp_path
) -> None:
    run = tiny_run(tiny_folder, sneakers, "hypernetwork", tmp_path)
    base = diffusion_model(str(tiny_folder))
    prompt = ["a photo of a shoe"]
    hypernetwork = run.model.stages[1].hypernetwork
    assert not torch.allclose(
        generate(run.model, prompt, [1], 2, 3.0), generate(base, prompt, [1], 2, 3.0)
    )
    hypernetwork.multiplier = 0.0
    assert torch.equal(
        generate(run.model, prompt, [1], 2, 3.0), generate(base, prompt, [1], 2, 3.0)
    )
    hypernetwork.multiplier = 1.0
    trained = [n for n, p in run.model.named_parameters() if p.requires_grad]
    assert trained and all(".hypernetwork." in n for n in trained)
    base_state = base.state_dict()
    for name, tensor in run.model.state_dict().items():
        if ".hypernetwork." not in name:
            assert torch.equal(tensor, base_state[name]), name


def test_hypernetwork_gradients_reach_only_its_modules(tiny_folder) -> None:
    from tsuika.methods.concepts import _attach_hypernetwork
    from tsuika.models.hypernetwork import new_hypernetwork

    model = diffusion_model(str(tiny_folder))
    model.requires_grad_(False)
    hypernetwork = new_hypernetwork(model.library.unet, [1, 2, 1])
    _attach_hypernetwork(model, hypernetwork, 1.0)
    hypernetwork.requires_grad_(True)
    torch.manual_seed(0)
    state = {
        "pixels": torch.rand(2, 1, 8, 8) * 2 - 1,
        "noise": torch.randn(2, 1, 8, 8),
        "u": torch.tensor([0.2, 0.7]),
        "input_ids": model.preprocess.token_ids(["a photo of a shoe"] * 2),
    }
    out = model(state, 0)
    ((out["prediction"] - out["target"]) ** 2).mean().backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {n for n, _ in model.named_parameters() if ".hypernetwork." in n}
    # the zero-initialised last layer gets a gradient; behind it, the first layer's is 0
    value_module = hypernetwork.layers["32"][1].linear
    assert value_module[-1].weight.grad.abs().sum() > 0
    assert torch.equal(value_module[0].weight.grad, torch.zeros_like(value_module[0].weight))


def test_hypernetwork_file_round_trips_and_reloads_the_run(tiny_folder, sneakers, tmp_path) -> None:
    from tsuika.models.hypernetwork import load_hypernetwork

    run = tiny_run(
        tiny_folder, sneakers, "hypernetwork", tmp_path, hypernetwork={"multiplier": 0.5}
    )
    path = run.path / "model" / "hypernetwork.safetensors"
    saved = load_hypernetwork(path)  # the file alone rebuilds it
    ours = run.model.stages[1].hypernetwork
    assert saved.state_dict().keys() == ours.state_dict().keys()
    assert all(torch.equal(saved.state_dict()[k], ours.state_dict()[k]) for k in ours.state_dict())
    names = load_file(str(path)).keys()
    assert "32.0.linear.0.weight" in names and "32.1.linear.1.bias" in names  # web UI layout
    reloaded = load(run.path)
    assert reloaded.model.stages[1].hypernetwork.multiplier == 0.5
    prompt = ["a photo of a shoe"]
    assert torch.equal(
        generate(reloaded.model, prompt, [3], 2, 3.0), generate(run.model, prompt, [3], 2, 3.0)
    )


# -- the command line -------------------------------------------------------------------------
def test_cli_trains_and_draws_a_png_grid_without_overwriting(
    tiny_folder, sneakers, tmp_path, capsys
) -> None:
    from tsuika.cli import main

    argv = ["train", "--model", str(tiny_folder), "--method", "hypernetwork"]
    argv += ["--data", str(sneakers), "--output", str(tmp_path), "--quiet"]
    argv += ["diffusion.class_word=shoe", "diffusion.eval_images=2", "diffusion.val_images=2"]
    argv += ["diffusion.sample_steps=2", "diffusion.repeats=2", "train.epochs=1"]
    assert main(argv) == 0
    (run,) = [p for p in tmp_path.iterdir() if (p / "summary.json").is_file()]
    capsys.readouterr()
    draw = ["generate", str(run), "a photo of a shoe", "a photo of a bag", "--n", "3"]
    assert main(draw) == 0
    first = run / "generated" / "grid-001-seed0.png"
    assert str(first) in capsys.readouterr().out
    grid = Image.open(first)
    assert grid.size == (3 * (8 * 4 + 2) + 2, 2 * (8 * 4 + 2) + 2)  # 3 columns, 2 rows of 8 px ×4
    assert main(draw) == 0
    assert (run / "generated" / "grid-002-seed0.png").is_file()  # a second grid, not a rewrite
    assert main([*draw, "--out", str(first)]) == 2
    assert "never overwrites" in capsys.readouterr().err
    # Never through a link (issue 31, item 3): a dangling --out, or `generated/` elsewhere.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "dangling.png").symlink_to(elsewhere / "made.png")
    assert main([*draw, "--out", str(tmp_path / "dangling.png")]) == 2
    shutil.move(run / "generated", elsewhere / "generated")
    (run / "generated").symlink_to(elsewhere / "generated")
    assert main(draw) == 2
    assert capsys.readouterr().err.count("is a symbolic link") == 2
    assert sorted(p.name for p in elsewhere.rglob("*")) == [
        "generated",
        "grid-001-seed0.png",
        "grid-002-seed0.png",
    ]


# -- evidence and bad input -------------------------------------------------------------------
def test_summary_has_fidelity_prior_preservation_and_the_base(
    tiny_folder, sneakers, tmp_path
) -> None:
    run = tiny_run(tiny_folder, sneakers, "dreambooth", tmp_path)
    summary = json.loads((run.path / "summary.json").read_text())
    assert set(summary["test"]) >= {"concept_fidelity", "prior_preservation", "accuracy/shoe"}
    assert "accuracy/sneaker" not in summary["test"]  # the concept is not a known class
    assert summary["baselines"]["base"]["title"] == "the pretrained model before adaptation"
    assert summary["data"]["test"] == 2 * 3  # concept + 2 known classes, 2 seeds each
    assert "forgetting" in summary["verdicts"] and "memory" in summary
    assert summary["concept"]["per_class"].keys() == {"shoe", "bag"}
    assert summary["model_kind"] == "text-to-image"
    report = (run.path / "report.html").read_text()
    assert "The new concept and what the model knew" in report
    assert "prior preservation" in report


def test_a_single_checkpoint_needs_its_config_folder(tmp_path) -> None:
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"x")
    with pytest.raises(TsuikaError, match="config folder"):
        train(
            model=str(file), method="dreambooth", diffusion={"class_word": "shoe"}, progress=False
        )


# -- latent diffusion (the Stable Diffusion layout) -------------------------------------------
def tiny_stable_diffusion() -> StableDiffusionPipeline:
    """The tiny pipeline's text side and a UNet on 4 latent channels, with a 2-level VAE
    (16 px images ↔ 8 px latents): a Stable Diffusion 1.x folder in miniature."""
    torch.manual_seed(0)
    tokenizer = word_tokenizer(WORDS, max_length=12)
    encoder = text_encoder(tokenizer, width=32, layers=2, heads=2)
    unet = pixel_unet(8, 4, (32, 64), cross_attention_dim=32)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 32),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=32, sample_size=16,
    )  # fmt: skip
    # as Stable Diffusion's scheduler configs are (the pipeline rewrites others, with a warning)
    scheduler = DDIMScheduler.from_config(
        noise_scheduler().config, steps_offset=1, clip_sample=False
    )
    return StableDiffusionPipeline(
        vae, encoder, tokenizer, unet, scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def tiny_sd_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-sd")
    tiny_stable_diffusion().save_pretrained(folder, safe_serialization=True)
    torch.manual_seed(0)
    ImageJudge(CLASSES, 16, channels=3).save(folder / "judge")
    return folder


def sd_noise(seed: int) -> torch.Tensor:
    return torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_stable_diffusion_layout_caches_vae_latents_once(tiny_sd_folder, sneakers, tmp_path):
    model = diffusion_model(str(tiny_sd_folder))
    assert model.stage_names == ["vae", "text_encoder", "unet"]
    assert model.spec["size"] == 16 and model.spec["channels"] == 3  # the VAE's input
    on = tiny_run(tiny_sd_folder, sneakers, "dreambooth", tmp_path / "on")
    off = tiny_run(tiny_sd_folder, sneakers, "dreambooth", tmp_path / "off", train={"cache": "off"})
    a, b = on.model.library.unet.state_dict(), off.model.library.unet.state_dict()
    assert any(not torch.equal(a[k], model.library.unet.state_dict()[k]) for k in a)  # trained
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    vae = on.model.library.vae.state_dict()
    assert all(torch.equal(v, model.library.vae.state_dict()[k]) for k, v in vae.items())
    # the adapted pipeline is a plain Stable Diffusion folder
    plain = StableDiffusionPipeline.from_pretrained(str(on.path / "model" / "pipeline"))
    prompt = on.summary["concept"]["prompt"]
    theirs = plain(prompt, num_inference_steps=2, latents=sd_noise(4), output_type="pt").images
    assert theirs.shape == (1, 3, 16, 16)
    assert torch.allclose(generate(on.model, [prompt], [4], 2), theirs, atol=1e-5)


def test_stable_diffusion_textual_inversion_and_lora_load_in_diffusers(
    tiny_sd_folder, sneakers, tmp_path
) -> None:
    inversion = tiny_run(tiny_sd_folder, sneakers, "textual-inversion", tmp_path / "ti")
    lora = tiny_run(tiny_sd_folder, sneakers, "dreambooth-lora", tmp_path / "lora")
    for run, file in ((inversion, "learned_embeds.safetensors"), (lora, None)):
        plain = StableDiffusionPipeline.from_pretrained(str(tiny_sd_folder))
        if file:  # diffusers' own loaders
            plain.load_textual_inversion(str(run.path / "model" / file))
        else:
            plain.load_lora_weights(str(run.path / "model"))
        prompt = run.summary["concept"]["prompt"]
        theirs = plain(prompt, num_inference_steps=2, latents=sd_noise(6), output_type="pt")
        assert torch.allclose(generate(run.model, [prompt], [6], 2), theirs.images, atol=1e-5)


def test_a_latent_folder_without_its_vae_is_refused_clearly(tiny_folder, tmp_path) -> None:
    folder = tmp_path / "sd"
    shutil.copytree(tiny_folder, folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["vae"] = ["diffusers", "AutoencoderKL"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(TsuikaError, match="lacks vae/"):
        diffusion_model(str(folder))


def test_other_data_must_say_what_the_concept_is(tiny_folder, sneakers) -> None:
    with pytest.raises(TsuikaError, match="class_word"):
        train(
            model=str(tiny_folder),
            method="dreambooth",
            data={"train": str(sneakers)},
            progress=False,
        )


def test_guidance_defaults_to_the_folders_recommendation(tiny_folder, tmp_path) -> None:
    from tsuika.config import Config
    from tsuika.tasks.text_to_image import TextToImage

    folder = tmp_path / "guided"
    shutil.copytree(tiny_folder, folder)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["guidance_scale"] == 7.5  # a folder saved without a choice: Stable Diffusion's
    index["guidance_scale"] = 1.5
    (folder / "model_index.json").write_text(json.dumps(index))
    settings = {"model": str(folder), "task": "text-to-image", "diffusion": {"caption": "a bag"}}
    task = TextToImage.from_config(Config.model_validate(settings))
    assert task.settings["guidance"] == 1.5
    assert diffusion_model(str(folder)).library.config.guidance_scale == 1.5
    settings["diffusion"]["guidance"] = 4.0  # the user's choice wins
    assert TextToImage.from_config(Config.model_validate(settings)).settings["guidance"] == 4.0
    index["guidance_scale"] = "high"
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(TsuikaError, match="guidance_scale 'high' is not a number"):
        diffusion_model(str(folder))


def test_loading_the_judge_draws_no_random_numbers(tmp_path):
    """The judge is loaded once per process (memoised): a draw from the global generator there
    gave the first run of a process other random numbers than every later run with the same
    seed (the hypernetwork's cache on/off cell differed by 0.009 when it ran first)."""
    from tsuika.models.diffusion import judge_at

    ImageJudge(CLASSES, 8).save(tmp_path / "judge")
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    judge = judge_at(str(tmp_path / "judge"))
    assert torch.equal(torch.random.get_rng_state(), before)
    assert judge.classes == CLASSES
