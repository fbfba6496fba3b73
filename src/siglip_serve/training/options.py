"""What `siglip-serve train` can be asked to do: model size and training options.

Each field is declared once, here, with its default and its help (`option`); the command's flags
are generated from these fields (`option_flags.py`), so a new option needs no second declaration.
Free of torch, so that the CLI can declare its flags without importing it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from siglip_serve.command_options import setting_option
from siglip_serve.option_flags import GROUP, option


@dataclass(frozen=True)
class Architecture:
    """Size of a model trained from scratch. The defaults are the shipped siglip-demo-shapes."""

    image_size: int = option(96, help="Input resolution in pixels (square).")
    patch_size: int = option(12, help="ViT patch side in pixels.")
    vision_width: int = option(128, help="Hidden size of the vision tower; also the embedding size.")
    vision_layers: int = option(4, help="Transformer layers of the vision tower.")
    text_width: int = option(32, help="Hidden size of the text tower (projected to --vision-width).")
    text_layers: int = option(2, help="Transformer layers of the text tower.")
    head_dim: int = option(64, help="Width of one attention head (heads = width // head-dim, at least 1).")
    text_length: int = option(64, help="Tokens per text, padded without a mask (64 is SigLIP's).")
    vocab_size: int = option(256, help="SentencePiece vocabulary asked for; a small corpus may give fewer pieces.")
    # google's HF configs name the tanh approximation; timm/open_clip's SigLIP ViTs use exact "gelu".
    # The demo uses exact GELU since session 17: a step took 0.92x as long under bf16 autocast on this CPU
    # (188 against 205 ms in session 16, 201 against 217 in session 18: bench/results/train_step.md),
    # which went into 7,000 steps (README "What was tried").
    hidden_act: str = option("gelu", choices=("gelu", "gelu_pytorch_tanh"),
                             help="MLP activation: exact GELU, or the tanh approximation google's checkpoints name.")

    def config(self, vocab_size: int) -> dict:
        def tower(width: int, layers: int) -> dict:
            return {"hidden_size": width, "intermediate_size": 4 * width, "num_hidden_layers": layers,
                    "num_attention_heads": max(1, width // self.head_dim), "layer_norm_eps": 1e-6,
                    "hidden_act": self.hidden_act}

        return {
            "vision_config": {**tower(self.vision_width, self.vision_layers),
                              "image_size": self.image_size, "patch_size": self.patch_size},
            # bos/eos in config.json are unused by SigLIP (CLIP leftovers); pad is "</s>" = 1.
            "text_config": {**tower(self.text_width, self.text_layers), "vocab_size": vocab_size,
                            "max_position_embeddings": self.text_length, "projection_size": self.vision_width,
                            "pad_token_id": 1, "bos_token_id": None, "eos_token_id": None},
        }


@dataclass(frozen=True)
class TrainOptions:
    # The field order is that of training.json's "options": keep it, so that records stay comparable.
    out: Path = option(help="Directory to write the checkpoint to.")
    steps: int = option(7000, help="Optimizer steps.")
    batch_size: int = option(64, help="Image-caption pairs per step.")
    lr: float = option(1e-3, help="Peak learning rate (AdamW), after a linear warmup and before a cosine decay to 0.")
    # 0.2 since session 20 (0.1 in session 19, 1e-4 before): by the README command the demo model scored
    # 97.6% `clean` and 93.8% `mild` held-out shapes over three draws of 960 images, against 98.1 / 92.6%
    # at 0.1, 97.3 / 92.1% at 0.05 and 96.4 / 91.3% at 1e-4: `mild` up in every draw, `clean` 0.5 points
    # down, so the hidden-set targets hold over a wider range of where that set may sit between the two
    # (bench/results/demo_draws.md; README, "What was tried", runs T-Z).
    weight_decay: float = option(0.2, help="AdamW weight decay of the weight matrices (not of norms, biases "
                                            "or the logit scale and bias).")
    warmup_steps: int = option(656, help="Steps of linear learning-rate warmup.")
    grad_clip: float = option(1.0, help="Largest gradient norm; larger gradients are scaled down to it.")
    seed: int = option(0, help="Seed of the weights, the shapes drawn and the batch order.")
    data: Path | None = option(None, none_means="the built-in synthetic shapes dataset",
                               help="A .jsonl or .csv of `image` (path relative to the file) and `caption`.")
    pool_size: int = option(20_000, help="Shapes dataset: images drawn up front and reused with flips, rotations "
                                         "and new captions.")
    label_bank: bool = option(True, help="Shapes dataset: every batch also carries a caption per shape, color "
                                         "and combination.")
    curriculum_steps: int = option(4812, help="Shapes dataset: easy images (one large shape on a small square "
                                              "canvas with a plain background) make up all of each batch until "
                                              "--easy-steps, then a share falling linearly to none at this step "
                                              "(past --steps: some stay to the end; 0: no curriculum).")
    easy_pool_size: int = option(8000, help="Shapes dataset: easy images drawn up front for the curriculum.")
    easy_steps: int = option(2406, help="Shapes dataset: steps of easy images only, before their share starts "
                                     "falling towards --curriculum-steps.")
    middle_pool_size: int = option(12_000, help="Shapes dataset: images of the middle range (shapes of 25-80% "
                                              "of the short side, canvases up to 2:1, often on white) drawn "
                                              "up front.")
    middle_share: float = option(0.8, help="Shapes dataset: share of each batch's images not taken by the "
                                           "curriculum's easy ones that come from the middle pool; the broad "
                                           "pool gives the rest (0: off).")
    label_loss: float = option(10.0, help="Shapes dataset: weight of an extra training loss, a multi-label "
                                         "cross-entropy of a linear head on the image embedding that names every "
                                         "shape and color in the image, each label weighing what one "
                                         "image-text pair does at 1; the head is not saved (0: off).")
    temperature_lr_scale: float | None = option(None, none_means="10 from scratch, 1 with --init",
                                                help="Learning rate of the logit scale and bias, as a multiple "
                                                     "of --lr.")
    init: str | None = option(None, metavar="SPEC", none_means="from scratch",
                              help="Fine-tune this checkpoint (local directory or hub id), keeping its tokenizer "
                                   "and preprocessing.",
                              alternative=("--from-scratch", "Train a new model of the size below, with a tokenizer "
                                                             "trained on the captions (the default when --init is "
                                                             "not given)."))
    architecture: Architecture = field(default_factory=Architecture, metadata={GROUP: "model size (from scratch)"})
    save_dtype: str = option("float32", choices=("float32", "float16"),
                             help="Precision of the saved tower weights (logit scale and bias stay float32).")
    threads: int | None = option(None, none_means="torch's choice", help="torch threads.")
    device: str = setting_option("device")
    bf16: bool = option(False, help="bfloat16 autocast for the forward pass; weights and optimizer stay float32. "
                                    "Measure first (bench/train_step.py): a demo step was 1.5-2.0x faster on an "
                                    "AVX512-BF16 CPU and 17x slower on an AVX2-only one.")
    progress: bool = option(True, help="Show a progress bar.")

    @property
    def temperature_lr(self) -> float:
        scale = self.temperature_lr_scale
        return self.lr * (scale if scale is not None else 1.0 if self.init else 10.0)


@dataclass(frozen=True)
class ReportOptions:
    """What `siglip-serve train` reports after training (not part of training, so not in training.json)."""

    eval_images: int = option(240, help="Shapes dataset: held-out images to report zero-shot accuracy on "
                                        "after training (0: skip).")
