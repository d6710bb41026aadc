"""Pretrain the bundled text-to-image model `fashion-diffusion`, and the judge that scores it.

Source data: the full Fashion-MNIST (60,000 training images, 10,000 test images), e.g. from
Debian's package::

    apt-get install dataset-fashion-mnist      # -> /usr/share/datasets/fashion-mnist/
    python scripts/pretrain_fashion_diffusion.py /usr/share/datasets/fashion-mnist

What it does (deterministic for a given device, seed 0):

1. Every image is resized 28 → 16 px (bilinear, antialiased) and scaled to [-1, 1].
2. **Judge**: a small CNN (`tsuika.models.judge.ImageJudge`) trained on the real training images
   of all ten classes; its per-class accuracy on the real test images is printed and saved.
3. **Diffusion model**: a pixel-space `UNet2DConditionModel` with cross-attention and a 2-layer
   CLIP text encoder (word tokenizer from `tsuika.models.diffusion_parts`), trained together
   from scratch with the ε-prediction MSE on captions such as "a photo of a trouser" — on
   every class **except sneaker**, which is left out so that tsuika's concept-learning methods
   have something new to teach. Sandals and ankle boots are sometimes captioned as "a shoe",
   the class word DreamBooth's prior preservation uses for a new kind of shoe. One caption in
   ten is dropped (empty prompt) so that sampling can use classifier-free guidance.
   AdamW, lr 1e-3 with 200 warm-up steps and cosine decay, batch 64, gradient norm clipped at
   1, an exponential moving average (0.999) of the weights is what is saved.
4. **Guidance**: the classifier-free guidance scale the model samples best with is measured
   (the judge's mean per-class accuracy on 32 generations of every pretrained class, 25 DDIM
   steps, at each scale of `GUIDANCE_SCALES`) and recorded as `guidance_scale` in
   model_index.json, where tsuika and the pipeline read it. `--guidance-only` measures it
   again for a finished folder without training.
5. The folder is written as a diffusers pipeline (`model_index.json`, `unet/`,
   `text_encoder/`, `tokenizer/`, `scheduler/` — a DDIM scheduler for sampling — and
   `pipeline.py`), with `judge/` and `pretraining.json` (loss curve, seconds, settings).

Checkpoints every 500 steps go to `<out>.partial/`; running the same command again resumes.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import math
import random
import shutil
import struct
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from tokenizers import pre_tokenizers

from tsuika.models import pixel_pipeline
from tsuika.models.diffusion_parts import noise_scheduler, pixel_unet, text_encoder, word_tokenizer
from tsuika.models.judge import ImageJudge
from tsuika.models.pixel_pipeline import PixelDiffusionPipeline

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "src" / "tsuika" / "data" / "bundled" / "fashion-diffusion"
CLASSES = (
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)  # fmt: skip
HELD_OUT = "sneaker"
SUPERCLASS = {"sandal": "shoe", "ankle boot": "shoe"}
TEMPLATES = (
    "a photo of a {}",
    "a picture of a {}",
    "an image of a {}",
    "a photo of the {}",
    "a product photo of a {}",
    "a {}",
)
RARE_WORDS = ("sks", "zwx", "ohwx", "qrv", "vtk")  # never in a caption: identifiers for DreamBooth
SIZE, MAX_TOKENS, WIDTH = 16, 16, 64
GUIDANCE_SCALES = (1.0, 1.5, 2.0, 3.0, 5.0)


def read_idx(directory: Path, name: str) -> np.ndarray:
    path = directory / f"{name}.gz"
    with gzip.open(path) if path.exists() else open(directory / name, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = struct.unpack(f">{dims}I", data[4 : 4 + 4 * dims])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def images_at(array: np.ndarray) -> torch.Tensor:
    """uint8 [N, 28, 28] → float [N, 1, 16, 16] in [-1, 1]."""
    x = torch.from_numpy(array.copy()).float().div(255).unsqueeze(1)
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(0, 1) * 2 - 1


def vocabulary() -> list[str]:
    """Every word of every caption (as the tokenizer splits it), then the rare identifiers."""
    split = pre_tokenizers.Whitespace().pre_tokenize_str
    names = [n for n in (*CLASSES, *SUPERCLASS.values()) if n != HELD_OUT]
    texts = [t.format("") for t in TEMPLATES] + names
    return [*sorted({w for text in texts for w, _ in split(text)}), *RARE_WORDS]


def caption(label: int, rng: random.Random) -> str:
    if rng.random() < 0.1:
        return ""
    name = CLASSES[label]
    if name in SUPERCLASS and rng.random() < 0.25:
        name = SUPERCLASS[name]
    return rng.choice(TEMPLATES).format(name)


def train_judge(train_x, train_y, test_x, test_y, device) -> tuple[ImageJudge, dict]:
    torch.manual_seed(0)
    judge = ImageJudge(list(CLASSES), SIZE).to(device)
    optimizer = torch.optim.AdamW(judge.parameters(), lr=2e-3, weight_decay=1e-4)
    epochs, batch = 6, 128
    steps = epochs * math.ceil(len(train_x) / batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 2e-3, total_steps=steps)
    for epoch in range(epochs):
        judge.train()
        order = torch.randperm(len(train_x))
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            x = train_x[idx].to(device)
            # Small shifts: generated images are not pixel-aligned with the real ones.
            x = torch.roll(x, shifts=(random.randint(-1, 1), random.randint(-1, 1)), dims=(2, 3))
            loss = F.cross_entropy(judge(x), train_y[idx].to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        print(f"judge epoch {epoch + 1}: loss {loss.item():.3f}", flush=True)
    predicted = judge.cpu().classify(test_x)
    per_class = {
        name: float((predicted[test_y == k] == k).float().mean()) for k, name in enumerate(CLASSES)
    }
    accuracy = float((predicted == test_y).float().mean())
    print(f"judge test accuracy {accuracy:.4f}", per_class, flush=True)
    return judge, {"test_accuracy": accuracy, "per_class": per_class}


@torch.no_grad()
def measure_guidance(pipe: PixelDiffusionPipeline, judge: ImageJudge) -> dict:
    """Mean per-class judge accuracy of the pretrained classes' generations at each scale."""
    judge = judge.cpu().eval()
    known = [c for c in CLASSES if c != HELD_OUT]
    accuracy = {}
    for scale in GUIDANCE_SCALES:
        per_class = []
        for name in known:
            noise = torch.stack(
                [torch.randn(1, SIZE, SIZE, generator=torch.Generator().manual_seed(s))
                 for s in range(32)]
            )  # fmt: skip
            images = pipe(
                [f"a photo of a {name}"] * 32,
                num_inference_steps=25,
                guidance_scale=scale,
                latents=noise,
                output_type="pt",
            ).images
            predicted = judge.classify(images * 2 - 1)
            per_class.append(float((predicted == CLASSES.index(name)).float().mean()))
        accuracy[str(scale)] = sum(per_class) / len(per_class)
        print(f"guidance {scale}: mean per-class accuracy {accuracy[str(scale)]:.3f}", flush=True)
    best = max(GUIDANCE_SCALES, key=lambda scale: accuracy[str(scale)])
    return {"best": best, "accuracy": accuracy, "images_per_class": 32, "steps": 25}


def record_guidance(folder: Path) -> dict:
    """Measure the guidance of the pipeline in `folder`; write it to model_index.json and
    pretraining.json."""
    pipe = PixelDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    figures = measure_guidance(pipe, ImageJudge.load(folder / "judge"))
    index = json.loads((folder / "model_index.json").read_text())
    index["guidance_scale"] = figures["best"]
    (folder / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    record_file = folder / "pretraining.json"
    if record_file.is_file():
        record = json.loads(record_file.read_text())
        record["guidance"] = figures
        record_file.write_text(json.dumps(record, indent=1) + "\n")
    return figures


def build(tokenizer):
    encoder = text_encoder(tokenizer, width=WIDTH, layers=2, heads=4)
    unet = pixel_unet(SIZE, 1, (32, 64, 64), cross_attention_dim=WIDTH)
    return unet, encoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "source", type=Path, nargs="?", help="folder with the four Fashion-MNIST IDX files"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--steps", type=int, default=6000)  # the shipped run
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--guidance-only", action="store_true", help="measure the guidance of a finished --out"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.guidance_only:
        print(record_guidance(args.out))
        return
    device = torch.device(args.device)
    started = time.perf_counter()

    train_x = images_at(read_idx(args.source, "train-images-idx3-ubyte"))
    train_y = torch.from_numpy(read_idx(args.source, "train-labels-idx1-ubyte").astype(np.int64))
    test_x = images_at(read_idx(args.source, "t10k-images-idx3-ubyte"))
    test_y = torch.from_numpy(read_idx(args.source, "t10k-labels-idx1-ubyte").astype(np.int64))

    partial = args.out.with_name(args.out.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    if (partial / "judge" / "judge.json").exists():
        judge_figures = json.loads((partial / "judge_figures.json").read_text())
    else:
        judge, judge_figures = train_judge(train_x, train_y, test_x, test_y, device)
        judge.save(partial / "judge")
        (partial / "judge_figures.json").write_text(json.dumps(judge_figures))

    tokenizer = word_tokenizer(vocabulary(), MAX_TOKENS)
    torch.manual_seed(0)
    unet, encoder = build(tokenizer)
    unet.to(device), encoder.to(device)
    ema = copy.deepcopy(torch.nn.ModuleDict({"unet": unet, "text_encoder": encoder}))
    ema.requires_grad_(False)
    params = [*unet.parameters(), *encoder.parameters()]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    scheduler = noise_scheduler()
    keep = (train_y != CLASSES.index(HELD_OUT)).nonzero().squeeze(1)
    pool_x, pool_y = train_x[keep], train_y[keep]
    curve: list[dict] = []
    step, spent = 0, 0.0
    state_file = partial / "state.pt"
    if state_file.exists():
        state = torch.load(state_file, weights_only=True, map_location=device)
        unet.load_state_dict(state["unet"]), encoder.load_state_dict(state["text_encoder"])
        ema.load_state_dict(state["ema"]), optimizer.load_state_dict(state["optimizer"])
        step, spent = int(state["step"]), float(state["seconds"])
        curve = json.loads((partial / "curve.json").read_text())
        print(f"resumed at step {step}", flush=True)

    def lr_at(i: int) -> float:
        if i < 200:
            return args.lr * (i + 1) / 200
        progress = (i - 200) / max(1, args.steps - 200)
        return 1e-5 + (args.lr - 1e-5) * 0.5 * (1 + math.cos(math.pi * progress))

    generator = torch.Generator().manual_seed(1234 + step)
    rng = random.Random(step)
    running, tick = 0.0, time.perf_counter()
    unet.train(), encoder.train()
    while step < args.steps:
        idx = torch.randint(len(pool_x), (args.batch,), generator=generator)
        x = pool_x[idx].to(device)
        captions = [caption(int(y), rng) for y in pool_y[idx]]
        ids = tokenizer(captions, padding="max_length", max_length=MAX_TOKENS, truncation=True,
                        return_tensors="pt").input_ids.to(device)  # fmt: skip
        noise = torch.randn(x.shape, generator=generator).to(device)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(x),), generator=generator)
        noisy = scheduler.add_noise(x, noise, t.to(device))
        predicted = unet(noisy, t.to(device), encoder_hidden_states=encoder(ids)[0]).sample
        loss = F.mse_loss(predicted, noise)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        with torch.no_grad():
            live = {"unet": unet, "text_encoder": encoder}
            for name, module in ema.items():
                for e, p in zip(module.parameters(), live[name].parameters(), strict=True):
                    e.lerp_(p, 1 - 0.999)
        step += 1
        running += loss.item()
        if step % 50 == 0:
            now = time.perf_counter()
            spent += now - tick
            tick = now
            curve.append({"step": step, "loss": running / 50, "seconds": round(spent, 1)})
            running = 0.0
            print(f"step {step}/{args.steps} loss {curve[-1]['loss']:.4f} {spent:.0f}s", flush=True)
        if step % 500 == 0 or step == args.steps:
            state = {"unet": unet.state_dict(), "text_encoder": encoder.state_dict(),
                     "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                     "step": step, "seconds": spent}  # fmt: skip
            torch.save(state, state_file.with_suffix(".tmp"))
            state_file.with_suffix(".tmp").replace(state_file)
            (partial / "curve.json").write_text(json.dumps(curve))

    sampler = DDIMScheduler.from_config(scheduler.config)
    pipe = PixelDiffusionPipeline(
        unet=ema["unet"].cpu(), text_encoder=ema["text_encoder"].cpu(), tokenizer=tokenizer,
        scheduler=sampler,
    )  # fmt: skip
    out = args.out.with_name(args.out.name + ".new")
    shutil.rmtree(out, ignore_errors=True)
    pipe.save_pretrained(out, safe_serialization=True)
    shutil.copy(pixel_pipeline.__file__, out / "pipeline.py")
    shutil.copytree(partial / "judge", out / "judge")
    record = {
        "steps": step,
        "batch": args.batch,
        "lr": args.lr,
        "device": args.device,
        "threads": args.threads,
        "train_seconds": round(spent, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
        "images_seen": step * args.batch,
        "pool": len(pool_x),
        "held_out": HELD_OUT,
        "classes": list(CLASSES),
        "superclass": SUPERCLASS,
        "templates": list(TEMPLATES),
        "rare_words": list(RARE_WORDS),
        "size": SIZE,
        "judge": judge_figures,
        "loss_curve": curve,
    }
    (out / "pretraining.json").write_text(json.dumps(record, indent=1) + "\n")
    record_guidance(out)
    if args.out.exists():
        shutil.rmtree(args.out)
    out.replace(args.out)
    print(f"wrote {args.out} ({step} steps, {spent:.0f} s of training)")


if __name__ == "__main__":
    main()
