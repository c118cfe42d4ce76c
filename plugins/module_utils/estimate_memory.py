# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""GPU memory, host RAM and disk of a training job, each as a ``Span`` with its parts.

The GPU model (docs/estimator.md has the derivation and the published cases it is checked against):

* model states by regime: bytes per parameter for weights, gradients, optimizer states and the
  optimizer step's transient (PyTorch's foreach AdamW allocates one more copy of ``exp_avg_sq``);
  DeepSpeed ZeRO's per-GPU formulas when a stage is set;
* activations per token per layer ``h*c`` with ``c = 16 + 4k/a + 8I/h`` for a Llama-style block
  (Korthikanti et al. 2022, re-derived for SwiGLU, GQA and fused attention), ``2h`` (or ``4h`` with an
  fp32 residual stream) with full gradient checkpointing, and ``5*a*s`` per token with eager attention;
* the logits and loss, ``T*V*beta`` with beta about 14 bytes per logit unless cross-entropy is fused;
* the peak is ``max(forward/backward, optimizer step)``: what ``torch.cuda.max_memory_allocated`` reads;
  nvidia-smi shows that times the allocator's reserve ratio plus the CUDA context.

Private to the collection.
"""

from __future__ import annotations

from dataclasses import dataclass

from .estimate_job import Job, Span

GIB = float(2**30)
GB = 1e9

# Parts that are ranges rather than counts (docs/estimator.md, "opt / base / pess").
# Bytes per logit: bf16 logits, their fp32 upcast, the saved log-softmax and its gradient (HF's loss under
# autocast, fitted 14.8 on fms-acceleration); DeepSpeed's mixed precision runs the model without autocast,
# so a loss that does not upcast stays 16-bit (Qwen's published DeepSpeed runs fit about 7).
LOGIT_BYTES = Span(6, 13, 18)
LOGIT_BYTES_DEEPSPEED = Span(6, 8, 18)
LOGIT_BYTES_FUSED = Span(0, 1, 2)
MISC = Span(0.3, 0.5, 1.5) * GIB
CONTEXT = Span(0.3, 0.5, 1.0) * GIB
RESERVE_RATIO = {"full": Span(1.05, 1.12, 1.40), "lora": Span(1.05, 1.17, 1.40), "qlora": Span(1.10, 1.30, 1.45)}
NF4_BYTES = 4.127 / 8  # QLoRA with double quantisation (arXiv 2305.14314)
ZERO_BUCKETS = Span(0.25, 0.5, 2.0) * GIB
PROCESS_RAM = Span(3, 4, 6) * GIB
DATA_RAM = Span(0.5, 1, 4) * GIB
SHARD = 5 * GB  # Hugging Face's default safetensors shard: what a low-memory load holds at once


@dataclass(frozen=True)
class GpuMemory:
    parts: dict[str, Span]  # bytes, per GPU
    forward_backward: Span
    step: Span
    allocated: Span
    device: Span
    peak_phase: str

    def report(self) -> dict[str, object]:
        return {"parts_gib": {name: (span * (1 / GIB)).rounded(3) for name, span in self.parts.items()},
                "forward_backward_gib": (self.forward_backward * (1 / GIB)).rounded(3),
                "optimizer_step_gib": (self.step * (1 / GIB)).rounded(3),
                "peak_phase": self.peak_phase}


def optimizer_bytes(optimizer: str, state_bytes: float) -> tuple[Span, Span]:
    """(states, step transient) bytes per trainable parameter whose states are ``state_bytes`` wide."""
    if optimizer == "adamw":
        return Span.of(2 * state_bytes), Span.of(state_bytes)  # m and v, plus foreach's copy of v
    if optimizer == "adamw_fused":
        return Span.of(2 * state_bytes), Span.of(0)
    if optimizer == "adamw_8bit":
        return Span.of(2), Span.of(0)
    if optimizer == "sgd":
        return Span.of(0), Span.of(0)
    # Adafactor: factored second moments are nearly nothing; an older HF doc says "slightly more than 4".
    return Span(0, 0.1, 4), Span(0, state_bytes, 2 * state_bytes)


def model_states(job: Job) -> dict[str, Span]:
    """Weights, gradients, optimizer states and the step's transient, in bytes per GPU."""
    params, shape, gpus = job.params, job.shape, job.num_gpus
    weight_bytes = 2.0 if job.precision == "bf16" else 4.0
    parts: dict[str, Span] = {}
    if job.method == "full":
        trainable, frozen_weights = params, Span.of(0)
    else:
        trainable = job.lora_params
        if job.method == "qlora":
            non_linear = params - shape.linear
            # prepare_model_for_kbit_training upcasts what is not 4-bit to fp32 (the usual recipe).
            frozen_weights = Span.of(NF4_BYTES * shape.linear) + Span(2, 4, 4) * non_linear
        else:
            frozen_weights = Span.of(weight_bytes * params)
        if job.zero_stage == 3:
            frozen_weights = frozen_weights * (1 / gpus)
    if job.zero_stage == 0 or job.precision == "bf16" or job.method != "full":
        # Plain PyTorch states (LoRA adapters stay fp32, PEFT's default); sharded across the GPUs by stage
        # as FSDP and ZeRO do with pure bf16 parameters: optimizer (1), gradients too (2), weights too (3).
        state_bytes = weight_bytes if job.method == "full" else 4.0
        states, transient = optimizer_bytes(job.optimizer, state_bytes)
        shard = [1.0 / gpus if job.zero_stage >= stage else 1.0 for stage in (1, 2, 3)]
        parts["weights"] = frozen_weights + state_bytes * trainable * shard[2]
        parts["grads"] = Span.of(state_bytes * trainable * shard[1])
        parts["optimizer"] = states * (trainable * shard[0])
        parts["step_transient"] = transient * (trainable * shard[0])
        if job.zero_stage:
            parts["buckets"] = ZERO_BUCKETS
        if job.cpu_offload:
            parts["optimizer"] = parts["step_transient"] = Span.of(0)
        return parts
    # DeepSpeed ZeRO with mixed precision: bf16 parameters, an fp32 master copy and fp32 Adam states in the
    # optimizer (its own estimators), plus the fp32 copy of this GPU's gradient partition made at the step.
    largest = 4.0 * shape.largest_layer
    parts["step_transient"] = Span.of(0 if job.cpu_offload else 4 * trainable / gpus)
    if job.zero_stage == 1:
        parts["weights"] = frozen_weights + 2 * trainable
        parts["grads"] = Span.of(2 * trainable)
        parts["optimizer"] = Span.of(12 * trainable / gpus)
    elif job.zero_stage == 2:
        parts["weights"] = frozen_weights + 2 * trainable
        parts["grads"] = Span.of(0 if job.cpu_offload else 2 * trainable)
        parts["optimizer"] = Span.of(0 if job.cpu_offload else 16 * trainable / gpus)
    else:
        parts["weights"] = frozen_weights + (largest if job.cpu_offload else largest + 2 * trainable / gpus)
        parts["grads"] = Span.of(0 if job.cpu_offload else 2 * trainable / gpus)
        parts["optimizer"] = Span.of(0 if job.cpu_offload else 14 * trainable / gpus)
    parts["buckets"] = ZERO_BUCKETS
    return parts


def activation_parts(job: Job) -> dict[str, Span]:
    """Activations kept for backward and the logits, in bytes per GPU for one micro-batch."""
    shape = job.shape
    tokens = float(job.tokens_per_micro_batch)
    per_layer = 16 + 4 * shape.kv_heads / shape.heads + 8 * shape.intermediate / shape.hidden
    if job.method != "full" and job.lora_dropout > 0:
        # Each adapted module keeps its dropout mask and dropped input.
        per_layer += 3 * shape.lora_input_width(job.targets) / shape.hidden
    c = Span(0.85 * per_layer, per_layer, 1.1 * per_layer)
    fp32_residual = job.method == "qlora" or job.precision == "amp"
    # QLoRA's residual stream is fp32 only when its recipe upcast the embeddings (the usual one does).
    kept = Span(4 if job.precision == "amp" else 2, 4 if fp32_residual else 2, 4)
    deepspeed_mixed = job.zero_stage > 0 and job.precision == "amp"
    beta = LOGIT_BYTES_FUSED if job.fused_ce else LOGIT_BYTES_DEEPSPEED if deepspeed_mixed else LOGIT_BYTES
    logits = beta * (tokens * shape.vocab)
    eager = 5.0 * shape.heads * job.seq_len * tokens if job.attention == "eager" else 0.0
    if job.checkpointing:
        # Layer inputs for every layer; one layer is recomputed at a time (after the logits are freed).
        stack = kept * (shape.layers * tokens * shape.hidden)
        recompute = (c + 6) * (tokens * shape.hidden) + eager
        return {"activations": stack, "logits_or_recompute": logits.top(recompute)}
    return {"activations": c * (shape.layers * tokens * shape.hidden) + shape.layers * eager, "logits": logits}


def gpu_memory(job: Job) -> GpuMemory:
    parts = model_states(job)
    parts.update(activation_parts(job))
    parts["misc"] = MISC
    if job.precision == "amp":
        # Autocast keeps a bf16 copy of every weight it casts until backward is done (bitsandbytes'
        # 4-bit layers dequantise on their own, and ZeRO's parameters are bf16 already).
        cast = job.shape.linear if job.method == "lora" or (job.method == "full" and job.zero_stage == 0) else 0
        parts["autocast_cache"] = Span.of(2.0 * cast)
    zero = Span.of(0)
    grads_persist = job.grad_accum > 1 or job.num_gpus > 1 or job.zero_stage > 0
    forward_backward = (parts["weights"] + parts["optimizer"] + parts.get("buckets", zero)
                        + (parts["grads"] if grads_persist else zero)
                        + parts["activations"] + parts.get("logits", zero) + parts.get("logits_or_recompute", zero)
                        + parts["misc"] + parts.get("autocast_cache", zero))
    states = parts["weights"] + parts["grads"] + parts["optimizer"] + parts["step_transient"]
    # The step's counts are exact; the slack is the allocator's rounding and the odd small buffer.
    step = states + Span(-0.02 * states.opt, 0, 0.03 * states.pess + 0.5 * GIB) + parts.get("buckets", zero)
    allocated = forward_backward.top(step)
    ratio = RESERVE_RATIO[job.method]
    device = allocated * ratio + CONTEXT
    phase = "optimizer_step" if step.base > forward_backward.base else "forward_backward"
    return GpuMemory(parts=parts, forward_backward=forward_backward, step=step, allocated=allocated,
                     device=device, peak_phase=phase)


def host_ram(job: Job) -> tuple[Span, dict[str, Span]]:
    """Host RAM of the instance, bytes: processes, loading the weights, DeepSpeed offload, data workers."""
    weight_file = weights_file_bytes(job)
    load = Span(min(weight_file, 2 * GB), min(weight_file, SHARD), weight_file + min(weight_file, SHARD))
    parts = {"processes": PROCESS_RAM * job.num_gpus, "weights_loading": load * job.num_gpus,
             "data_workers": DATA_RAM}
    trainable = job.trainable
    if job.cpu_offload and job.zero_stage == 2:
        parts["offload"] = Span.of(trainable * max(4 * job.num_gpus, 16) * 1.5)
    elif job.cpu_offload and job.zero_stage == 3:
        parts["offload"] = Span.of(trainable * 18 * 1.5)
    total = sum(parts.values(), Span.of(0)) * Span(1.0, 1.1, 1.2)
    return total, parts


def weights_file_bytes(job: Job) -> float:
    """The model as downloaded: weights_gb when given, else a bf16 checkpoint of the model."""
    return job.weights_gb * GB if job.weights_gb is not None else 2.0 * job.params


def checkpoint_bytes(job: Job) -> float:
    """One Trainer checkpoint: the trainable weights as saved plus optimizer.pt."""
    if job.zero_stage > 0 and job.method == "full":
        return 14.0 * job.params
    trainable = job.trainable
    state_bytes = 4.0 if job.method != "full" or job.precision == "amp" else 2.0
    states = optimizer_bytes(job.optimizer, state_bytes)[0]
    return (state_bytes + states.base) * trainable


def saves(job: Job) -> int:
    """How many checkpoints the run writes (the keep count when the cadence is unknown)."""
    steps = job.steps
    if steps and job.checkpoint_every:
        return max(1, steps // job.checkpoint_every)
    return max(1, job.checkpoints_kept)


def disk(job: Job) -> tuple[Span, dict[str, Span]]:
    """Disk on the instance, bytes: environment, weights, data, the checkpoints on disk at once, final model."""
    checkpoint = checkpoint_bytes(job)
    kept = job.checkpoints_kept or saves(job)
    on_disk = min(kept, saves(job)) + 1  # rotation deletes the oldest only after the new one is written
    final = job.params * (2.0 if job.precision == "bf16" else 4.0) if job.method == "full" else 4.0 * job.lora_params
    parts = {"environment": Span(0.5, 1, 2) * (job.env_gb * GB), "weights": Span.of(weights_file_bytes(job)),
             "dataset": Span.of(job.dataset_gb * GB), "checkpoints": Span.of(on_disk * checkpoint),
             "final_model": Span.of(final)}
    total = sum(parts.values(), Span.of(0)) * Span(1.0, 1.15, 1.3)
    return total, parts
