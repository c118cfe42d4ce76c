# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A model's shape and its parameter counts, for the pre-rental estimate.

Counts follow a Llama-style block (attention ``h*h + 2*h*kv + h*h``, SwiGLU MLP ``3*h*I``, two norms),
which reproduces Mistral-7B (7,241,732,096) and Llama-3.1-8B (8.03 B) exactly. With only a parameter
count, the shape is guessed from it (``h/L = 128``, as Llama-7B and -13B have), and the estimate says so.

Private to the collection.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

CONFIG_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
               "intermediate_size", "vocab_size", "tie_word_embeddings")
# Other spellings of the same numbers in Hugging Face configs (GPT-2, Falcon, GPT-NeoX and kin).
CONFIG_ALIASES = {"n_embd": "hidden_size", "d_model": "hidden_size", "n_layer": "num_hidden_layers",
                  "num_layers": "num_hidden_layers", "n_head": "num_attention_heads",
                  "num_heads": "num_attention_heads", "n_inner": "intermediate_size",
                  "ffn_dim": "intermediate_size", "multi_query_group_num": "num_key_value_heads"}
LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Other names of the same layers, as PEFT recipes write them for other families.
MODULE_ALIASES = {"query": "q_proj", "key": "k_proj", "value": "v_proj", "dense": "o_proj",
                  "w1": "gate_proj", "w3": "up_proj", "w2": "down_proj", "fc1": "up_proj", "fc2": "down_proj"}
# PEFT's default targets for Llama-style models (TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING).
DEFAULT_LORA_TARGETS = ("q_proj", "v_proj")
ASPECT = 128  # hidden size per layer of the Llama family, for a shape guessed from a count


class ModelError(ValueError):
    """A model description that cannot be counted; the message says what to give instead."""


@dataclass(frozen=True)
class ModelShape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool
    guessed: bool = False  # shape guessed from a parameter count: wider ranges

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * (self.hidden // self.heads)

    def module_dims(self) -> dict[str, tuple[int, int]]:
        """(d_in, d_out) of each linear layer of one block."""
        h, kv, i = self.hidden, self.kv_dim, self.intermediate
        return {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def layer_linear(self) -> int:
        return sum(d_in * d_out for d_in, d_out in self.module_dims().values())

    @property
    def embedding(self) -> int:
        return self.vocab * self.hidden

    @property
    def linear(self) -> int:
        """Parameters in the blocks' linear layers: what 4-bit quantisation shrinks (lm_head stays 16-bit)."""
        return self.layers * self.layer_linear

    @property
    def total(self) -> int:
        norms = self.layers * 2 * self.hidden + self.hidden
        return self.linear + norms + self.embedding * (1 if self.tied else 2)

    @property
    def flops_params(self) -> int:
        """Parameters that cost FLOPs per token: all but the input embedding's lookup (a tied head computes)."""
        return self.total - (0 if self.tied else self.embedding)

    @property
    def largest_layer(self) -> int:
        return max(self.layer_linear, self.embedding)

    def lora_params(self, rank: int, targets: Sequence[str]) -> int:
        dims = self.module_dims()
        return self.layers * sum(rank * sum(dims[name]) for name in targets)

    def lora_input_width(self, targets: Sequence[str]) -> int:
        """Sum of the adapted modules' input widths: what LoRA dropout keeps per token per layer."""
        dims = self.module_dims()
        return sum(dims[name][0] for name in targets)

    def as_dict(self) -> dict[str, Any]:
        return {"hidden_size": self.hidden, "num_hidden_layers": self.layers, "num_attention_heads": self.heads,
                "num_key_value_heads": self.kv_heads, "intermediate_size": self.intermediate,
                "vocab_size": self.vocab, "tie_word_embeddings": self.tied, "guessed": self.guessed}


def _positive_int(config: Mapping[str, Any], key: str) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0 or int(value) != value:
        raise ModelError(f"model_config.{key} must be a positive whole number, got {value!r}")
    return int(value)


def shape_from_config(config: Mapping[str, Any]) -> ModelShape:
    """The shape from a Hugging Face ``config.json`` (or the same keys as a mapping)."""
    if not isinstance(config, Mapping):
        raise ModelError("model_config must be a mapping of config.json's keys or a path to a config.json")
    merged = dict(config)
    # Multimodal and some newer configs keep the language model's numbers under text_config.
    if "hidden_size" not in merged and isinstance(merged.get("text_config"), Mapping):
        merged = {**merged, **merged["text_config"]}
    for alias, key in CONFIG_ALIASES.items():
        if key not in merged and alias in merged and merged[alias] is not None:
            merged[key] = merged[alias]
    missing = [key for key in (*CONFIG_KEYS[:3], "vocab_size") if merged.get(key) is None]
    if missing:
        raise ModelError(f"model_config lacks {', '.join(missing)}: give the model's config.json (or these keys), "
                         "or give params (a total count) for a coarser estimate")
    hidden = _positive_int(merged, "hidden_size")
    heads = _positive_int(merged, "num_attention_heads")
    if hidden % heads:
        raise ModelError(f"model_config.hidden_size {hidden} is not a multiple of num_attention_heads {heads}")
    kv_heads = _positive_int(merged, "num_key_value_heads") if merged.get("num_key_value_heads") else heads
    intermediate = (_positive_int(merged, "intermediate_size") if merged.get("intermediate_size")
                    else _swiglu_width(hidden))
    return ModelShape(hidden=hidden, layers=_positive_int(merged, "num_hidden_layers"), heads=heads,
                      kv_heads=kv_heads, intermediate=intermediate, vocab=_positive_int(merged, "vocab_size"),
                      tied=bool(merged.get("tie_word_embeddings", False)))


def shape_from_params(params: float, vocab: int | None = None) -> ModelShape:
    """A Llama-shaped guess with ``params`` parameters: 12*h^2 per layer, h = 128*L."""
    if isinstance(params, bool) or not isinstance(params, (int, float)) or params < 1e6:
        raise ModelError(f"params must be the model's total parameter count (e.g. 7.2e9), got {params!r}")
    vocab = vocab or 32000
    # Solve L*12*h^2 + 2*V*h = P with L = h/128 by bisection on h: monotone, and a few steps suffice.
    low, high = 64.0, 65536.0
    for _step in range(60):
        hidden = (low + high) / 2
        if hidden / ASPECT * 12 * hidden**2 + 2 * vocab * hidden > params:
            high = hidden
        else:
            low = hidden
    hidden_int = max(128, round(low / 128) * 128)
    layers = max(1, round((params - 2 * vocab * hidden_int) / (12 * hidden_int**2)))
    heads = max(1, hidden_int // 128)
    return ModelShape(hidden=hidden_int, layers=layers, heads=heads, kv_heads=heads,
                      intermediate=_swiglu_width(hidden_int), vocab=vocab, tied=False, guessed=True)


def _swiglu_width(hidden: int) -> int:
    """Llama's rule: 2/3 of 4h, rounded up to a multiple of 256."""
    return -(-int(8 * hidden / 3) // 256) * 256


def lora_targets(names: str | Sequence[str] | None) -> tuple[str, ...]:
    """The adapted modules: names (aliases allowed), ``all-linear``, or PEFT's default."""
    if names is None or names == [] or names == "":
        return DEFAULT_LORA_TARGETS
    if isinstance(names, str):
        names = [names]
    if len(names) == 1 and str(names[0]).replace("_", "-").lower() == "all-linear":
        return LINEAR_MODULES
    chosen: list[str] = []
    for raw in names:
        name = MODULE_ALIASES.get(str(raw), str(raw))
        if name not in LINEAR_MODULES:
            raise ModelError(f"lora_targets: {raw!r} is not a linear layer of a Llama-style block; "
                             f"use some of {', '.join(LINEAR_MODULES)}, or all-linear")
        if name not in chosen:
            chosen.append(name)
    return tuple(chosen)
