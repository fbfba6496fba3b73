"""Adapter for open_clip-format SigLIP checkpoints (timm/ViT-B-16-SigLIP and its SigLIP 1 siblings).

Needs neither open_clip nor timm nor torchvision. The files (open_clip `hf-hub:` repos, e.g. timm/ViT-B-16-SigLIP) are
`open_clip_config.json` (`model_cfg` plus `preprocess_cfg`), `open_clip_model.safetensors` and/or
`open_clip_pytorch_model.bin`, and HF tokenizer files (a T5 `tokenizer.json`, pad = eos = 1 "</s>").
The open_clip state dict is mapped onto transformers' `SiglipModel`, checking every key and shape.

Same weights, different function (open_clip timm_model.py, transformer.py): open_clip's SigLIP 1 towers
use the exact erf GELU, so the HF modules get `hidden_act="gelu"`, not the tanh approximation HF
checkpoints use (~1e-3 apart).

Dense patch features (`Model.encode_patches`, siglip_serve/features.py) of an open_clip checkpoint are those of
open_clip's timm trunk (timm vision_transformer.py): timm's SigLIP towers have no class token (class_token=False,
num_prefix_tokens 0), so every token is a patch, row-major. Layer k in 1..L-1 is open_clip's
`model.forward_intermediates(image, image_indices=[k-1], intermediates_only=True, image_output_fmt="NLC")` (the
output of timm block k-1; the default "NCHW" is the same tokens as [d, h, w]); layer L (= -1) is
`visual.trunk.forward_features(image)`, after the trunk's `norm` (= the last intermediate with
normalize_intermediates=True); layer 0, the patch and position embeddings, has no forward_intermediates index
(it is `trunk._pos_embed(trunk.patch_embed(image))`). Checked against open_clip in tests/golden/open_clip.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from siglip_serve.errors import InvalidCheckpointError, UnsupportedModelError
from siglip_serve.models.checkpoint import PIL_FILTERS, Checkpoint, Family, cross_check_known
from siglip_serve.models.tokenizer_files import build_tokenizer
from siglip_serve.models.towers import SiglipTowers
from siglip_serve.preprocess.images import ImageTransform
from siglip_serve.preprocess.text import TextCleaning

CONFIG_FILE = "open_clip_config.json"
# In open_clip's order of preference (factory.py `_find_checkpoint_in_dir`): safetensors first.
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin")

# timm's SigLIP towers with a MAP head are `vit_{size}_patch{P}_siglip_{resolution}` (timm
# models/vision_transformer.py); the `_siglip_gap_` ones average tokens instead and are not supported.
TIMM_SIGLIP_NAME = re.compile(r"vit_(?P<size>[a-z0-9]+)_patch(?P<patch>\d+)_siglip_(?P<resolution>\d+)")
# Heads are the one dimension the weights do not show; they follow timm's ViT sizes.
TIMM_HEADS = {"tiny": 3, "small": 6, "medium": 8, "base": 12, "large": 16, "so400m": 16, "giantopt": 16}
# Towers timm defines with act_layer="gelu_tanh"; all others use nn.GELU, the exact erf form.
TIMM_TANH_GELU = frozenset({
    "vit_base_patch32_siglip_256",
    "vit_large_patch16_siglip_512",
    "vit_so400m_patch16_siglip_256",
    "vit_so400m_patch16_siglip_384",
    "vit_so400m_patch16_siglip_512",
    "vit_giantopt_patch16_siglip_256",
    "vit_giantopt_patch16_siglip_384",
})
TIMM_LAYER_NORM_EPS = 1e-6  # timm's ViT: partial(nn.LayerNorm, eps=1e-6)

# open_clip model.py CLIPTextCfg defaults, for keys a config leaves out.
TEXT_DEFAULTS = {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12, "mlp_ratio": 4.0}
# CLIPTextCfg options that change the function in ways SiglipTextModel cannot express.
UNSUPPORTED_TEXT_OPTIONS = (
    "hf_model_name", "embed_cls", "final_ln_after_pool", "ls_init_value", "qk_norm", "scaled_cosine_attn",
    "scale_heads", "scale_attn_inner", "scale_attn", "scale_fc",
)


Weights = Iterator[tuple[str, torch.Tensor]]  # (SiglipModel key, tensor) pairs


@dataclass(frozen=True)
class VisionArch:
    timm_name: str
    width: int
    depth: int
    heads: int
    intermediate: int
    patch: int
    image_size: int
    hidden_act: str

    @property
    def positions(self) -> int:
        return (self.image_size // self.patch) ** 2


@dataclass(frozen=True)
class TextArch:
    width: int
    layers: int
    heads: int
    intermediate: int
    context_length: int
    vocab_size: int
    projection: str  # "linear" (nn.Linear), "matrix" (a [width, dim] parameter) or "none"
    embed_dim: int
    layer_norm_eps: float


def load_open_clip_checkpoint(directory: Path, *, name: str, device: torch.device, dtype: torch.dtype) -> Checkpoint:
    model_cfg, preprocess_cfg = read_config(directory / CONFIG_FILE)
    vision_cfg, text_cfg = model_cfg["vision_cfg"], model_cfg["text_cfg"]
    check_supported(model_cfg, where=directory / CONFIG_FILE)
    weights_path = find_weights(directory)
    source = SourceWeights(read_weights(weights_path), where=weights_path)
    vision = vision_arch(vision_cfg, source, where=directory / CONFIG_FILE)
    text = text_arch(model_cfg)
    if text.embed_dim != vision.width:
        raise InvalidCheckpointError(
            f"{directory / CONFIG_FILE}: embed_dim {text.embed_dim} differs from the image tower's width "
            f"{vision.width} (timm_proj 'none': the image embedding is the trunk's output)"
        )
    module = build_module(vision, text, convert_weights(source, vision, text))
    cleaning = text_cleaning(text_cfg, where=directory / CONFIG_FILE)
    tokenizer = build_tokenizer(directory, length=text.context_length, cleaning=cleaning)
    checkpoint = Checkpoint(
        name=name,
        directory=directory,
        family=Family.SIGLIP,
        format="open_clip",
        towers=SiglipTowers(module, device=device, dtype=dtype),
        image_transform=image_transform(preprocess_cfg, image_size=vision.image_size, where=directory / CONFIG_FILE),
        tokenizer=tokenizer,
        embed_dim=vision.width,
        patch_size=vision.patch,
    )
    cross_check_known(checkpoint, spec=name)
    return checkpoint


# --- configuration ---


def read_config(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidCheckpointError(f"cannot read {path}: {exc}") from None
    model_cfg = config.get("model_cfg") if isinstance(config, dict) else None
    if not isinstance(model_cfg, dict) or not all(
        isinstance(model_cfg.get(key), dict) for key in ("vision_cfg", "text_cfg")
    ):
        raise InvalidCheckpointError(f"{path}: expected model_cfg with vision_cfg and text_cfg")
    preprocess_cfg = config.get("preprocess_cfg")
    if not isinstance(preprocess_cfg, dict):
        raise InvalidCheckpointError(f"{path}: preprocess_cfg is missing")
    return model_cfg, preprocess_cfg


def check_supported(model_cfg: dict[str, Any], *, where: Path) -> None:
    """Refuse configurations whose function the HF SigLIP modules cannot reproduce exactly."""
    vision_cfg, text_cfg = model_cfg["vision_cfg"], model_cfg["text_cfg"]
    problems = []
    if not vision_cfg.get("timm_model_name"):
        problems.append("the image tower is not a timm model (only timm SigLIP towers are supported)")
    if vision_cfg.get("timm_pool", "avg") != "map":
        problems.append(f"timm_pool {vision_cfg.get('timm_pool', 'avg')!r} (expected 'map')")
    if vision_cfg.get("timm_proj", "linear") not in ("none", ""):
        problems.append(f"timm_proj {vision_cfg.get('timm_proj', 'linear')!r} (expected 'none')")
    if model_cfg.get("quick_gelu"):
        problems.append("quick_gelu")
    if text_cfg.get("act_kwargs"):
        # open_clip's SigLIP 2 configs: GELU tanh text tower with a Gemma tokenizer.
        problems.append(f"text act_kwargs {text_cfg['act_kwargs']} (a SigLIP 2 checkpoint? use its HF version)")
    if not text_cfg.get("no_causal_mask", False):
        problems.append("a causal text mask (SigLIP's text tower is bidirectional)")
    if text_cfg.get("pool_type", "argmax") != "last":
        problems.append(f"text pool_type {text_cfg.get('pool_type', 'argmax')!r} (expected 'last')")
    problems += [f"text option {key}" for key in UNSUPPORTED_TEXT_OPTIONS if text_cfg.get(key)]
    if problems:
        raise UnsupportedModelError(f"{where}: unsupported open_clip configuration: {'; '.join(problems)}")


def text_cleaning(text_cfg: dict[str, Any], *, where: Path) -> TextCleaning:
    """open_clip's HFTokenizer cleans as tokenizer_kwargs.clean says; every SigLIP config says "canonicalize",
    SigLIP's training preprocessing (big_vision SigLIP configs), which is also what we assume when a config
    is silent."""
    clean = (text_cfg.get("tokenizer_kwargs") or {}).get("clean", "canonicalize")
    if clean != "canonicalize":
        raise UnsupportedModelError(f"{where}: open_clip text cleaning {clean!r} (only 'canonicalize' is supported)")
    return TextCleaning.OPEN_CLIP


def image_transform(preprocess_cfg: dict[str, Any], *, image_size: int, where: Path) -> ImageTransform:
    """As open_clip transform.py `image_transform(is_train=False)`: squash-resize, then normalize.

    The size is the image tower's (open_clip factory.py overrides preprocess_cfg's size with it). Without
    mean/std open_clip would silently use OpenAI CLIP's (open_clip constants.py OPENAI_DATASET_MEAN), so both
    are required here.
    """
    resize_mode = preprocess_cfg.get("resize_mode", "shortest")
    if resize_mode != "squash":
        raise UnsupportedModelError(f"{where}: preprocess_cfg resize_mode {resize_mode!r} (only 'squash')")
    interpolation = preprocess_cfg.get("interpolation", "bicubic")
    if interpolation not in ("bicubic", "bilinear", "random"):
        raise InvalidCheckpointError(f"{where}: unknown preprocess_cfg interpolation {interpolation!r}")
    mean, std = (_channels(preprocess_cfg.get(key), key=key, where=where) for key in ("mean", "std"))
    return ImageTransform(
        height=image_size,
        width=image_size,
        # open_clip: anything but bilinear is bicubic ('random' only matters in training)
        resample=PIL_FILTERS["bilinear" if interpolation == "bilinear" else "bicubic"],
        mean=mean,
        std=std,
    )


def _channels(value: Any, *, key: str, where: Path) -> tuple[float, float, float]:
    values = [value] * 3 if isinstance(value, int | float) else value
    if not isinstance(values, list | tuple) or len(values) != 3:
        raise InvalidCheckpointError(f"{where}: preprocess_cfg {key} must be 3 numbers, got {value!r}")
    return (float(values[0]), float(values[1]), float(values[2]))


# --- weights ---


def find_weights(directory: Path) -> Path:
    for filename in WEIGHT_FILES:
        if (directory / filename).is_file():
            return directory / filename
    raise InvalidCheckpointError(f"{directory} has no open_clip weights: expected one of {', '.join(WEIGHT_FILES)}")


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except (SafetensorError, OSError) as exc:
            raise InvalidCheckpointError(f"cannot read {path}: {exc}") from None
    return read_pickled_weights(path)


def read_pickled_weights(path: Path) -> dict[str, torch.Tensor]:
    """A `.bin` is a pickle: load it with weights_only, which refuses anything but tensors and containers."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = next((line for line in str(exc).splitlines() if "Unsupported" in line), "not only tensors")
        raise InvalidCheckpointError(f"refusing to unpickle {path}: {reason.strip()}") from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise InvalidCheckpointError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in data.items()
    ):
        raise InvalidCheckpointError(f"{path} is not a state dict (a flat mapping of names to tensors)")
    return data


class SourceWeights:
    """The open_clip state dict. Tensors are taken with their shapes checked; `check_all_used` names the rest."""

    def __init__(self, tensors: dict[str, torch.Tensor], *, where: Path) -> None:
        self.tensors = tensors
        self.where = where
        self.used: set[str] = set()

    def shape(self, key: str) -> tuple[int, ...]:
        if key not in self.tensors:
            raise InvalidCheckpointError(f"{self.where} is missing the weight {key!r}")
        return tuple(self.tensors[key].shape)

    def take(self, key: str, *shape: int) -> torch.Tensor:
        if self.shape(key) != shape:
            raise InvalidCheckpointError(
                f"{self.where}: the weight {key!r} has shape {list(self.shape(key))}, expected {list(shape)}"
            )
        self.used.add(key)
        return self.tensors[key].float()

    def count(self, prefix: str) -> int:
        """Blocks numbered from 0 under `prefix` (`visual.trunk.blocks.` -> 1 + the highest index)."""
        pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
        indices = [int(m.group(1)) for key in self.tensors if (m := pattern.match(key))]
        return max(indices, default=-1) + 1

    def check_all_used(self) -> None:
        unused = sorted(set(self.tensors) - self.used)
        if unused:
            shown = ", ".join(repr(key) for key in unused[:5])
            raise InvalidCheckpointError(
                f"{self.where} has {len(unused)} unexpected weight(s): {shown}{', ...' if len(unused) > 5 else ''}"
            )


def vision_arch(vision_cfg: dict[str, Any], source: SourceWeights, *, where: Path) -> VisionArch:
    """Width, depth and MLP width from the weights; heads and GELU form from the timm name."""
    timm_name = str(vision_cfg["timm_model_name"])
    match = TIMM_SIGLIP_NAME.fullmatch(timm_name)
    if match is None or match["size"] not in TIMM_HEADS:
        raise UnsupportedModelError(
            f"{where}: timm model {timm_name!r} is not a supported SigLIP tower "
            f"(vit_{{{'|'.join(TIMM_HEADS)}}}_patch<P>_siglip_<resolution>)"
        )
    conv = source.shape("visual.trunk.patch_embed.proj.weight")
    if len(conv) != 4 or conv[1] != 3 or conv[2] != conv[3] or conv[2] != int(match["patch"]):
        raise InvalidCheckpointError(
            f"{source.where}: visual.trunk.patch_embed.proj.weight has shape {list(conv)}, which does not fit "
            f"{timm_name} ([width, 3, {match['patch']}, {match['patch']}])"
        )
    width, patch = conv[0], conv[2]
    heads = TIMM_HEADS[match["size"]]
    if width % heads:
        raise InvalidCheckpointError(f"{source.where}: width {width} is not divisible by {timm_name}'s {heads} heads")
    image_size = vision_cfg.get("image_size", 224)
    if isinstance(image_size, list | tuple):
        if len(set(image_size)) != 1:
            raise UnsupportedModelError(f"{where}: non-square image_size {image_size}")
        image_size = image_size[0]
    return VisionArch(
        timm_name=timm_name,
        width=width,
        depth=source.count("visual.trunk.blocks."),
        heads=heads,
        intermediate=source.shape("visual.trunk.blocks.0.mlp.fc1.weight")[0],  # also: no blocks at all
        patch=patch,
        image_size=int(image_size),
        hidden_act="gelu_pytorch_tanh" if timm_name in TIMM_TANH_GELU else "gelu",
    )


def text_arch(model_cfg: dict[str, Any]) -> TextArch:
    """All from the config, as open_clip builds it (model.py `_build_text_tower`); the weights are checked
    against it while they are mapped."""
    cfg = {**TEXT_DEFAULTS, **model_cfg["text_cfg"]}
    width = int(cfg["width"])
    projection = _projection_kind(cfg)
    return TextArch(
        width=width,
        layers=int(cfg["layers"]),
        heads=int(cfg["heads"]),
        intermediate=int(width * float(cfg["mlp_ratio"])),
        context_length=int(cfg["context_length"]),
        vocab_size=int(cfg["vocab_size"]),
        projection=projection,
        embed_dim=width if projection == "none" else int(model_cfg.get("embed_dim", 0)),
        layer_norm_eps=float((cfg.get("norm_kwargs") or {}).get("eps", 1e-5)),  # else torch's default
    )


def _projection_kind(text_cfg: dict[str, Any]) -> str:
    """open_clip TextTransformer: no projection, an nn.Linear when proj_bias, else a [width, dim] parameter."""
    if text_cfg.get("proj_type", "linear") == "none":
        return "none"
    return "linear" if text_cfg.get("proj_bias") else "matrix"


def convert_weights(source: SourceWeights, vision: VisionArch, text: TextArch) -> dict[str, torch.Tensor]:
    """The open_clip state dict as a transformers SiglipModel state dict (no transposes needed: both store
    nn.Linear weights as [out, in])."""
    weights = dict(_vision_weights(source, vision))
    weights.update(_text_weights(source, text))
    for key in ("logit_scale", "logit_bias"):  # 0-d in open_clip, [1] in HF (accepted too)
        shape = (1,) if source.shape(key) == (1,) else ()
        weights[key] = source.take(key, *shape).reshape(1)
    source.check_all_used()
    return weights


def _linear(source: SourceWeights, src: str, dst: str, out_features: int, in_features: int) -> Weights:
    yield f"{dst}.weight", source.take(f"{src}.weight", out_features, in_features)
    yield f"{dst}.bias", source.take(f"{src}.bias", out_features)


def _layer_norm(source: SourceWeights, src: str, dst: str, width: int) -> Weights:
    yield f"{dst}.weight", source.take(f"{src}.weight", width)
    yield f"{dst}.bias", source.take(f"{src}.bias", width)


def _split_qkv(weight: torch.Tensor, bias: torch.Tensor, dst: str) -> Weights:
    """Fused [q; k; v] rows (timm `attn.qkv`, torch MultiheadAttention `in_proj`) as three projections."""
    for name, w, b in zip(("q_proj", "k_proj", "v_proj"), weight.chunk(3), bias.chunk(3), strict=True):
        yield f"{dst}.{name}.weight", w
        yield f"{dst}.{name}.bias", b


def _encoder_layer(source: SourceWeights, src: str, dst: str, width: int, intermediate: int, *, timm: bool) -> Weights:
    """One pre-norm transformer block: timm `Block` (norm1, attn.qkv, attn.proj, norm2, mlp.fc1/fc2) or
    open_clip `ResidualAttentionBlock` (ln_1, attn.in_proj_*, attn.out_proj, ln_2, mlp.c_fc/c_proj)."""
    names = (
        ("norm1", "attn.qkv.weight", "attn.qkv.bias", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2") if timm
        else ("ln_1", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj", "ln_2", "mlp.c_fc", "mlp.c_proj")
    )
    norm1, qkv_weight, qkv_bias, out_proj, norm2, fc1, fc2 = names
    yield from _layer_norm(source, f"{src}.{norm1}", f"{dst}.layer_norm1", width)
    yield from _split_qkv(
        source.take(f"{src}.{qkv_weight}", 3 * width, width), source.take(f"{src}.{qkv_bias}", 3 * width),
        f"{dst}.self_attn",
    )
    yield from _linear(source, f"{src}.{out_proj}", f"{dst}.self_attn.out_proj", width, width)
    yield from _layer_norm(source, f"{src}.{norm2}", f"{dst}.layer_norm2", width)
    yield from _linear(source, f"{src}.{fc1}", f"{dst}.mlp.fc1", intermediate, width)
    yield from _linear(source, f"{src}.{fc2}", f"{dst}.mlp.fc2", width, intermediate)


def _vision_weights(source: SourceWeights, arch: VisionArch) -> Weights:
    src, dst, width = "visual.trunk", "vision_model", arch.width
    yield f"{dst}.embeddings.patch_embedding.weight", source.take(
        f"{src}.patch_embed.proj.weight", width, 3, arch.patch, arch.patch
    )
    yield f"{dst}.embeddings.patch_embedding.bias", source.take(f"{src}.patch_embed.proj.bias", width)
    yield f"{dst}.embeddings.position_embedding.weight", source.take(
        f"{src}.pos_embed", 1, arch.positions, width
    )[0]
    for i in range(arch.depth):
        yield from _encoder_layer(
            source, f"{src}.blocks.{i}", f"{dst}.encoder.layers.{i}", width, arch.intermediate, timm=True
        )
    yield from _layer_norm(source, f"{src}.norm", f"{dst}.post_layernorm", width)
    # timm AttentionPoolLatent -> SiglipMultiheadAttentionPoolingHead; in_proj is q followed by kv ([k; v]).
    pool, head = f"{src}.attn_pool", f"{dst}.head"
    yield f"{head}.probe", source.take(f"{pool}.latent", 1, 1, width)
    yield f"{head}.attention.in_proj_weight", torch.cat(
        [source.take(f"{pool}.q.weight", width, width), source.take(f"{pool}.kv.weight", 2 * width, width)]
    )
    yield f"{head}.attention.in_proj_bias", torch.cat(
        [source.take(f"{pool}.q.bias", width), source.take(f"{pool}.kv.bias", 2 * width)]
    )
    yield from _linear(source, f"{pool}.proj", f"{head}.attention.out_proj", width, width)
    yield from _layer_norm(source, f"{pool}.norm", f"{head}.layernorm", width)
    yield from _linear(source, f"{pool}.mlp.fc1", f"{head}.mlp.fc1", arch.intermediate, width)
    yield from _linear(source, f"{pool}.mlp.fc2", f"{head}.mlp.fc2", width, arch.intermediate)


def _text_weights(source: SourceWeights, arch: TextArch) -> Weights:
    src, dst, width = "text", "text_model", arch.width
    yield f"{dst}.embeddings.token_embedding.weight", source.take(
        f"{src}.token_embedding.weight", arch.vocab_size, width
    )
    yield f"{dst}.embeddings.position_embedding.weight", source.take(
        f"{src}.positional_embedding", arch.context_length, width
    )
    for i in range(arch.layers):
        yield from _encoder_layer(
            source, f"{src}.transformer.resblocks.{i}", f"{dst}.encoder.layers.{i}", width, arch.intermediate,
            timm=False,
        )
    yield from _layer_norm(source, f"{src}.ln_final", f"{dst}.final_layer_norm", width)
    if arch.projection == "linear":
        yield from _linear(source, f"{src}.text_projection", f"{dst}.head", arch.embed_dim, width)
    elif arch.projection == "matrix":  # used as `pooled @ text_projection`
        yield f"{dst}.head.weight", source.take(f"{src}.text_projection", width, arch.embed_dim).T
        yield f"{dst}.head.bias", torch.zeros(arch.embed_dim)
    else:
        yield f"{dst}.head.weight", torch.eye(width)
        yield f"{dst}.head.bias", torch.zeros(width)


# --- the HF module ---


def siglip_config(vision: VisionArch, text: TextArch) -> Any:
    from transformers import SiglipConfig

    return SiglipConfig(
        vision_config={
            "hidden_size": vision.width,
            "intermediate_size": vision.intermediate,
            "num_hidden_layers": vision.depth,
            "num_attention_heads": vision.heads,
            "image_size": vision.image_size,
            "patch_size": vision.patch,
            "hidden_act": vision.hidden_act,
            "layer_norm_eps": TIMM_LAYER_NORM_EPS,
        },
        text_config={
            "vocab_size": text.vocab_size,
            "hidden_size": text.width,
            "intermediate_size": text.intermediate,
            "projection_size": text.embed_dim,
            "num_hidden_layers": text.layers,
            "num_attention_heads": text.heads,
            "max_position_embeddings": text.context_length,
            "hidden_act": "gelu",  # open_clip TextTransformer: nn.GELU, exact erf (check_supported)
            "layer_norm_eps": text.layer_norm_eps,
            # config.json-style special ids are unused here (our tokenizer pads); None avoids range warnings.
            "bos_token_id": None,
            "eos_token_id": None,
        },
    )


def build_module(vision: VisionArch, text: TextArch, weights: dict[str, torch.Tensor]) -> torch.nn.Module:
    from transformers import SiglipModel

    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers: random init first, only slower
        no_init_weights = contextlib.nullcontext
    with no_init_weights():  # every parameter is overwritten by load_state_dict below
        module = SiglipModel._from_config(siglip_config(vision, text), attn_implementation="sdpa")
    module.load_state_dict(weights, strict=True)
    return module.eval()
