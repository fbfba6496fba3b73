"""Training step time of the demo model (`siglip-serve train`'s default architecture) and of a
base-224 fine-tune on this machine:
the attention kernel (PyTorch SDPA vs transformers' eager matmul + softmax), the MLP activation
(exact GELU vs its tanh approximation) and the autocast dtype; and what another demo architecture
(a finer patch grid, more or fewer layers, a wider or narrower tower, more heads) costs a step, as `siglip-serve train`
runs it (bf16 autocast, eager attention), which decides what fits the 30-minute budget.

One step is what `train()` runs: the vision tower on a batch of images, the text tower on the batch's
captions plus the label bank (64 tokens, no mask), the sigmoid loss, backward, gradient clipping,
AdamW. Inputs are random (speed does not depend on them). The baseline is the earlier recipe, SDPA
with the tanh GELU, measured in the same run, interleaved with the others (a few steps each in
turn), on the same weights. The loss on one batch is compared with the baseline's: the kernels
compute the same function, the exact GELU a slightly different one (a different model, trained as such).

    python bench/train_step.py --quick   # smoke: a few steps
    python bench/train_step.py           # ~4 min on this 2-core CPU
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import common
from common import Report, stage

LABEL_BANK = 62  # shapes.label_captions: 6 shapes + 8 colors + 48 combinations
ROUND = 5  # timed steps of one kernel before switching to the other


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Smoke run: 2 timed steps per row.")
    parser.add_argument("--batch-size", type=int, default=64, help="Images per step (the train default).")
    parser.add_argument("--steps", type=int, default=60, help="Timed steps per row.")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--base-batch", type=int, default=8,
                        help="Images per step for the base-224 fine-tuning rows (texts: twice as many; 0: skip).")
    parser.add_argument("--base-steps", type=int, default=4, help="Timed steps per base-224 row.")
    parser.add_argument("--size-steps", type=int, default=30,
                        help="Timed steps per demo architecture variant (0: skip that table).")
    parser.add_argument("--out-dir", type=Path, default=common.RESULTS_DIR)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.warmup, args.base_batch, args.base_steps, args.size_steps = ROUND, 1, 2, 1, ROUND
    return args


def step_loss(module, images, texts, positives, bf16: bool):
    """The sigmoid loss of one batch, as `train()` computes it (autocast around the two towers only)."""
    import torch

    from siglip_serve.training.loss import sigmoid_loss

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        image_embeds = module.vision_model(pixel_values=images).pooler_output
        text_embeds = module.text_model(input_ids=texts).pooler_output
    return sigmoid_loss(image_embeds.float(), text_embeds.float(), module.logit_scale, module.logit_bias,
                        positives)


def train_step(module, optimizer, images, texts, positives, bf16: bool) -> None:
    """One optimizer step as `train()` runs it: loss, backward, clipping to 1.0, AdamW."""
    import torch

    loss = step_loss(module, images, texts, positives, bf16)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
    optimizer.step()


def time_interleaved(label: str, calls: dict, *, steps: int, warmup: int, round_size: int) -> dict[object, list]:
    """Seconds per call of each of `calls` (key -> no-argument step), taking turns every `round_size`
    calls, so that a drifting machine affects every variant alike."""
    times: dict[object, list[float]] = {key: [] for key in calls}
    with stage(f"{label}: {len(calls)} variants, interleaved"):
        for _ in range(warmup):
            for call in calls.values():
                call()
        for _ in range(max(1, steps // round_size)):
            for key, call in calls.items():
                times[key] += common.time_calls(call, warmup=0, iters=round_size)
    return times


def random_positives(images, texts):
    import torch

    return torch.rand(len(images), len(texts), generator=torch.Generator().manual_seed(0)) < 0.05


def measure(template, variants: tuple[tuple[str, str | None], ...], images, texts, *, steps: int, warmup: int,
            round_size: int) -> list[dict]:
    """Time every (attention, activation) variant of `template` under bf16 autocast and in float32;
    activation None keeps the checkpoint's. The first variant is the baseline of its dtype."""
    import torch
    from transformers import SiglipModel

    positives = random_positives(images, texts)

    def make(attention: str, activation: str | None) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        # A config of its own: the attention choice is read from the config at every forward.
        config = copy.deepcopy(template.config)
        for tower in (config.vision_config, config.text_config):
            tower.hidden_act = activation or tower.hidden_act
        module = SiglipModel._from_config(config, attn_implementation=attention)
        module.load_state_dict(template.state_dict())
        assert module.vision_model.config._attn_implementation == attention
        return module.train(), torch.optim.AdamW(module.parameters(), lr=1e-4)

    rows = []
    for bf16 in (True, False):
        dtype = "bfloat16" if bf16 else "float32"
        runs = {variant: make(*variant) for variant in variants}
        with torch.no_grad():
            losses = {variant: float(step_loss(module, images, texts, positives, bf16))
                      for variant, (module, _) in runs.items()}
        calls = {variant: (lambda m=module, o=optimizer, b=bf16: train_step(m, o, images, texts, positives, b))
                 for variant, (module, optimizer) in runs.items()}
        times = time_interleaved(dtype, calls, steps=steps, warmup=warmup, round_size=round_size)
        base_ms = common.summarize(times[variants[0]])["p50"] * 1000
        for (attention, activation), measured in times.items():
            median_ms = common.summarize(measured)["p50"] * 1000
            rows.append({"attention": attention, "activation": activation or template.config.vision_config.hidden_act,
                         "autocast": dtype, "batch": len(images), "texts": len(texts),
                         "steps_timed": len(measured), "median_ms": median_ms,
                         "images_per_s": len(images) / median_ms * 1000, "speedup": base_ms / median_ms,
                         "loss_diff": abs(losses[(attention, activation)] - losses[variants[0]])})
    return rows


# Other demo architectures, each a change from the shipped one (`Architecture()`); the last three are
# session 18's runs P, Q and R (README "What was tried"), a finer grid or more steps bought with width,
# depth or the text tower.
SIZES = {
    "shipped (96 px, patch 12: 8x8 grid)": {},
    "108 px, patch 12 (9x9 grid)": {"image_size": 108},
    "120 px, patch 12 (10x10 grid)": {"image_size": 120},
    "96 px, patch 8 (12x12 grid)": {"patch_size": 8},
    "6 vision layers": {"vision_layers": 6},
    "vision width 192": {"vision_width": 192},
    "heads of 32 (4 heads)": {"head_dim": 32},
    "120 px, patch 12 (10x10 grid), vision width 96 (2 heads of 48)": {"image_size": 120, "vision_width": 96,
                                                                        "head_dim": 48},
    "108 px, patch 12 (9x9 grid), 3 vision layers": {"image_size": 108, "vision_layers": 3},
    "1 text layer": {"text_layers": 1},
}


def measure_sizes(batch_size: int, steps: int, warmup: int) -> list[dict]:
    """ms per training step of each SIZES variant, as `siglip-serve train` runs the demo: bf16 autocast,
    eager attention, the batch's captions plus the label bank, interleaved so that all see one machine."""
    import dataclasses

    import torch

    from siglip_serve.training.options import Architecture
    from siglip_serve.training.train import new_module

    runs, calls = {}, {}
    for name, changes in SIZES.items():
        arch = dataclasses.replace(Architecture(), **changes)
        torch.manual_seed(0)
        module = new_module(arch, arch.vocab_size).train()
        module.set_attn_implementation("eager")
        images = torch.randn(batch_size, 3, arch.image_size, arch.image_size)
        texts = torch.randint(0, arch.vocab_size, (batch_size + LABEL_BANK, arch.text_length))
        optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)
        positives = random_positives(images, texts)
        runs[name] = (arch, module)
        calls[name] = lambda m=module, o=optimizer, i=images, t=texts, p=positives: train_step(m, o, i, t, p, True)
    times = time_interleaved("demo architectures", calls, steps=steps, warmup=warmup, round_size=ROUND)
    base_ms = common.summarize(times[next(iter(SIZES))])["p50"] * 1000
    rows = []
    for name, (arch, module) in runs.items():
        median_ms = common.summarize(times[name])["p50"] * 1000
        rows.append({"variant": name, "image_tokens": (arch.image_size // arch.patch_size) ** 2,
                     "vision_params_m": sum(p.numel() for p in module.vision_model.parameters()) / 1e6,
                     "steps_timed": len(times[name]), "median_ms": median_ms, "vs_shipped": median_ms / base_ms,
                     "steps_in_shipped_time": round(shipped_steps() * base_ms / median_ms)})
    return rows


def shipped_steps() -> int:
    """The step count of the shipped demo run: `siglip-serve train`'s default."""
    from siglip_serve.training.options import TrainOptions

    return TrainOptions.__dataclass_fields__["steps"].default


def size_columns() -> list[tuple[str, str, str]]:
    return [("variant", "architecture", ""), ("image_tokens", "image tokens", "d"),
            ("vision_params_m", "vision params (M)", ".2f"), ("median_ms", "ms/step", ".0f"),
            ("vs_shipped", "× shipped", ".2f"),
            ("steps_in_shipped_time", f"steps in {shipped_steps():,} shipped steps' time", "d")]


COLUMNS = [("attention", "attention", ""), ("activation", "activation", ""), ("autocast", "autocast", ""),
           ("batch", "images", "d"), ("texts", "texts", "d"), ("median_ms", "ms/step", ".0f"),
           ("images_per_s", "img/s", ".1f"), ("speedup", "vs first row of its dtype", ".2f"),
           ("loss_diff", "loss Δ vs that row (abs)", ".1e")]


def main() -> int:
    args = parse_args()
    report = Report("train_step", smoke=args.quick, args={k: str(v) if isinstance(v, Path) else v
                                                          for k, v in vars(args).items()})
    common.quiet()
    import torch
    from transformers import SiglipConfig, SiglipModel

    from siglip_serve.training.options import Architecture

    torch.set_num_threads(args.threads)
    arch = Architecture()
    torch.manual_seed(0)
    template = SiglipModel._from_config(SiglipConfig(**arch.config(arch.vocab_size)))
    images = torch.randn(args.batch_size, 3, arch.image_size, arch.image_size)
    texts = torch.randint(0, arch.vocab_size, (args.batch_size + LABEL_BANK, arch.text_length))
    demo = measure(template, (("sdpa", "gelu_pytorch_tanh"), ("eager", "gelu_pytorch_tanh"), ("sdpa", "gelu"),
                              ("eager", "gelu")), images, texts, steps=args.steps, warmup=args.warmup,
                   round_size=ROUND)
    report.add("demo", demo)
    report.section("One training step of the demo architecture (from scratch)", common.markdown_table(demo, COLUMNS))
    if args.size_steps:
        sizes = measure_sizes(args.batch_size, args.size_steps, args.warmup)
        report.add("demo_sizes", sizes)
        report.section("One training step of other demo architectures (bf16 autocast, eager attention)",
                       common.markdown_table(sizes, size_columns()))
    if args.base_batch:
        # Fine-tuning a real-size model: the random base-224 checkpoint (google/siglip-base-patch16-224's
        # shapes; 196 image tokens, 12 layers per tower), its own activation.
        base_template = SiglipModel.from_pretrained(common.checkpoint_dir(common.ARCHS["base-224"]))
        size = base_template.config.vision_config.image_size
        base_images = torch.randn(args.base_batch, 3, size, size)
        base_texts = torch.randint(0, 1000, (2 * args.base_batch, 64))
        base = measure(base_template, (("sdpa", None), ("eager", None)), base_images, base_texts,
                       steps=args.base_steps, warmup=1, round_size=min(2, args.base_steps))
        report.add("base_224", base)
        report.section("One fine-tuning step of base-224 (random weights)", common.markdown_table(base, COLUMNS))
    report.note("`siglip-serve train` uses eager attention on the CPU (in float32 too), SDPA elsewhere "
                "(training.train.training_attention); serving, forward only, uses SDPA everywhere. "
                "New models use the exact GELU since session 17 (`--hidden-act gelu_pytorch_tanh` gives "
                "google's tanh approximation); the architecture table's rows use the defaults of their time.")
    report.write(args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
