"""`siglip-serve train`: the flags and the command (`siglip_serve.cli` adds the subcommand)."""

from __future__ import annotations

import argparse
from pathlib import Path

from siglip_serve.training.options import Architecture, TrainOptions

SAVE_DTYPES = ("float32", "float16")
HIDDEN_ACTS = ("gelu", "gelu_pytorch_tanh")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TrainOptions(out=Path("."))
    arch = Architecture()
    parser.add_argument("--out", required=True, type=Path, help="Directory to write the checkpoint to.")
    parser.add_argument("--data", type=Path, default=None,
                        help="A .jsonl or .csv of `image` (path relative to the file) and `caption`. "
                             "Default: the built-in synthetic shapes dataset.")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--init", metavar="SPEC", default=None,
                       help="Fine-tune this checkpoint (local directory or hub id), keeping its tokenizer "
                            "and preprocessing.")
    start.add_argument("--from-scratch", action="store_true",
                       help="Train a new model of the size below, with a tokenizer trained on the captions "
                            "(the default when --init is not given).")
    parser.add_argument("--pool-size", type=int, default=defaults.pool_size,
                        help="Shapes dataset: images drawn up front and reused with flips, rotations and new captions.")
    parser.add_argument("--no-label-bank", action="store_true",
                        help="Shapes dataset: do not add a caption per shape, color and combination to every batch.")
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr, help="Peak learning rate (AdamW).")
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    parser.add_argument("--temperature-lr-scale", type=float, default=defaults.temperature_lr_scale,
                        help="Learning rate of the logit scale and bias, as a multiple of --lr "
                             "(default: 10 from scratch, 1 with --init).")
    parser.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice).")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N.")
    parser.add_argument("--bf16", action="store_true",
                        help="bfloat16 autocast for the forward pass (faster on CPUs with AVX512-BF16 and on GPUs); "
                             "weights and optimizer stay float32.")
    parser.add_argument("--save-dtype", choices=SAVE_DTYPES, default="float32",
                        help="Precision of the saved tower weights (logit scale and bias stay float32).")
    parser.add_argument("--eval-images", type=int, default=240,
                        help="Shapes dataset: held-out images to report zero-shot accuracy on (0: skip).")
    parser.add_argument("--no-progress", action="store_true", help="No progress bar.")
    size = parser.add_argument_group("model size (from scratch)")
    for name in ("image_size", "patch_size", "vision_width", "vision_layers", "text_width", "text_layers",
                 "head_dim", "text_length", "vocab_size"):
        size.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(arch, name))
    size.add_argument("--hidden-act", choices=HIDDEN_ACTS, default=arch.hidden_act,
                      help="MLP activation: exact GELU, or the tanh approximation google's checkpoints name.")


def options_from_args(args: argparse.Namespace) -> TrainOptions:
    architecture = Architecture(**{name: getattr(args, name) for name in Architecture.__dataclass_fields__})
    return TrainOptions(
        out=args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps, seed=args.seed, data=args.data, pool_size=args.pool_size, init=args.init,
        label_bank=not args.no_label_bank, temperature_lr_scale=args.temperature_lr_scale,
        architecture=architecture, save_dtype=args.save_dtype, threads=args.threads,
        device=args.device, bf16=args.bf16, progress=not args.no_progress,
    )


def run_train(args: argparse.Namespace, *, command: str | None = None) -> int:
    """Train as the flags say; `command` (the command line) is recorded in training.json."""
    from siglip_serve.model import quiet_transformers
    from siglip_serve.training.train import train

    quiet_transformers()
    options = options_from_args(args)
    result = train(options, command=command)
    state = f"interrupted after {result.steps_done} steps" if result.interrupted else f"{result.steps_done} steps"
    tail = result.losses[-50:]
    loss = f", loss {sum(tail) / len(tail):.4f}" if tail else ""
    print(f"{state} in {result.seconds:.0f} s ({result.total_seconds:.0f} s in all){loss}; saved to {result.out}")
    if result.interrupted:
        return 130
    if options.data is None and args.eval_images > 0:
        report_shapes_accuracy(result.out, args.eval_images)
    return 0


def report_shapes_accuracy(directory: Path, count: int) -> None:
    import siglip_serve
    from siglip_serve.training.evaluate import held_out, zero_shot_accuracy

    accuracy = zero_shot_accuracy(siglip_serve.load(str(directory), device="cpu"), held_out(count))
    print(f"held-out zero-shot top-1 on {accuracy.images} images: {accuracy.combo:.1%} (48 color+shape), "
          f"{accuracy.color:.1%} (8 colors), {accuracy.shape:.1%} (6 shapes)")
