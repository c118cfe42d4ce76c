# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The training job an estimate is about, its options (one spec for the module and for ``run_estimate``),
and ``Span``, the optimistic/base/pessimistic triple every estimated number is.

Private to the collection.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .estimate_model import ModelError, ModelShape, lora_targets, shape_from_config, shape_from_params

METHODS = ("full", "lora", "qlora")
PRECISIONS = ("bf16", "amp")
OPTIMIZERS = ("adamw", "adamw_fused", "adamw_8bit", "sgd", "adafactor")
ATTENTIONS = ("sdpa", "flash", "eager")

# The job's options, as Ansible argument spec entries (the module's and run_estimate's).
JOB_SPEC: dict[str, dict[str, Any]] = {
    "model_config": {"type": "raw"},
    "params": {"type": "float"},
    "method": {"type": "str", "default": "full", "choices": list(METHODS)},
    "lora_r": {"type": "int", "default": 16},
    "lora_targets": {"type": "raw"},
    "lora_dropout": {"type": "float", "default": 0.05},
    "precision": {"type": "str", "default": "bf16", "choices": list(PRECISIONS)},
    "optimizer": {"type": "str", "default": "adamw", "choices": list(OPTIMIZERS)},
    "micro_batch_size": {"type": "int", "default": 1},
    "seq_len": {"type": "int", "default": 2048},
    "grad_accum": {"type": "int", "default": 1},
    "gradient_checkpointing": {"type": "bool", "default": False},
    "attention": {"type": "str", "default": "sdpa", "choices": list(ATTENTIONS)},
    "fused_cross_entropy": {"type": "bool", "default": False},
    "num_gpus": {"type": "int", "default": 1},
    "zero_stage": {"type": "int", "default": 0, "choices": [0, 1, 2, 3]},
    "cpu_offload": {"type": "bool", "default": False},
    # A count of tokens, not a credential (Ansible's secret-name heuristic flags "token").
    "train_tokens": {"type": "float", "no_log": False},
    "max_steps": {"type": "int"},
    "checkpoint_every_steps": {"type": "int"},
    "checkpoints_kept": {"type": "int", "default": 3},
    "weights_gb": {"type": "float"},
    "dataset_gb": {"type": "float", "default": 0},
    "env_gb": {"type": "float", "default": 5},
    "disk_gb": {"type": "float"},
}


class JobError(ValueError):
    """A job that cannot be estimated; the message names the option and what to give."""


@dataclass(frozen=True)
class Span:
    """One estimated quantity: optimistic, base and pessimistic."""

    opt: float
    base: float
    pess: float

    @classmethod
    def of(cls, value: float) -> Span:
        return cls(value, value, value)

    def map(self, fn: Callable[[float], float]) -> Span:
        return Span(fn(self.opt), fn(self.base), fn(self.pess))

    def __add__(self, other: Span | float) -> Span:
        if isinstance(other, Span):
            return Span(self.opt + other.opt, self.base + other.base, self.pess + other.pess)
        return self.map(lambda v: v + other)

    __radd__ = __add__

    def __mul__(self, factor: Span | float) -> Span:
        if isinstance(factor, Span):
            return Span(self.opt * factor.opt, self.base * factor.base, self.pess * factor.pess)
        return self.map(lambda v: v * factor)

    __rmul__ = __mul__

    def top(self, other: Span) -> Span:
        return Span(max(self.opt, other.opt), max(self.base, other.base), max(self.pess, other.pess))

    def rounded(self, digits: int = 2) -> dict[str, float]:
        return {"opt": round(self.opt, digits), "base": round(self.base, digits), "pess": round(self.pess, digits)}


@dataclass(frozen=True)
class Job:
    shape: ModelShape
    method: str
    lora_r: int
    targets: tuple[str, ...]
    lora_dropout: float
    precision: str
    optimizer: str
    micro_batch: int
    seq_len: int
    grad_accum: int
    checkpointing: bool
    attention: str
    fused_ce: bool
    num_gpus: int
    zero_stage: int
    cpu_offload: bool
    train_tokens: float | None
    max_steps: int | None
    checkpoint_every: int | None
    checkpoints_kept: int
    weights_gb: float | None
    dataset_gb: float
    env_gb: float
    disk_gb: float | None
    exact_params: float | None = None  # a given total count, kept over the guessed shape's

    @property
    def tokens_per_micro_batch(self) -> int:
        return self.micro_batch * self.seq_len

    @property
    def tokens_per_step(self) -> int:
        return self.micro_batch * self.seq_len * self.grad_accum * self.num_gpus

    @property
    def params(self) -> float:
        return self.exact_params or float(self.shape.total)

    @property
    def lora_params(self) -> float:
        return float(self.shape.lora_params(self.lora_r, self.targets)) if self.method != "full" else 0.0

    @property
    def trainable(self) -> float:
        return self.lora_params if self.method != "full" else self.params

    @property
    def steps(self) -> int | None:
        if self.max_steps:
            return self.max_steps
        if self.train_tokens:
            return max(1, -(-int(self.train_tokens) // self.tokens_per_step))
        return None

    @property
    def total_tokens(self) -> float | None:
        steps = self.steps
        return None if steps is None else float(steps * self.tokens_per_step)

    def varied(self, **changes: Any) -> Job:
        """The same job with some options changed (what-would-fit suggestions)."""
        fields = {**self.__dict__, **changes}
        return Job(**fields)

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "precision": self.precision, "optimizer": self.optimizer,
                "micro_batch_size": self.micro_batch, "seq_len": self.seq_len, "grad_accum": self.grad_accum,
                "gradient_checkpointing": self.checkpointing, "num_gpus": self.num_gpus,
                "zero_stage": self.zero_stage, "cpu_offload": self.cpu_offload, "attention": self.attention,
                "fused_cross_entropy": self.fused_ce, "checkpoints_kept": self.checkpoints_kept,
                "lora_r": self.lora_r if self.method != "full" else None,
                "lora_targets": list(self.targets) if self.method != "full" else None}


def load_model_config(value: Any) -> Mapping[str, Any]:
    """``model_config`` as given: a mapping, a path to a config.json, or a JSON string."""
    if isinstance(value, Mapping):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            try:
                return json.loads(text)
            except ValueError as exc:
                raise JobError(f"model_config is not valid JSON: {exc}") from None
        path = os.path.expanduser(text)
        if not os.path.isfile(path):
            raise JobError(f"model_config: no file {text!r} (give the path of the model's config.json, "
                           "or its keys as a mapping)")
        try:
            with open(path, encoding="utf-8") as handle:
                loaded = json.load(handle)
        except (OSError, ValueError) as exc:
            raise JobError(f"model_config: {text!r} is not a readable JSON file: {exc}") from None
        if not isinstance(loaded, Mapping):
            raise JobError(f"model_config: {text!r} does not hold a JSON object")
        return loaded
    raise JobError("model_config must be a mapping or a path to a config.json")


def _at_least(params: Mapping[str, Any], name: str, floor: float, strict: bool = False) -> None:
    value = params.get(name)
    if value is None:
        return
    if (value <= floor) if strict else (value < floor):
        relation = "above" if strict else "at least"
        raise JobError(f"{name} must be {relation} {floor:g}, got {value:g}")


def job_from_params(params: Mapping[str, Any]) -> Job:
    """The job from validated options (types already checked); JobError names the first bad one."""
    for name, floor, strict in (("lora_r", 1, False), ("micro_batch_size", 1, False), ("seq_len", 1, False),
                                ("grad_accum", 1, False), ("num_gpus", 1, False), ("train_tokens", 0, True),
                                ("max_steps", 1, False), ("checkpoint_every_steps", 1, False),
                                ("checkpoints_kept", 0, False), ("weights_gb", 0, False), ("dataset_gb", 0, False),
                                ("env_gb", 0, False), ("disk_gb", 0, True), ("lora_dropout", 0, False)):
        _at_least(params, name, floor, strict)
    if params.get("model_config") is None and params.get("params") is None:
        raise JobError("give model_config (a config.json path or its keys) or params (a total parameter count)")
    try:
        if params.get("model_config") is not None:
            shape = shape_from_config(load_model_config(params["model_config"]))
            exact = None
        else:
            shape = shape_from_params(params["params"])
            exact = float(params["params"])
        targets = lora_targets(params.get("lora_targets"))
    except ModelError as exc:
        raise JobError(str(exc)) from None
    if params.get("zero_stage", 0) and params.get("num_gpus", 1) < 1:
        raise JobError("zero_stage needs num_gpus")
    if params.get("cpu_offload") and not params.get("zero_stage"):
        raise JobError("cpu_offload is DeepSpeed's: set zero_stage (2 or 3) too, or drop cpu_offload")
    return Job(shape=shape, method=params.get("method", "full"), lora_r=params.get("lora_r", 16), targets=targets,
               lora_dropout=params.get("lora_dropout", 0.05), precision=params.get("precision", "bf16"),
               optimizer=params.get("optimizer", "adamw"), micro_batch=params.get("micro_batch_size", 1),
               seq_len=params.get("seq_len", 2048), grad_accum=params.get("grad_accum", 1),
               checkpointing=bool(params.get("gradient_checkpointing", False)),
               attention=params.get("attention", "sdpa"), fused_ce=bool(params.get("fused_cross_entropy", False)),
               num_gpus=params.get("num_gpus", 1), zero_stage=params.get("zero_stage", 0),
               cpu_offload=bool(params.get("cpu_offload", False)), train_tokens=params.get("train_tokens"),
               max_steps=params.get("max_steps"), checkpoint_every=params.get("checkpoint_every_steps"),
               checkpoints_kept=params.get("checkpoints_kept", 3), weights_gb=params.get("weights_gb"),
               dataset_gb=params.get("dataset_gb") or 0.0, env_gb=params.get("env_gb", 5.0),
               disk_gb=params.get("disk_gb"), exact_params=exact)
