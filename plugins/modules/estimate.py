#!/usr/bin/python
# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: estimate
short_description: Estimate a training job's GPU memory, RAM, disk, time and cost before renting
description:
  - From the model (its C(config.json), or a parameter count) and the training setup, estimates the
    peak GPU memory per GPU (what C(torch.cuda.max_memory_allocated) reads, and what C(nvidia-smi) would
    show), the host RAM and the disk, each as optimistic, base and pessimistic figures with every part
    of them (weights, gradients, optimizer states, the optimizer step's transient, activations, logits).
  - Given offers (the rows of M(mlops.vast.vast_offer)), says per offer whether the job fits (and by how
    much it does not, and what would make it fit), and the hours and the cost of the whole rental (GPU
    time with storage, the downloads and checkpoint uploads at the offer's prices), and ranks them by
    estimated total cost.
  - The formulas, their sources and the published measurements they are checked against are in
    C(docs/estimator.md). Needs no API key and sends no request.
version_added: 0.2.0
extends_documentation_fragment:
  - mlops.vast.attributes
  - mlops.vast.attributes.read_only
attributes:
  platform:
    platforms: all
    details: Runs on the controller; pure computation.
options:
  model_config:
    description:
      - The model, as its Hugging Face C(config.json) (a path on the controller) or the same keys as a
        mapping - C(hidden_size), C(num_hidden_layers), C(num_attention_heads), C(num_key_value_heads),
        C(intermediate_size), C(vocab_size), C(tie_word_embeddings).
      - One of O(model_config) and O(params) is required.
    type: raw
  params:
    description:
      - The model's total parameter count, when there is no config; the shape is then guessed (Llama-like,
        32k vocabulary) and the estimate is coarser.
    type: float
  method:
    description: Full fine-tune, LoRA on a 16-bit base, or QLoRA on a 4-bit (NF4) base.
    type: str
    choices: [full, lora, qlora]
    default: full
  lora_r:
    description: The LoRA rank.
    type: int
    default: 16
  lora_targets:
    description:
      - The adapted modules (C(q_proj), C(k_proj), C(v_proj), C(o_proj), C(gate_proj), C(up_proj),
        C(down_proj)), or C(all-linear). Default PEFT's, C(q_proj) and C(v_proj).
    type: raw
  lora_dropout:
    description: LoRA dropout; above 0 each adapted module keeps a mask and its input for backward.
    type: float
    default: 0.05
  precision:
    description:
      - C(bf16) loads the weights in bf16 (pure bf16 training); C(amp) keeps fp32 weights with bf16
        autocast (Hugging Face C(bf16=True) on an fp32 model).
    type: str
    choices: [bf16, amp]
    default: bf16
  optimizer:
    description:
      - C(adamw) is PyTorch's default (foreach) AdamW, which allocates one more copy of its second moment
        at the step; C(adamw_fused) does not; C(adamw_8bit) is bitsandbytes'.
    type: str
    choices: [adamw, adamw_fused, adamw_8bit, sgd, adafactor]
    default: adamw
  micro_batch_size:
    description: Sequences per GPU per forward pass.
    type: int
    default: 1
  seq_len:
    description: Tokens per sequence (the padded or packed length - the peak sits on the longest batch).
    type: int
    default: 2048
  grad_accum:
    description: Gradient accumulation steps.
    type: int
    default: 1
  gradient_checkpointing:
    description: Full activation recompute (Hugging Face C(gradient_checkpointing=True)).
    type: bool
    default: false
  attention:
    description: C(eager) keeps the attention scores (quadratic in the sequence); C(sdpa) and C(flash) do not.
    type: str
    choices: [sdpa, flash, eager]
    default: sdpa
  fused_cross_entropy:
    description: A fused or chunked cross-entropy (Liger, Unsloth, cut-cross-entropy), which keeps no full logits.
    type: bool
    default: false
  num_gpus:
    description: GPUs the job trains on (data parallel).
    type: int
    default: 1
  zero_stage:
    description: DeepSpeed ZeRO stage (0 is none).
    type: int
    choices: [0, 1, 2, 3]
    default: 0
  cpu_offload:
    description: DeepSpeed offload to host RAM (the optimizer with ZeRO-2; parameters too with ZeRO-3).
    type: bool
    default: false
  train_tokens:
    description: Tokens the whole run trains on (epochs included); or give O(max_steps).
    type: float
  max_steps:
    description:
      - Optimizer steps of the whole run, each O(micro_batch_size) x O(seq_len) x O(grad_accum) x O(num_gpus)
        tokens.
    type: int
  checkpoint_every_steps:
    description: Steps between two checkpoints.
    type: int
  checkpoints_kept:
    description: Checkpoints kept on the host (the Trainer's C(save_total_limit)); 0 keeps all.
    type: int
    default: 3
  weights_gb:
    description: The model's download size in GB; default a bf16 checkpoint of the model (2 bytes a parameter).
    type: float
  dataset_gb:
    description: The dataset's download size in GB.
    type: float
    default: 0
  env_gb:
    description: Disk for the environment (virtualenv, caches, builds) in GB.
    type: float
    default: 5
  disk_gb:
    description: The disk the rental will have, in GB (the disk check uses it; default the offer's).
    type: float
  offers:
    description: Offers to judge, price and rank, as M(mlops.vast.vast_offer) returns them.
    type: list
    elements: dict
    default: []
  bid_price:
    description: Price interruptible rentals at this bid ($/h) instead of the offers' on-demand price.
    type: float
  job:
    description:
      - The job's options above as one mapping (a run's C(run_estimate), as train.yml passes it), so a playbook
        need not splat a templated mapping into the task's arguments. An option also given on its own, with a
        value other than its default, wins.
      - A name that is not an option of this module fails the task.
    type: dict
    version_added: 0.2.0
  query:
    description:
      - An offer query (the search language of M(mlops.vast.vast_offer)); the result's RV(query) is it with
        the estimate's floors added where it does not already ask for as much.
    type: str
  max_total_usd:
    description:
      - The run's budget. Each offer says whether its optimistic cost is within it (C(within_budget)) and
        whether its pessimistic cost passes it (C(budget_at_risk)).
    type: float
notes:
  - The estimate is checked against published measurements of real fine-tunes
    (C(tests/data/published_memory_cases.yml)); C(bench/estimate.py) prints its error on each.
  - The GPU memory is per GPU; RAM is per instance; disk is GB of 10^9 bytes, memory GiB of 2^30 bytes.
seealso:
  - module: mlops.vast.vast_offer
"""

EXAMPLES = r"""
- name: Does a LoRA of Mistral-7B at 4k tokens fit, and on which offer is it cheapest?
  mlops.vast.estimate:
    model_config: models/mistral-7b/config.json
    method: lora
    lora_r: 16
    lora_targets: [q_proj, k_proj, v_proj, o_proj]
    micro_batch_size: 2
    seq_len: 4096
    gradient_checkpointing: true
    train_tokens: 50000000
    checkpoint_every_steps: 500
    offers: "{{ found.offers }}"
    max_total_usd: 20
  register: estimate

- name: Say it
  ansible.builtin.debug:
    msg: >-
      {{ estimate.gpu_mem_gib.base }} GiB per GPU; cheapest fitting offer
      {{ (estimate.offers | selectattr('fits') | first).cost_usd }}

- name: A coarse estimate from a parameter count
  mlops.vast.estimate:
    params: 8.0e9
    method: qlora
    seq_len: 2048
"""

RETURN = r"""
gpu_mem_gib:
  description: Peak allocated GPU memory per GPU (C(torch.cuda.max_memory_allocated)), GiB, as C(opt), C(base), C(pess).
  returned: always
  type: dict
  sample: {opt: 16.1, base: 17.4, pess: 18.9}
gpu_mem_device_gib:
  description: What C(nvidia-smi) would show per GPU (allocator reserve and CUDA context added), GiB.
  returned: always
  type: dict
ram_gib:
  description: Host RAM of the instance, GiB.
  returned: always
  type: dict
disk_gb:
  description: Disk of the instance (environment, weights, data, checkpoints on disk at once, final model), GB.
  returned: always
  type: dict
breakdown:
  description:
    - Every part of the numbers above - C(gpu_mem) (C(parts_gib), C(forward_backward_gib), C(optimizer_step_gib),
      C(peak_phase)), C(ram_gib), C(disk_gb).
  returned: always
  type: dict
model:
  description: The model's shape and parameter counts (C(params), C(trainable_params), C(lora_params)).
  returned: always
  type: dict
job:
  description: The training setup the estimate is for.
  returned: always
  type: dict
steps:
  description: Optimizer steps of the run, when O(train_tokens) or O(max_steps) is given.
  returned: always
  type: int
tokens:
  description: Tokens the run trains on.
  returned: always
  type: float
tokens_per_step:
  description: Tokens per optimizer step, all GPUs together.
  returned: always
  type: int
checkpoint_gb:
  description: One checkpoint's size, GB.
  returned: always
  type: float
saves:
  description: Checkpoints the run writes.
  returned: always
  type: int
floors:
  description: The least an offer must have (C(gpu_ram), C(cpu_ram), C(disk_space)) in the search language's units.
  returned: always
  type: dict
query_floor:
  description: The floors as search-language terms, to append to an offer query.
  returned: always
  type: str
  sample: gpu_ram >= 21.3 cpu_ram >= 12.5 disk_space >= 38.2
query:
  description: O(query) with the floors it lacks; null without O(query).
  returned: always
  type: str
  sample: reliability > 0.95 num_gpus=1 gpu_ram >= 21.3 cpu_ram >= 12.5 disk_space >= 38.2
offers:
  description:
    - The offers, fitting ones first, cheapest estimated total first. Each has C(id), C(machine_id), C(gpu_name),
      C(fits), C(reasons) (what does not fit and by how much), C(warnings), C(would_fit_with) (changes that
      would make it fit, when the GPU does not), C(hours), C(cost_usd), C(tokens_per_s), C(step_seconds),
      C(phases_s), C(transfer_usd), and with O(max_total_usd) C(within_budget) and C(budget_at_risk).
  returned: always
  type: list
  elements: dict
fitting:
  description: How many of the offers fit.
  returned: always
  type: int
caveats:
  description: What makes the estimate coarser than usual (each is also a warning).
  returned: always
  type: list
  elements: str
"""

from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ..module_utils.estimate_cost import estimate
from ..module_utils.estimate_job import JOB_SPEC, JobError, job_from_params
from ..module_utils.vast_query import QueryError

MUTUALLY_EXCLUSIVE = [("model_config", "params"), ("train_tokens", "max_steps")]
ARGUMENT_SPEC: dict[str, Any] = {
    **JOB_SPEC,
    "job": {"type": "dict"},
    "offers": {"type": "list", "elements": "dict", "default": []},
    "bid_price": {"type": "float"},
    "max_total_usd": {"type": "float"},
    "query": {"type": "str"},
}


def job_options(module: AnsibleModule) -> dict[str, Any]:
    """The job's options: the task's own, or O(job) with those the task also gives on their own (not left at
    their default) on top, held to the same spec."""
    params = module.params
    if params["job"] is None:
        return params
    unknown = sorted(str(name) for name in params["job"] if name not in JOB_SPEC)
    if unknown:
        module.fail_json(msg=f"Cannot estimate: job has no option(s) {', '.join(unknown)}; its options are "
                             f"{', '.join(JOB_SPEC)}.")
    given = {name: value for name, value in params.items()
             if name in JOB_SPEC and value is not None and value != JOB_SPEC[name].get("default")}
    checked = ArgumentSpecValidator(JOB_SPEC, mutually_exclusive=MUTUALLY_EXCLUSIVE).validate(
        {**params["job"], **given})
    if checked.error_messages:
        module.fail_json(msg=f"Cannot estimate: {'; '.join(checked.error_messages)}.")
    return {**params, **checked.validated_parameters}


def main() -> None:
    # Which of model_config and params is given is job_from_params's to check: either may come in O(job).
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True,
                           mutually_exclusive=MUTUALLY_EXCLUSIVE)
    try:
        job = job_from_params(job_options(module))
    except JobError as exc:
        module.fail_json(msg=f"Cannot estimate: {exc}.")
    if module.params["max_total_usd"] is not None and module.params["max_total_usd"] <= 0:
        module.fail_json(msg=f"Cannot estimate: max_total_usd must be above 0, got {module.params['max_total_usd']:g}.")
    try:
        result = estimate(job, module.params["offers"], module.params["bid_price"], module.params["max_total_usd"],
                          module.params["query"])
    except QueryError as exc:
        module.fail_json(msg=f"Cannot estimate: the query is malformed: {exc}")
    for caveat in result["caveats"]:
        module.warn(caveat)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
