"""The run contract's range check inside dict options: train.yml's run_recovery and run_checkpoint_store
suboptions held against the real spec (playbooks/train.meta.yml), named as run_recovery.max_preemptions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible_collections.mlops.vast.plugins.plugin_utils.contract import plain_errors, problems, validated

REPO = Path(__file__).resolve().parents[2]
REQUIRED = {"run_name": "tiny", "run_command": "python3 train.py"}


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    with open(REPO / "playbooks" / "train.meta.yml") as handle:
        return yaml.safe_load(handle)["argument_specs"]["main"]["options"]


def check(spec: dict[str, Any], **given: Any) -> list[str]:
    return problems({**REQUIRED, **given}, spec, where="train.yml")


def test_the_spec_has_the_ranges_these_tests_rely_on(spec: dict[str, Any]) -> None:
    recovery = spec["run_recovery"]["options"]
    assert recovery["max_preemptions"]["maximum"] == 5 and recovery["max_preemptions"]["minimum"] == 0
    assert recovery["reconnect_timeout_s"]["exclusive_minimum"] == 0
    assert recovery["wait_in_place_s"]["minimum"] == 0 and recovery["backoff_s"]["minimum"] == 0
    assert spec["run_checkpoint_store"]["options"]["keep"]["minimum"] == 2


def test_a_suboption_over_its_maximum_is_named_with_its_dict(spec: dict[str, Any]) -> None:
    assert check(spec, run_recovery={"max_preemptions": 9}) == ["run_recovery.max_preemptions must be at most 5, got 9"]


def test_a_suboption_under_its_minimum_is_named_with_its_dict(spec: dict[str, Any]) -> None:
    assert check(spec, run_checkpoint_store={"keep": 1}) == ["run_checkpoint_store.keep must be at least 2, got 1"]
    assert check(spec, run_checkpoint_store={"type": "s3", "bucket": "b", "keep": 0}) == [
        "run_checkpoint_store.keep must be at least 2, got 0"]


def test_an_exclusive_minimum_inside_a_dict(spec: dict[str, Any]) -> None:
    assert check(spec, run_recovery={"reconnect_timeout_s": 0}) == [
        "run_recovery.reconnect_timeout_s must be more than 0, got 0"]
    assert check(spec, run_recovery={"reconnect_timeout_s": 0.5}) == []


@pytest.mark.parametrize("given", [
    {"run_recovery": {"max_preemptions": 5}},
    {"run_recovery": {"max_preemptions": 0, "wait_in_place_s": 0, "backoff_s": 0, "reconnect_timeout_s": 0.001}},
    {"run_recovery": {"strategy": "replace"}},
    {"run_recovery": {}},
    {"run_checkpoint_store": {"keep": 2}},
    {"run_checkpoint_store": {"keep": 50, "type": "s3", "bucket": "ckpt"}},
    {},
])
def test_values_in_range_and_defaults_give_no_problem(spec: dict[str, Any], given: dict[str, Any]) -> None:
    assert check(spec, **given) == []


def test_every_bad_suboption_is_reported_once_with_the_converted_value(spec: dict[str, Any]) -> None:
    found = check(spec, run_recovery={"max_preemptions": "9", "wait_in_place_s": -1, "backoff_s": "-2.5",
                                      "reconnect_timeout_s": 0, "strategy": "wait"},
                  run_checkpoint_store={"keep": "1"})
    assert sorted(found) == sorted([
        "run_recovery.max_preemptions must be at most 5, got 9",
        "run_recovery.wait_in_place_s must be at least 0, got -1",
        "run_recovery.backoff_s must be at least 0, got -2.5",
        "run_recovery.reconnect_timeout_s must be more than 0, got 0",
        "run_checkpoint_store.keep must be at least 2, got 1",
    ])


def test_top_level_ranges_and_unknown_names_still_come_with_the_suboptions(spec: dict[str, Any]) -> None:
    found = check(spec, run_disk_gb=4, run_recovery={"max_preemptions": 6}, run_recovry={})
    assert found[0] == "run_recovry is not a variable of train.yml; did you mean run_recovery?"
    assert sorted(found[1:]) == ["run_disk_gb must be at least 8, got 4",
                                 "run_recovery.max_preemptions must be at most 5, got 6"]


def test_a_wrong_type_is_left_to_the_validator_without_a_crash(spec: dict[str, Any]) -> None:
    for given in ({"run_recovery": {"max_preemptions": "lots"}}, {"run_recovery": "oops"}, {"run_recovery": None},
                  {"run_checkpoint_store": "keep"}, {"run_recovery": {"unknown_sub": 99}}):
        values = {**REQUIRED, **given}
        assert problems(values, spec) == [], given
        assert validated(values, spec)[1], f"the validator reports {given}"


def test_the_caller_may_pass_what_it_converted_already(spec: dict[str, Any]) -> None:
    values = {**REQUIRED, "run_recovery": {"max_preemptions": "7"}}
    converted = validated(values, spec)[0]
    assert converted["run_recovery"]["max_preemptions"] == 7
    assert problems(values, spec, converted=converted) == problems(values, spec) == [
        "run_recovery.max_preemptions must be at most 5, got 7"]


def test_ranges_are_checked_at_any_depth() -> None:
    nested = {"outer": {"type": "dict", "default": {}, "options": {
        "inner": {"type": "dict", "default": {}, "options": {"n": {"type": "int", "default": 1, "minimum": 1}}},
        "m": {"type": "float", "default": 1, "maximum": 2}}}}
    assert problems({"outer": {"inner": {"n": 0}, "m": 3}}, nested) == [
        "outer.inner.n must be at least 1, got 0", "outer.m must be at most 2, got 3"]
    assert problems({"outer": {"inner": {}}}, nested) == []


def test_a_dict_given_as_text_is_range_checked_too(spec: dict[str, Any]) -> None:
    values = {**REQUIRED, "run_recovery": '{"max_preemptions": 9}'}
    assert validated(values, spec)[0]["run_recovery"]["max_preemptions"] == 9  # accepted and converted
    assert problems(values, spec) == ["run_recovery.max_preemptions must be at most 5, got 9"]


@pytest.mark.parametrize("name", ["../up", "", ".hidden", "a/b", "n" * 241, "lr $HOME", "$x"])
def test_a_run_name_that_would_leave_results_or_not_fit_a_label_is_refused(spec: dict[str, Any], name: str) -> None:
    said = check(spec, run_name=name)
    shown = repr(name) if len(name) <= 80 else repr("n" * 40 + "..." + "n" * 20)
    assert said == ["run_name must not be empty, contain '/' or '$' or start with '.', and may be at most 240 "
                    "characters (it "
                    f"names the folder results/<run_name> and the instance's label), got {shown}"]


def test_ordinary_run_names_pass(spec: dict[str, Any]) -> None:
    for name in ("tiny-demo", "exp_42", "lr-sweep-t1a2b3c", "v1.2", "n" * 240):
        assert check(spec, run_name=name) == []


def test_a_list_of_mappings_given_as_text_is_refused(spec: dict[str, Any]) -> None:
    # Ansible's conversion would make [{"name": "w"}] of "name=w" and go on.
    assert check(spec, run_sources="name=w") == [
        "run_sources must be a list of mappings ([{name: value}, ...]), got 'name=w'"]
    assert check(spec, run_sources=[{"name": "w", "url": "http://example.com/w"}]) == []


def test_keys_left_out_of_a_mapping_stay_out_and_defaults_stay_in(spec: dict[str, Any]) -> None:
    # The validator makes every suboption nobody gave null; provision's `gpu_count | default(the offer's)` would
    # then take the null, and the count the offer promised would go unchecked.
    converted, errors = validated({**REQUIRED, "run_gpu_requirements": {"min_disk_gb": 5}}, spec)
    assert errors == [] and converted["run_gpu_requirements"] == {"min_disk_gb": 5.0}
    assert validated(REQUIRED, spec)[0]["run_gpu_requirements"] == {}
    assert validated({**REQUIRED, "run_recovery": {"max_preemptions": 2}}, spec)[0]["run_recovery"][
        "wait_in_place_s"] == 120.0  # a default is kept
    sources = validated({**REQUIRED, "run_sources": [{"name": "w", "url": "http://example.com/w"}]}, spec)[0]
    assert sources["run_sources"] == [{"name": "w", "url": "http://example.com/w", "required": True}]


def test_what_is_wrong_inside_a_list_or_a_mapping_is_said_with_its_path(spec: dict[str, Any]) -> None:
    def said(**given: Any) -> list[str]:
        values = {**REQUIRED, **given}
        converted, errors = validated(values, spec)
        return plain_errors(errors, values, spec) + problems(values, spec, where="train.yml", converted=converted)

    assert said(run_sources=[{"name": "x"}]) == ["run_sources needs url (required key)"]
    assert said(run_sources=[{"url": "ftp://x/y"}]) == [
        "run_sources[0].url must be an http:// or https:// URL with a host, got 'ftp://x/y'"]
    assert said(run_gpu_requirements={"min_disk_gb": "lots"}) == [
        "run_gpu_requirements.min_disk_gb must be a number, got 'lots'"]
    assert said(run_gpu_requirements={"min_dsk_gb": 5}) == [
        "run_gpu_requirements.min_dsk_gb is not a key of run_gpu_requirements; did you mean min_disk_gb?"]


@pytest.mark.parametrize(("name", "value"), [("run_max_runtime_s", float("inf")), ("run_max_dph", float("nan")),
                                             ("run_max_total_usd", float("-inf")), ("run_max_attempts", "inf")])
def test_a_number_that_is_not_finite_is_refused_by_name(spec: dict[str, Any], name: str, value: Any) -> None:
    # NaN passed every range check (the limit silently off); int() of infinity raised OverflowError.
    _converted, errors = validated({**REQUIRED, name: value}, spec)
    assert errors == [f"{name} must be a finite number, got {value!r}"]
