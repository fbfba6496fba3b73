"""Training step time of the demo model (`siglip-serve train`'s default architecture) on this machine:
the attention kernel (PyTorch SDPA vs transformers' eager matmul + softmax) and the autocast dtype.

One step is what `train()` runs: the vision tower on a batch of images, the text tower on the batch's
captions plus the label bank (64 tokens, no mask), the sigmoid loss, backward, gradient clipping,
AdamW. Inputs are random (speed does not depend on them). The baseline, SDPA, is measured in the
same run, on the same weights, and the loss of both kernels on one batch is compared, so the rows
differ in speed only.

    python bench/train_step.py --quick   # smoke: a few steps
    python bench/train_step.py           # ~3 min on this 2-core CPU
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import common
from common import Report, stage

LABEL_BANK = 62  # shapes.label_captions: 6 shapes + 8 colors + 48 combinations


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Smoke run: 2 timed steps per row.")
    parser.add_argument("--batch-size", type=int, default=128, help="Images per step (the train default).")
    parser.add_argument("--steps", type=int, default=30, help="Timed steps per row.")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-dir", type=Path, default=common.RESULTS_DIR)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.warmup = 2, 1
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

    def make(attention: str) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        module = SiglipModel._from_config(template.config, attn_implementation=attention)
        module.load_state_dict(template.state_dict())
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
        losses = {}
        for attention in ("sdpa", "eager"):
            module, optimizer = make(attention)
            with torch.no_grad():
                losses[attention] = float(loss_of(module, bf16))
            with stage(f"{attention} {dtype}"):
                times = common.time_calls(lambda m=module, o=optimizer, b=bf16: step(m, o, b),
                                          warmup=args.warmup, iters=args.steps)
            median_ms = common.summarize(times)["p50"] * 1000
            rows.append({"attention": attention, "autocast": dtype, "batch": args.batch_size,
                         "texts": args.batch_size + LABEL_BANK, "median_ms": median_ms,
                         "images_per_s": args.batch_size / median_ms * 1000})
        base = next(r for r in rows if r["attention"] == "sdpa" and r["autocast"] == dtype)
        for row in rows:
            if row["autocast"] == dtype:
                row["speedup_vs_sdpa"] = base["median_ms"] / row["median_ms"]
                row["loss_diff_vs_sdpa"] = abs(losses[row["attention"]] - losses["sdpa"])
    report.add("rows", rows)
    report.section("One training step of the demo architecture", common.markdown_table(rows, [
        ("attention", "attention", ""), ("autocast", "autocast", ""), ("batch", "images", "d"),
        ("texts", "texts", "d"), ("median_ms", "ms/step", ".0f"), ("images_per_s", "img/s", ".0f"),
        ("speedup_vs_sdpa", "vs SDPA", ".2f"), ("loss_diff_vs_sdpa", "|Δ loss| vs SDPA", ".1e")]))
    report.note("`siglip-serve train` uses eager attention on the CPU and SDPA on CUDA "
                "(training.train.training_attention); serving, forward only, uses SDPA everywhere.")
    report.write(args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
