"""Training step time of the demo model (`siglip-serve train`'s default architecture) on this machine:
the attention kernel (PyTorch SDPA vs transformers' eager matmul + softmax), the MLP activation
(exact GELU vs its tanh approximation) and the autocast dtype.

One step is what `train()` runs: the vision tower on a batch of images, the text tower on the batch's
captions plus the label bank (64 tokens, no mask), the sigmoid loss, backward, gradient clipping,
AdamW. Inputs are random (speed does not depend on them). The baseline is the earlier recipe, SDPA
with the tanh GELU, measured in the same run, interleaved with the others (a few steps each in
turn), on the same weights. The loss on one batch is compared with the baseline's: the kernels
compute the same function, the exact GELU a slightly different one (a different model, trained as such).

    python bench/train_step.py --quick   # smoke: a few steps
    python bench/train_step.py           # ~1 min on this 2-core CPU
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
    parser.add_argument("--batch-size", type=int, default=128, help="Images per step (the train default).")
    parser.add_argument("--steps", type=int, default=60, help="Timed steps per row.")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-dir", type=Path, default=common.RESULTS_DIR)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.warmup = ROUND, 1
    return args


def main() -> int:
    args = parse_args()
    report = Report("train_step", smoke=args.quick, args={k: str(v) if isinstance(v, Path) else v
                                                          for k, v in vars(args).items()})
    common.quiet()
    import torch
    from transformers import SiglipConfig, SiglipModel

    from siglip_serve.training.loss import sigmoid_loss
    from siglip_serve.training.options import Architecture

    torch.set_num_threads(args.threads)
    arch = Architecture()
    torch.manual_seed(0)
    template = SiglipModel._from_config(SiglipConfig(**arch.config(arch.vocab_size)))
    images = torch.randn(args.batch_size, 3, arch.image_size, arch.image_size)
    texts = torch.randint(0, arch.vocab_size, (args.batch_size + LABEL_BANK, arch.text_length))
    positives = torch.rand(args.batch_size, args.batch_size + LABEL_BANK) < 0.05

    variants = (("sdpa", "gelu_pytorch_tanh"), ("eager", "gelu_pytorch_tanh"), ("sdpa", "gelu"), ("eager", "gelu"))

    def make(attention: str, activation: str) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        # A config of its own: the attention choice is read from the config at every forward.
        config = copy.deepcopy(template.config)
        for tower in (config.vision_config, config.text_config):
            tower.hidden_act = activation
        module = SiglipModel._from_config(config, attn_implementation=attention)
        module.load_state_dict(template.state_dict())
        assert module.vision_model.config._attn_implementation == attention
        return module.train(), torch.optim.AdamW(module.parameters(), lr=1e-4)

    def loss_of(module: torch.nn.Module, bf16: bool) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            image_embeds = module.vision_model(pixel_values=images).pooler_output
            text_embeds = module.text_model(input_ids=texts).pooler_output
        return sigmoid_loss(image_embeds.float(), text_embeds.float(), module.logit_scale, module.logit_bias,
                            positives)

    def step(module: torch.nn.Module, optimizer: torch.optim.Optimizer, bf16: bool) -> None:
        loss = loss_of(module, bf16)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()

    rows = []
    for bf16 in (True, False):
        dtype = "bfloat16" if bf16 else "float32"
        runs = {variant: make(*variant) for variant in variants}
        with torch.no_grad():
            losses = {variant: float(loss_of(module, bf16)) for variant, (module, _) in runs.items()}
        times: dict[tuple[str, str], list[float]] = {variant: [] for variant in runs}
        with stage(f"{dtype}: {len(variants)} variants, interleaved"):
            for _ in range(args.warmup):
                for module, optimizer in runs.values():
                    step(module, optimizer, bf16)
            # Take turns every few steps, so that a drifting machine affects every variant alike.
            for _ in range(max(1, args.steps // ROUND)):
                for variant, (module, optimizer) in runs.items():
                    times[variant] += common.time_calls(lambda m=module, o=optimizer, b=bf16: step(m, o, b),
                                                        warmup=0, iters=ROUND)
        base_ms = common.summarize(times[variants[0]])["p50"] * 1000
        for (attention, activation), measured in times.items():
            median_ms = common.summarize(measured)["p50"] * 1000
            rows.append({"attention": attention, "activation": activation, "autocast": dtype,
                         "batch": args.batch_size, "texts": args.batch_size + LABEL_BANK,
                         "steps_timed": len(measured), "median_ms": median_ms,
                         "images_per_s": args.batch_size / median_ms * 1000, "speedup": base_ms / median_ms,
                         "loss_diff": abs(losses[(attention, activation)] - losses[variants[0]])})
    report.add("rows", rows)
    report.section("One training step of the demo architecture", common.markdown_table(rows, [
        ("attention", "attention", ""), ("activation", "activation", ""), ("autocast", "autocast", ""),
        ("batch", "images", "d"), ("texts", "texts", "d"), ("median_ms", "ms/step", ".0f"),
        ("images_per_s", "img/s", ".0f"), ("speedup", "vs SDPA + tanh", ".2f"),
        ("loss_diff", "loss Δ vs SDPA + tanh (abs)", ".1e")]))
    report.note("`siglip-serve train` uses eager attention on the CPU and SDPA on CUDA "
                "(training.train.training_attention); serving, forward only, uses SDPA everywhere. "
                "New models keep google's tanh GELU (`--hidden-act gelu` gives the exact one).")
    report.write(args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
