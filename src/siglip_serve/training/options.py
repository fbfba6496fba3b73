"""What `siglip-serve train` can be asked to do: model size and training options.

Free of torch, so that the CLI can declare its flags without importing it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Architecture:
    """Size of a model trained from scratch. The defaults are the shipped siglip-demo-shapes."""

    image_size: int = 64
    patch_size: int = 16
    vision_width: int = 128
    vision_layers: int = 4
    text_width: int = 32
    text_layers: int = 2
    head_dim: int = 64
    text_length: int = 64  # SigLIP's real text length
    vocab_size: int = 256  # asked of SentencePiece; a small corpus may give fewer pieces
    # google's HF configs name the tanh approximation; timm/open_clip's SigLIP ViTs use exact "gelu".
    # Exact GELU would make a demo step 5-12% faster on this CPU (bench/results/train_step.md).
    hidden_act: str = "gelu_pytorch_tanh"

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
    out: Path
    steps: int = 6300
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 300
    grad_clip: float = 1.0
    seed: int = 0
    data: Path | None = None  # JSONL/CSV of image + caption; None: the built-in shapes dataset
    pool_size: int = 40_000  # shapes dataset: images drawn up front and reused (see ShapesPool)
    label_bank: bool = True  # shapes dataset: every batch also carries a caption per shape, color, combination
    # Learning rate of logit_scale and logit_bias relative to `lr`; None: 10 from scratch, 1 when fine-tuning
    temperature_lr_scale: float | None = None
    init: str | None = None  # checkpoint to fine-tune; None: from scratch with `architecture`
    architecture: Architecture = field(default_factory=Architecture)
    save_dtype: str = "float32"  # of the saved tower weights: float32 or float16
    threads: int | None = None
    device: str = "auto"  # auto: CUDA when present, else the CPU
    bf16: bool = False  # bfloat16 autocast (mixed precision; weights and optimizer stay float32)
    progress: bool = True

    @property
    def temperature_lr(self) -> float:
        scale = self.temperature_lr_scale
        return self.lr * (scale if scale is not None else 1.0 if self.init else 10.0)
