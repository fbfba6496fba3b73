"""SigLIP's two towers in plain torch: the module tree of transformers' `SiglipModel`, without transformers.

Why this exists: importing `transformers.models.siglip.modeling_siglip` costs ~3 s on the 2-core CPU of
bench/results/cli_latency.md (it imports `modeling_utils`, which pulls torch.distributed.tensor, dynamo, the
generation and loss packages and scipy), more than the whole 2.5 s budget of `siglip-serve classify` with the
demo model. The network itself is small (big_vision's models/proj/image_text/two_towers.py is ~180 lines), so
HF-format checkpoints (`model_type: "siglip"`, models/hf.py) run on these modules instead. The alternatives we
measured and rejected are recorded in bench/results/cli_latency.md.

Same parameter names as transformers 5.x (`vision_model.encoder.layers.{i}.self_attn.q_proj.weight`, ...), so
`model.safetensors` loads with `strict=True`, and the same functions in the same order (LayerNorm, SDPA with
scale head_dim**-0.5 and no mask, `gelu(approximate="tanh")` for `gelu_pytorch_tanh`, `nn.MultiheadAttention`
for the MAP head), so the outputs equal transformers' (bit for bit in float32 on this project's CPU;
tests/unit/test_loading.py compares every layer to 1e-6), and tests/parity/* compare the loaded model against
transformers' own `SiglipModel`.

Calling conventions kept from transformers because the rest of the package uses them: `vision_model(pixel_values=)`
and `text_model(input_ids=)` return `.last_hidden_state` and `.pooler_output`; `output_hidden_states=True` (or a
list of indices, as transformers' `output_capturing.selected_hidden_states`) adds `.hidden_states`, where entry 0 is
the embeddings and entry k the output of layer k (models/features.py numbers layers this way).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn import functional

from siglip_serve.errors import InvalidCheckpointError, UnsupportedModelError

logger = logging.getLogger(__name__)

# transformers' ACT2FN entries that SigLIP checkpoints use: HF's google/siglip-* say "gelu_pytorch_tanh",
# open_clip's SigLIP 1 towers use the exact erf GELU (notes §4), which transformers calls "gelu".
ACTIVATIONS = {
    "gelu_pytorch_tanh": partial(functional.gelu, approximate="tanh"),
    "gelu": functional.gelu,
}


# --- configuration: the fields of transformers' SiglipVisionConfig / SiglipTextConfig that shape the network ---


@dataclass(frozen=True)
class TowerConfig:
    """Defaults are transformers 5.x's (configuration_siglip.py): google/siglip-* config.json files omit many."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6


@dataclass(frozen=True)
class VisionConfig(TowerConfig):
    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    vision_use_head: bool = True


@dataclass(frozen=True)
class TextConfig(TowerConfig):
    vocab_size: int = 32000
    max_position_embeddings: int = 64
    projection_size: int | None = None  # None: hidden_size, as transformers

    @property
    def embed_dim(self) -> int:
        return self.hidden_size if self.projection_size is None else self.projection_size


@dataclass(frozen=True)
class SiglipConfig:
    vision_config: VisionConfig
    text_config: TextConfig

    @classmethod
    def from_dict(cls, config: Mapping[str, Any], *, where: Path | str = "config.json") -> SiglipConfig:
        return cls(vision_config=_tower_config(VisionConfig, config.get("vision_config") or {}, where),
                   text_config=_tower_config(TextConfig, config.get("text_config") or {}, where))

    @classmethod
    def from_file(cls, path: Path) -> SiglipConfig:
        try:
            return cls.from_dict(json.loads(path.read_text()), where=path)
        except (OSError, json.JSONDecodeError) as exc:
            raise InvalidCheckpointError(f"cannot read {path}: {exc}") from None


def _tower_config(kind: type[TowerConfig], values: Mapping[str, Any], where: Path | str) -> Any:
    """Only the fields that shape the network are read; token ids, dropout and the like are ignored."""
    given = {f.name: values[f.name] for f in fields(kind) if values.get(f.name) is not None}
    try:
        config = kind(**{name: type(getattr(kind, name))(value) if name != "projection_size" else int(value)
                         for name, value in given.items()})
    except (TypeError, ValueError) as exc:
        raise InvalidCheckpointError(f"{where}: {kind.__name__}: {exc}") from None
    if config.hidden_act not in ACTIVATIONS:
        raise UnsupportedModelError(
            f"{where}: hidden_act {config.hidden_act!r} is not supported (supported: {', '.join(ACTIVATIONS)})")
    if config.hidden_size % config.num_attention_heads:
        raise InvalidCheckpointError(f"{where}: hidden_size {config.hidden_size} is not a multiple of "
                                     f"num_attention_heads {config.num_attention_heads}")
    if isinstance(config, VisionConfig) and not config.vision_use_head:
        # transformers then returns no pooled output; every SigLIP zero-shot checkpoint has the MAP head.
        raise UnsupportedModelError(f"{where}: vision_use_head false (no pooled image embedding) is not supported")
    return config


class TowerOutput(NamedTuple):
    """What transformers' BaseModelOutputWithPooling holds, as far as this package reads it."""

    last_hidden_state: torch.Tensor
    pooler_output: torch.Tensor
    hidden_states: tuple[torch.Tensor | None, ...] | None = None


# --- the network ---
# Layers whose initialization is skipped: every parameter is replaced by the checkpoint's tensor, and
# initializing first costs seconds for so400m. (Building on the meta device instead would import
# torch._dynamo, ~2 s, for the first random init on meta: torch/_compile.py via torch._refs.normal_.)


class Linear(nn.Linear):
    def reset_parameters(self) -> None:
        pass


class LayerNorm(nn.LayerNorm):
    def reset_parameters(self) -> None:
        pass


class Embedding(nn.Embedding):
    def reset_parameters(self) -> None:
        pass


class Conv2d(nn.Conv2d):
    def reset_parameters(self) -> None:
        pass


class MultiheadAttention(nn.MultiheadAttention):
    def _reset_parameters(self) -> None:
        pass


class Attention(nn.Module):
    """Multi-head self-attention without a mask: the SigLIP towers attend over every position."""

    def __init__(self, config: TowerConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scale = self.head_dim**-0.5
        self.k_proj = Linear(config.hidden_size, config.hidden_size)
        self.v_proj = Linear(config.hidden_size, config.hidden_size)
        self.q_proj = Linear(config.hidden_size, config.hidden_size)
        self.out_proj = Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        shape = (*hidden_states.shape[:-1], -1, self.head_dim)
        queries = self.q_proj(hidden_states).view(shape).transpose(1, 2)
        keys = self.k_proj(hidden_states).view(shape).transpose(1, 2)
        values = self.v_proj(hidden_states).view(shape).transpose(1, 2)
        attended = functional.scaled_dot_product_attention(queries, keys, values, scale=self.scale)
        attended = attended.transpose(1, 2).contiguous().reshape(*hidden_states.shape[:-1], -1).contiguous()
        return self.out_proj(attended)


class MLP(nn.Module):
    def __init__(self, config: TowerConfig) -> None:
        super().__init__()
        self.activation_fn = ACTIVATIONS[config.hidden_act]
        self.fc1 = Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(hidden_states)))


class EncoderLayer(nn.Module):
    """Pre-LayerNorm transformer block."""

    def __init__(self, config: TowerConfig) -> None:
        super().__init__()
        self.layer_norm1 = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = Attention(config)
        self.layer_norm2 = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MLP(config)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states + self.self_attn(self.layer_norm1(hidden_states))
        return hidden_states + self.mlp(self.layer_norm2(hidden_states))


class Encoder(nn.Module):
    def __init__(self, config: TowerConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, hidden_states: torch.Tensor,
                keep: Sequence[int] | None) -> tuple[torch.Tensor, tuple[torch.Tensor | None, ...] | None]:
        """The output, and with `keep` the inputs of every layer and the output (only the indices in `keep`)."""
        # Only the asked-for states are held: all 28 of so400m at batch 32 would be ~3 GB in float32.
        kept: list[torch.Tensor | None] = [None] * (len(self.layers) + 1)
        for index, layer in enumerate(self.layers):
            if keep is not None and index in keep:
                kept[index] = hidden_states
            hidden_states = layer(hidden_states)
        if keep is None:
            return hidden_states, None
        if len(self.layers) in keep:
            kept[-1] = hidden_states
        return hidden_states, tuple(kept)


def _kept_indices(output_hidden_states: bool | Sequence[int], num_layers: int) -> Sequence[int] | None:
    if isinstance(output_hidden_states, bool):
        return range(num_layers + 1) if output_hidden_states else None
    return [index % (num_layers + 1) for index in output_hidden_states]


class VisionEmbeddings(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.patch_embedding = Conv2d(config.num_channels, config.hidden_size, kernel_size=config.patch_size,
                                         stride=config.patch_size, padding="valid")
        # So400m/14 at 384: the valid convolution drops the last 6 pixels, 27 x 27 patches (notes §3).
        self.position_embedding = Embedding((config.image_size // config.patch_size) ** 2, config.hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(pixel_values.to(dtype=self.patch_embedding.weight.dtype))
        # Adding the whole table equals transformers' position_embedding(arange(N)): a lookup copies rows.
        return patches.flatten(2).transpose(1, 2) + self.position_embedding.weight


class MultiheadAttentionPoolingHead(nn.Module):
    """MAP head: a learned probe attends over the patches, then a residual MLP (big_vision `MAPHead`)."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.probe = nn.Parameter(torch.empty(1, 1, config.hidden_size))
        self.attention = MultiheadAttention(config.hidden_size, config.num_attention_heads, batch_first=True)
        self.layernorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MLP(config)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        probe = self.probe.repeat(hidden_states.shape[0], 1, 1)
        pooled = self.attention(probe, hidden_states, hidden_states)[0]
        pooled = pooled + self.mlp(self.layernorm(pooled))
        return pooled[:, 0]


class VisionTransformer(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = VisionEmbeddings(config)
        self.encoder = Encoder(config)
        self.post_layernorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.head = MultiheadAttentionPoolingHead(config)

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool | Sequence[int] = False) -> TowerOutput:
        keep = _kept_indices(output_hidden_states, self.config.num_hidden_layers)
        hidden_states, kept = self.encoder(self.embeddings(pixel_values), keep)
        last_hidden_state = self.post_layernorm(hidden_states)
        return TowerOutput(last_hidden_state, self.head(last_hidden_state), kept)


class TextEmbeddings(nn.Module):
    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.token_embedding = Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = Embedding(config.max_position_embeddings, config.hidden_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        length = input_ids.shape[-1]
        if length > self.position_embedding.num_embeddings:
            raise ValueError(f"{length} tokens, but the text tower has {self.position_embedding.num_embeddings} "
                             "positions")
        return self.token_embedding(input_ids) + self.position_embedding.weight[:length]


class TextTransformer(nn.Module):
    """No attention mask, by design: the tower was trained without one and pools the last position (notes §2)."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = TextEmbeddings(config)
        self.encoder = Encoder(config)
        self.final_layer_norm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.head = Linear(config.hidden_size, config.embed_dim)

    def forward(self, input_ids: torch.Tensor, output_hidden_states: bool | Sequence[int] = False) -> TowerOutput:
        keep = _kept_indices(output_hidden_states, self.config.num_hidden_layers)
        hidden_states, kept = self.encoder(self.embeddings(input_ids), keep)
        last_hidden_state = self.final_layer_norm(hidden_states)
        return TowerOutput(last_hidden_state, self.head(last_hidden_state[:, -1, :]), kept)


class SiglipModel(nn.Module):
    """Both towers and the learned temperature: logit = exp(logit_scale) * cos + logit_bias (notes §1)."""

    def __init__(self, config: SiglipConfig) -> None:
        super().__init__()
        self.config = config
        self.text_model = TextTransformer(config.text_config)
        self.vision_model = VisionTransformer(config.vision_config)
        self.logit_scale = nn.Parameter(torch.empty(1))
        self.logit_bias = nn.Parameter(torch.empty(1))


# --- loading ---


def load_siglip_model(directory: Path, *, weights_name: str = "model.safetensors") -> SiglipModel:
    """`config.json` + `model.safetensors` as float32 modules; a missing or misshapen weight is an error.

    The modules are built uninitialized (no random init: seconds for so400m) and take a fresh float32 copy
    of each stored tensor, read one at a time: a tensor viewed in place in the file's buffer can sit at any
    byte offset, and CPU kernels take other code paths on unaligned memory, so the same weights would give
    embeddings a few ulp apart depending on where they sit in the file. Checkpoints that still store
    `position_ids` buffers (older transformers saves) have them dropped: they are `arange`s.
    """
    from safetensors import SafetensorError, safe_open

    config = SiglipConfig.from_file(directory / "config.json")
    module = SiglipModel(config)
    path = directory / weights_name
    expected = module.state_dict()
    try:
        with safe_open(path, framework="pt") as stored:
            names = {name for name in stored.keys() if not name.endswith(".position_ids")}  # noqa: SIM118
            missing = sorted(set(expected) - names)
            if missing:
                raise InvalidCheckpointError(f"{path} is missing weights: {', '.join(missing[:5])}")
            shapes = {name: tuple(stored.get_slice(name).get_shape()) for name in expected}
            mismatched = [f"{name}: {shapes[name]}, expected {tuple(tensor.shape)}"
                          for name, tensor in expected.items() if shapes[name] != tuple(tensor.shape)]
            if mismatched:
                raise InvalidCheckpointError(f"{path} has weights of the wrong shape: {mismatched[:5]}")
            weights = {name: stored.get_tensor(name).to(torch.float32, copy=True) for name in expected}
    except (OSError, SafetensorError) as exc:  # corrupt or truncated download
        raise InvalidCheckpointError(f"cannot load weights from {path}: {exc}") from None
    unexpected = sorted(names - set(expected))
    if unexpected:  # as transformers: extra tensors (a classifier, say) do not change the towers
        logger.warning("%s: ignoring unexpected weights %s", path, unexpected[:5])
    module.load_state_dict(weights, strict=True, assign=True)
    return module.eval()
