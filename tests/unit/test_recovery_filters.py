"""The recovery filters: rental_policy (on-demand or interruptible, and why) and newer_checkpoints (which
checkpoints are beyond the newest sealed one), called as Jinja calls them, through their FilterModule."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.mlops.vast.plugins.filter import newer_checkpoints as newer_module
from ansible_collections.mlops.vast.plugins.filter import rental_policy as policy_module

rental_policy = policy_module.FilterModule().filters()["rental_policy"]
newer_checkpoints = newer_module.FilterModule().filters()["newer_checkpoints"]


# ---------------------------------------------------------------------------------------------- rental_policy

@pytest.mark.parametrize("hours", [0.25, 1.99, 2.0, 72.0])
def test_auto_with_checkpoints_is_interruptible_whatever_the_length(hours: float) -> None:
    decided = rental_policy("auto", hours=hours, checkpoints=True)
    assert decided["interruptible"] is True
    assert decided["why"].startswith("auto: the run checkpoints and resumes")
    assert "50-70% less" in decided["why"]
    assert f"expected {hours:.2g} h" in decided["why"]


@pytest.mark.parametrize(("hours", "interruptible"), [(0.1, True), (1.99, True), (2.0, False), (2.01, False),
                                                      (48.0, False)])
def test_auto_without_checkpoints_goes_interruptible_only_when_short(hours: float, interruptible: bool) -> None:
    decided = rental_policy("auto", hours=hours, checkpoints=False)
    assert decided["interruptible"] is interruptible
    if interruptible:
        assert decided["why"] == f"auto: a short run ({hours:.2g} h < 2 h) without checkpoints restarts cheaply"
    else:
        assert decided["why"].startswith(f"auto: a long run ({hours:.2g} h) without checkpoints would lose everything")
        assert "set run_resume_arg" in decided["why"]  # says what would change the decision


def test_auto_takes_hours_as_jinja_may_hand_them_over() -> None:
    assert rental_policy("auto", hours="0.5", checkpoints=False)["interruptible"] is True
    assert rental_policy("auto", hours="3", checkpoints=False)["interruptible"] is False
    assert rental_policy(" AUTO ", hours=3, checkpoints=True)["interruptible"] is True


@pytest.mark.parametrize("setting", [True, "true", "True", "yes", "YES", "1", 1, " true "])
@pytest.mark.parametrize("checkpoints", [True, False])
def test_an_explicit_true_wins_over_the_matrix(setting: object, checkpoints: bool) -> None:
    decided = rental_policy(setting, hours=100, checkpoints=checkpoints)
    assert decided == {"interruptible": True, "why": "asked for (run_interruptible: true)"}


@pytest.mark.parametrize("setting", [False, "false", "False", "no", "No", "0", 0])
@pytest.mark.parametrize("checkpoints", [True, False])
def test_an_explicit_false_wins_over_the_matrix(setting: object, checkpoints: bool) -> None:
    decided = rental_policy(setting, hours=0.1, checkpoints=checkpoints)
    assert decided == {"interruptible": False, "why": "asked for (run_interruptible: false)"}


@pytest.mark.parametrize("setting", ["auto", "true"])
def test_a_fixed_bid_means_interruptible(setting: str) -> None:
    decided = rental_policy(setting, hours=100, checkpoints=False, bid_price=0.35)
    assert decided == {"interruptible": True, "why": "a fixed bid of $0.35/h was given (run_bid_price)"}
    assert rental_policy(setting, hours=100, checkpoints=False, bid_price="0.5")["interruptible"] is True


@pytest.mark.parametrize("setting", [False, "false", "no"])
def test_a_fixed_bid_with_an_explicit_false_is_refused_naming_both(setting: object) -> None:
    with pytest.raises(AnsibleFilterError, match=r"run_interruptible is false but run_bid_price is 0\.35"):
        rental_policy(setting, hours=1, checkpoints=True, bid_price=0.35)


@pytest.mark.parametrize("setting", ["maybe", "", "interruptible"])
def test_a_typo_is_refused_even_with_a_bid(setting: str) -> None:
    with pytest.raises(AnsibleFilterError, match="run_interruptible must be auto, true or false"):
        rental_policy(setting, hours=1, checkpoints=True, bid_price=0.35)


@pytest.mark.parametrize("no_bid", [0, 0.0, None, "0"])
def test_no_bid_leaves_the_decision_to_the_setting(no_bid: object) -> None:
    assert rental_policy("auto", hours=100, checkpoints=False, bid_price=no_bid)["interruptible"] is False
    assert rental_policy("false", hours=0.1, checkpoints=True, bid_price=no_bid)["interruptible"] is False


@pytest.mark.parametrize("setting", ["maybe", "", "on-demand", "2", None, "autox"])
def test_anything_else_is_an_error_naming_the_variable(setting: object) -> None:
    with pytest.raises(AnsibleFilterError, match=r"run_interruptible must be auto, true or false, got ") as caught:
        rental_policy(setting, hours=1, checkpoints=True)
    assert repr(setting) in str(caught.value)


# ---------------------------------------------------------------------------------------------- newer_checkpoints

NAMES = ["checkpoint-50", "checkpoint-150", "checkpoint-100", "checkpoint-1000"]


def test_only_the_checkpoints_beyond_the_reference_in_input_order() -> None:
    assert newer_checkpoints(NAMES, "checkpoint-100") == ["checkpoint-150", "checkpoint-1000"]
    assert newer_checkpoints(NAMES, "checkpoint-1000") == []
    assert newer_checkpoints(NAMES, "checkpoint-0") == NAMES
    assert newer_checkpoints([], "checkpoint-100") == []


def test_the_step_is_read_from_the_last_path_component() -> None:
    paths = ["/workspace/run3/out/checkpoint-50", "/workspace/run3/out/checkpoint-150/",
             "run9/global_step200", "/data/v2/checkpoint-75"]
    # run3, run9 and v2 carry numbers too: only the checkpoint's own name counts.
    assert newer_checkpoints(paths, "/workspace/run3/out/checkpoint-100/") == [
        "/workspace/run3/out/checkpoint-150/", "run9/global_step200"]
    assert newer_checkpoints(paths, "run200/checkpoint-60") == [
        "/workspace/run3/out/checkpoint-150/", "run9/global_step200", "/data/v2/checkpoint-75"]


def test_names_without_a_step_are_left_out() -> None:
    names = ["checkpoint-final", "runs/latest", "checkpoint-120", "/out/v3/best", ".mlops-sealed"]
    assert newer_checkpoints(names, "checkpoint-100") == ["checkpoint-120"]
    assert newer_checkpoints(names, "") == ["checkpoint-120"]


def test_an_empty_reference_keeps_every_name_with_a_step() -> None:
    assert newer_checkpoints(NAMES, "") == NAMES
    assert newer_checkpoints(["checkpoint-0", "x"], "") == ["checkpoint-0"]  # step 0 is a step
