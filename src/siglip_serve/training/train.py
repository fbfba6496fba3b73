"""Train or fine-tune a SigLIP (transformers' `SiglipModel`) with the pairwise sigmoid loss.

The text and image inputs are made by the serving path's own code: our fixed-length tokenizer
(cleaning, 64 tokens, sticky EOS, pad "</s>") run without an attention mask, and the checkpoint's
`ImageTransform`. So what the model learns is exactly what `siglip_serve.load` will feed it.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from siglip_serve.errors import UnsupportedModelError
from siglip_serve.models.checkpoint import Checkpoint
from siglip_serve.models.device_policy import cpu_has_native_bf16, resolve_device
from siglip_serve.models.tokenizer_files import build_tokenizer
from siglip_serve.preprocess.images import ImageTransform
from siglip_serve.preprocess.text import FixedLengthTokenizer, TextCleaning, clean_text
from siglip_serve.training.checkpoint_files import (
    copy_tokenizer_files,
    save_model,
    train_sentencepiece,
    write_json,
    write_preprocessor_config,
)
from siglip_serve.training.data import LABELS, Batch, BatchSource, CaptionsSource, ShapesPool, read_captions
from siglip_serve.training.loss import INIT_LOGIT_BIAS, INIT_LOGIT_SCALE, sigmoid_loss
from siglip_serve.training.options import Architecture, TrainOptions
from siglip_serve.training.shapes import caption_corpus

BICUBIC = 3  # PIL filter id, as in google/siglip-* preprocessor_config.json ("resample": 3)


@dataclass(frozen=True)
class TrainResult:
    out: Path
    steps_done: int
    interrupted: bool
    seconds: float  # the training loop
    total_seconds: float  # everything: tokenizer, drawing the image pool, training, saving
    losses: list[float]


@dataclass
class Setup:
    module: torch.nn.Module
    tokenizer: FixedLengthTokenizer
    transform: ImageTransform


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def scratch_setup(options: TrainOptions, corpus: list[str]) -> Setup:
    """A new tokenizer trained on `corpus` and a randomly initialized SiglipModel."""
    arch = options.architecture
    cleaning = TextCleaning.SIGLIP
    train_sentencepiece(options.out, [clean_text(text, cleaning) for text in corpus],
                        vocab_size=arch.vocab_size, length=arch.text_length)
    transform = ImageTransform(height=arch.image_size, width=arch.image_size, resample=BICUBIC)
    write_preprocessor_config(options.out, transform)
    tokenizer = build_tokenizer(options.out, length=arch.text_length, cleaning=cleaning)
    import sentencepiece

    vocab_size = sentencepiece.SentencePieceProcessor(model_file=str(options.out / "spiece.model")).get_piece_size()
    return Setup(new_module(arch, vocab_size), tokenizer, transform)


def new_module(arch: Architecture, vocab_size: int) -> torch.nn.Module:
    """A randomly initialized SiglipModel of size `arch`: transformers' initialization, then the paper's
    temperature and bias and 2-D sin-cos position embeddings."""
    from transformers import SiglipConfig, SiglipModel

    module = SiglipModel._from_config(SiglipConfig(**arch.config(vocab_size)), attn_implementation="sdpa")
    with torch.no_grad():  # transformers initializes both to 0; the paper's values instead
        module.logit_scale.fill_(INIT_LOGIT_SCALE)
        module.logit_bias.fill_(INIT_LOGIT_BIAS)
        grid = arch.image_size // arch.patch_size
        module.vision_model.embeddings.position_embedding.weight.copy_(sincos_2d(grid, arch.vision_width))
    return module


def sincos_2d(grid: int, width: int, temperature: float = 10_000.0) -> torch.Tensor:
    """[grid*grid, width] 2-D sine-cosine position embeddings (big_vision `posemb="sincos2d"`, MAE),
    rows in patch order (row-major). An initialization only: they stay trainable. A small ViT trained
    from scratch learns shapes noticeably faster from it than from random position embeddings."""
    if width % 4:
        raise ValueError(f"vision width must be a multiple of 4 for 2-D sin-cos embeddings, got {width}")
    y, x = torch.meshgrid(torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32),
                          indexing="ij")
    omega = 1.0 / temperature ** (torch.arange(width // 4, dtype=torch.float32) / (width // 4))
    x = x.flatten()[:, None] * omega[None]
    y = y.flatten()[:, None] * omega[None]
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1)


def init_setup(options: TrainOptions) -> Setup:
    """Fine-tune a loadable checkpoint: its module, tokenizer and transform, as the loader builds them."""
    from siglip_serve.models.loader import load_checkpoint

    checkpoint: Checkpoint = load_checkpoint(options.init, device="cpu", dtype="float32")
    if not isinstance(checkpoint.image_transform, ImageTransform):
        raise UnsupportedModelError(f"{options.init}: only fixed-resolution checkpoints can be fine-tuned")
    copy_tokenizer_files(checkpoint.directory, options.out)
    module = checkpoint.towers.module
    if checkpoint.format == "hf":
        # Served on siglip_serve's inference modules (models/siglip_torch.py); training needs transformers'
        # SiglipModel (set_attn_implementation, save_pretrained): the same files, loaded into it.
        from siglip_serve.models.hf import load_transformers_module

        module = load_transformers_module("SiglipModel", checkpoint.directory)
    return Setup(module, checkpoint.tokenizer, checkpoint.image_transform)


def make_source(options: TrainOptions, setup: Setup) -> BatchSource:
    if options.data is None:
        return ShapesPool(setup.transform, seed=options.seed, size=options.pool_size, label_bank=options.label_bank,
                          easy_size=options.easy_pool_size, curriculum_steps=options.curriculum_steps,
                          easy_steps=options.easy_steps, middle_size=options.middle_pool_size,
                          middle_share=options.middle_share,
                          workers=min(options.threads or torch.get_num_threads(), 8), progress=options.progress)
    items = read_captions(options.data)
    return CaptionsSource(items, setup.transform, setup.tokenizer.cleaning, seed=options.seed)


def training_attention(device: torch.device) -> str:
    """Attention kernel for training. On the CPU, transformers' eager matmul + softmax: PyTorch's fused
    attention backward is slower there for the demo's short sequences: under bf16 autocast a step took
    282 against 201 ms with it on an AVX512-BF16 EPYC (bench/results/train_step.md, exact GELU), in float32 518
    against 495 ms on an AVX2-only one (the same file, in git history). Elsewhere SDPA. Serving,
    forward only, keeps SDPA."""
    return "eager" if device.type == "cpu" else "sdpa"


def emulated_bf16_warning(options: TrainOptions) -> str | None:
    """What to tell a user who asked for --bf16 on a CPU that lists no bf16 instructions: there autocast
    emulates bf16, and a demo step took 17x as long as in float32 (an AVX2-only EPYC, README "The demo
    model"). A warning, not a switch: a listed flag does not make bf16 fast either (models/device_policy.py),
    so the flag alone decides nothing; the user measures and chooses."""
    if not options.bf16 or resolve_device(options.device).type != "cpu" or cpu_has_native_bf16():
        return None
    return ("warning: --bf16 on a CPU that lists no bf16 instructions (avx512_bf16, amx_bf16): autocast emulates "
            "bfloat16 there, and a demo step took 17x as long as in float32 on such a CPU. Measure with "
            "bench/train_step.py, or drop --bf16 (float32 trains a different model).")


def warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warmup, then cosine decay to 0 (the SigLIP paper's schedule shape)."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def optimizer_for(module: torch.nn.Module, options: TrainOptions,
                  label_head: torch.nn.Module | None = None) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices only (not on norms, biases, logit_scale/bias).

    logit_scale and logit_bias learn 10x faster from scratch (`temperature_lr_scale`): the paper's
    run is ~10^4 times longer than a demo run, and a temperature still near its initial 10 limits
    how sharply the sigmoid tells similar labels apart. A fine-tuned checkpoint's is already trained.
    """
    named = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
    if label_head is not None:
        named += list(label_head.named_parameters(prefix="label_head"))
    temperature = [p for name, p in named if name in ("logit_scale", "logit_bias")]
    others = [p for name, p in named if name not in ("logit_scale", "logit_bias")]
    groups = [
        {"params": [p for p in others if p.ndim >= 2], "weight_decay": options.weight_decay},
        {"params": [p for p in others if p.ndim < 2], "weight_decay": 0.0},
        {"params": temperature, "weight_decay": 0.0, "lr": options.temperature_lr},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=options.lr, betas=(0.9, 0.95))


class TokenCache:
    """Caption -> fixed-length ids; captions repeat a lot in the shapes dataset."""

    def __init__(self, tokenizer: FixedLengthTokenizer) -> None:
        self.tokenizer = tokenizer
        self.rows: dict[str, torch.Tensor] = {}

    def __call__(self, captions: list[str]) -> torch.Tensor:
        for caption in captions:
            if caption not in self.rows:
                self.rows[caption] = torch.tensor(self.tokenizer.token_ids(caption), dtype=torch.long)
        return torch.stack([self.rows[c] for c in captions])


def batch_loss(module: torch.nn.Module, batch: Batch, tokens: TokenCache, *, bf16: bool = False,
               label_head: torch.nn.Module | None = None, label_loss: float = 0.0) -> torch.Tensor:
    """The sigmoid loss of the batch; with a `label_head`, plus `label_loss` times its multi-label
    cross-entropy on the batch's labels (see `new_label_head`)."""
    device = module.logit_scale.device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        image_embeds = module.vision_model(pixel_values=batch.pixel_values.to(device)).pooler_output
        # Each distinct caption once (~1 in 9 of a shapes batch repeats); indexing sums the gradients of
        # the repeats, so the loss and its gradients are those of embedding every row.
        distinct = list(dict.fromkeys(batch.captions))
        row_of = {caption: row for row, caption in enumerate(distinct)}
        rows = torch.tensor([row_of[caption] for caption in batch.captions], device=device)
        # No attention mask, as SigLIP is trained and as we serve it (big_vision two_towers.py; transformers#28569).
        text_embeds = module.text_model(input_ids=tokens(distinct).to(device)).pooler_output[rows]
    loss = sigmoid_loss(image_embeds.float(), text_embeds.float(), module.logit_scale, module.logit_bias,
                        batch.positives.to(device))
    if label_head is not None and batch.labels is not None:
        logits = label_head(image_embeds.float())
        # Summed over labels and averaged over images, as the sigmoid loss sums over texts: at weight 1
        # a label weighs what one image-text pair does.
        labels = F.binary_cross_entropy_with_logits(logits, batch.labels.to(device), reduction="sum") / len(logits)
        loss = loss + label_loss * labels
    return loss


def new_label_head(options: TrainOptions, source: BatchSource) -> torch.nn.Module | None:
    """A linear head from the image embedding to every shape and color (`data.LABELS`), trained beside
    the sigmoid loss and then dropped: the saved model is the plain two towers.

    Why: trained from scratch, the demo's vision tower learned shapes about twice as fast per step
    under this direct cross-entropy (`bench/shape_probe.py`: 77% of `clean` shapes at step 1,500)
    as through the contrastive loss alone (40% at the same step, README "What was tried"), where the
    label texts it is compared with are themselves still being learned. Supervised labels and
    image-text pairs in one objective: UniCL (Yang et al., CVPR 2022, arXiv:2204.03610).

    None for caption files (no labels) and with --init (the head is sized by --vision-width, which
    describes a model trained from scratch, not the checkpoint being fine-tuned)."""
    if options.label_loss <= 0 or not isinstance(source, ShapesPool) or options.init:
        return None
    return torch.nn.Linear(options.architecture.vision_width, len(LABELS))


def prefetched(source: BatchSource, steps: int, batch_size: int) -> Iterator[Batch]:
    """Batches 0..steps-1, the next one assembled in a thread while the model works on the current one
    (image decoding and resizing release the GIL). Deterministic: batch k depends on k only."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        upcoming = pool.submit(source.batch, 0, batch_size) if steps else None
        for step in range(steps):
            batch = upcoming.result()
            upcoming = pool.submit(source.batch, step + 1, batch_size) if step + 1 < steps else None
            yield batch


def train(options: TrainOptions, *, source: BatchSource | None = None, command: str | None = None,
          callback: Callable[[int, torch.nn.Module], None] | None = None) -> TrainResult:
    """Train for `options.steps` steps and save to `options.out`, also when interrupted (Ctrl-C).

    `callback(step, module)` runs after every optimizer step (e.g. to evaluate along the way).
    """
    began = time.perf_counter()
    if options.threads:
        torch.set_num_threads(options.threads)
    seed_everything(options.seed)
    options.out.mkdir(parents=True, exist_ok=True)
    if options.init:
        setup = init_setup(options)
    else:
        corpus = caption_corpus() if options.data is None else [i.caption for i in read_captions(options.data)]
        setup = scratch_setup(options, corpus)
    source = source or make_source(options, setup)
    module = setup.module.to(resolve_device(options.device)).train()
    module.set_attn_implementation(training_attention(module.logit_scale.device))
    label_head = new_label_head(options, source)
    if label_head is not None:
        label_head.to(module.logit_scale.device)
    optimizer = optimizer_for(module, options, label_head)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(options.warmup_steps, options.steps))
    tokens = TokenCache(setup.tokenizer)
    losses: list[float] = []
    interrupted = False
    started = time.perf_counter()
    bar = progress_bar(options)
    batches = prefetched(source, options.steps, options.batch_size)
    try:
        for step, batch in enumerate(batches):
            loss = batch_loss(module, batch, tokens, bf16=options.bf16, label_head=label_head,
                              label_loss=options.label_loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]],
                                           options.grad_clip)
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
            if callback is not None:
                callback(step, module)
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}",
                            img_s=f"{len(losses) * options.batch_size / (time.perf_counter() - started):.0f}",
                            refresh=False)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        batches.close()
        bar.close()
    seconds = time.perf_counter() - started
    save_model(module.cpu(), options.out, dtype=getattr(torch, options.save_dtype))
    result = TrainResult(options.out, len(losses), interrupted, seconds, time.perf_counter() - began, losses)
    write_training_record(options, result, command)
    return result


def progress_bar(options: TrainOptions):
    from tqdm.auto import tqdm

    return tqdm(total=options.steps, unit="step", disable=not options.progress, mininterval=1.0,
                dynamic_ncols=True)


def write_training_record(options: TrainOptions, result: TrainResult, command: str | None) -> None:
    """training.json next to the weights: how it was made, for reproducing it."""
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()
                if k not in ("progress",)}
    tail = result.losses[-50:]
    write_json(options.out / "training.json", {
        "command": command,
        "options": settings,
        "steps_done": result.steps_done,
        "interrupted": result.interrupted,
        "seconds": round(result.seconds, 1),
        "total_seconds": round(result.total_seconds, 1),
        "final_loss": round(sum(tail) / len(tail), 4) if tail else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    })


def read_training_record(directory: Path) -> dict | None:
    path = directory / "training.json"
    return json.loads(path.read_text()) if path.is_file() else None
