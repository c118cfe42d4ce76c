"""The pre-rental estimate: published measurements, parameter counts, fit verdicts with what would fit,
ranking by total cost, budgets, floors and bad input."""

from __future__ import annotations

import pytest
from ansible_collections.mlops.vast.plugins.module_utils.estimate_cost import estimate, query_with_floors
from ansible_collections.mlops.vast.plugins.module_utils.estimate_job import JobError, job_from_params

from tests.estimate_cases import case_job, compared_span, load_cases

MISTRAL_7B = {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
              "intermediate_size": 14336, "vocab_size": 32000, "tie_word_embeddings": False}
LLAMA_31_8B = {**MISTRAL_7B, "vocab_size": 128256}
CASES = [case for case in load_cases() if case.get("in_scope", True)]


def offer(offer_id: int, gpu: str, vram_mib: int, dph: float, **more: object) -> dict[str, object]:
    return {"id": offer_id, "machine_id": offer_id * 10, "gpu_name": gpu, "num_gpus": 1, "gpu_ram": vram_mib,
            "cpu_ram": 64000, "disk_space": 500, "dph_total": dph, "inet_down": 800, "inet_up": 800, **more}


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_published_measurement_lies_inside_the_range(case: dict) -> None:
    span = compared_span(estimate(case_job(case)), case["meter"])
    assert span["opt"] <= case["measured_gib"] <= span["pess"], (case["source"], span, case["measured_gib"])
    if case["meter"] == "allocated":
        # The meter the estimate models: its base must be within the product's ±15%.
        assert abs(span["base"] / case["measured_gib"] - 1) <= 0.15, (case["source"], span)


def test_most_published_cases_are_within_15_percent() -> None:
    errors = {case["id"]: compared_span(estimate(case_job(case)), case["meter"])["base"] / case["measured_gib"] - 1
              for case in CASES}
    within = [name for name, error in errors.items() if abs(error) <= 0.15]
    assert len(within) >= 0.9 * len(errors), {name: f"{error:+.1%}" for name, error in errors.items()}


def test_parameter_counts_match_the_published_models() -> None:
    assert job_from_params({"model_config": MISTRAL_7B}).params == 7_241_732_096
    assert job_from_params({"model_config": LLAMA_31_8B}).params == 8_030_261_248
    lora = job_from_params({"model_config": MISTRAL_7B, "method": "lora", "lora_r": 16,
                            "lora_targets": ["q_proj", "k_proj", "v_proj", "o_proj"]})
    assert lora.lora_params == 13_631_488  # PEFT prints 13.6 M trainable for this setup


def test_full_amp_7b_does_not_fit_24gb_and_says_what_would() -> None:
    job = job_from_params({"model_config": MISTRAL_7B, "method": "full", "precision": "amp", "seq_len": 2048,
                           "max_steps": 100, "disk_gb": 600})
    result = estimate(job, [offer(1, "RTX 4090", 24564, 0.4)])
    row = result["offers"][0]
    assert not row["fits"] and result["fitting"] == 0
    assert any(reason.startswith("GPU memory: needs") and "RTX 4090 has 24.0 GiB" for reason in row["reasons"])
    assert result["gpu_mem_gib"]["opt"] > 20 * job.params / 2**30 * 0.9, "AMP full fine-tune is ~20 bytes a parameter"
    # What would fit is real: the estimate of the job with that change fits the same card.
    assert row["would_fit_with"]
    changed = job_from_params({"model_config": MISTRAL_7B, "method": "qlora", "precision": "amp",
                               "gradient_checkpointing": True, "seq_len": 2048, "max_steps": 100, "disk_gb": 600})
    assert estimate(changed, [offer(1, "RTX 4090", 24564, 0.4)])["offers"][0]["fits"]


def test_offers_rank_by_estimated_total_cost_not_by_price_per_hour() -> None:
    job = job_from_params({"model_config": MISTRAL_7B, "method": "qlora", "gradient_checkpointing": True,
                           "seq_len": 2048, "micro_batch_size": 2, "train_tokens": 2e8, "disk_gb": 100})
    cheap_slow = offer(1, "RTX 3090", 24576, 0.20)
    dear_fast = offer(2, "RTX 4090", 24564, 0.30)
    result = estimate(job, [cheap_slow, dear_fast])
    assert [row["id"] for row in result["offers"]] == [2, 1]
    assert result["offers"][0]["cost_usd"]["base"] < result["offers"][1]["cost_usd"]["base"]
    for row in result["offers"]:
        assert row["cost_usd"]["opt"] <= row["cost_usd"]["base"] <= row["cost_usd"]["pess"]
        assert row["hours"]["opt"] <= row["hours"]["base"] <= row["hours"]["pess"]


def test_cost_includes_storage_bandwidth_and_every_phase() -> None:
    job = job_from_params({"model_config": MISTRAL_7B, "method": "lora", "seq_len": 1024, "max_steps": 500,
                           "checkpoint_every_steps": 100, "weights_gb": 14.5, "dataset_gb": 2, "disk_gb": 100})
    free = estimate(job, [offer(1, "A100 SXM4", 81920, 1.0)])["offers"][0]
    billed = estimate(job, [offer(1, "A100 SXM4", 81920, 1.0, inet_down_cost=0.01, inet_up_cost=0.02)])["offers"][0]
    assert billed["transfer_usd"] == pytest.approx(16.5 * 0.01 + 5 * job.lora_params * 12 / 1e9 * 0.02, rel=0.01)
    assert billed["cost_usd"]["base"] == pytest.approx(free["cost_usd"]["base"] + billed["transfer_usd"], abs=1e-3)
    assert free["cost_usd"]["base"] == pytest.approx(free["hours"]["base"] * 1.0, abs=1e-3)
    assert set(free["phases_s"]) >= {"boot", "downloads", "setup", "smoke_test", "training", "final_pull", "teardown"}


def test_budget_marks_offers_within_and_at_risk() -> None:
    job = job_from_params({"model_config": MISTRAL_7B, "method": "lora", "seq_len": 1024, "train_tokens": 5e8,
                           "disk_gb": 100})
    result = estimate(job, [offer(1, "A100 SXM4", 81920, 1.5)], max_total_usd=0.5)
    row = result["offers"][0]
    assert row["cost_usd"]["opt"] > 0.5 and row["within_budget"] is False and row["budget_at_risk"] is True
    roomy = estimate(job, [offer(1, "A100 SXM4", 81920, 1.5)], max_total_usd=1000)["offers"][0]
    assert roomy["within_budget"] is True and roomy["budget_at_risk"] is False


def test_floors_join_a_query_without_weakening_it() -> None:
    floors = {"gpu_ram": 21.3, "cpu_ram": 12.0, "disk_space": 40.0}
    assert query_with_floors("gpu_ram >= 40 num_gpus=1", floors) == \
        "gpu_ram >= 40 num_gpus=1 cpu_ram >= 12 disk_space >= 40"
    assert query_with_floors("gpu_ram >= 16", floors).endswith("gpu_ram >= 21.3 cpu_ram >= 12 disk_space >= 40")


def test_ram_and_disk_verdicts_name_the_resource() -> None:
    job = job_from_params({"model_config": MISTRAL_7B, "method": "full", "seq_len": 512, "max_steps": 10,
                           "checkpoints_kept": 3, "disk_gb": 50})
    row = estimate(job, [offer(1, "H200", 143771, 3.0, cpu_ram=8000)])["offers"][0]
    assert any(reason.startswith("RAM: needs") for reason in row["reasons"])
    assert any(reason.startswith("disk: needs") and "the rental has 50.0 GB" in reason for reason in row["reasons"])


@pytest.mark.parametrize(("options", "message"), [
    ({"model_config": MISTRAL_7B, "seq_len": -3}, "seq_len must be at least 1"),
    ({"model_config": MISTRAL_7B, "disk_gb": 0}, "disk_gb must be above 0"),
    ({}, "give model_config"),
    ({"model_config": {"hidden_size": 4096}}, "model_config lacks"),
    ({"model_config": MISTRAL_7B, "method": "lora", "lora_targets": ["qproj"]}, "'qproj' is not a linear layer"),
    ({"model_config": "/no/such/config.json"}, "no file"),
    ({"params": 7e9, "cpu_offload": True}, "set zero_stage"),
    ({"params": 12}, "params must be the model's total parameter count"),
])
def test_bad_job_is_a_clear_error(options: dict, message: str) -> None:
    with pytest.raises(JobError, match=message.replace("(", r"\(")):
        job_from_params(options)


def test_coarse_estimate_from_a_parameter_count_says_so() -> None:
    coarse = estimate(job_from_params({"params": 7.2e9, "method": "full", "seq_len": 1024}))
    exact = estimate(job_from_params({"model_config": MISTRAL_7B, "method": "full", "seq_len": 1024}))
    assert coarse["caveats"] and not exact["caveats"]
    assert abs(coarse["gpu_mem_gib"]["base"] / exact["gpu_mem_gib"]["base"] - 1) < 0.25
