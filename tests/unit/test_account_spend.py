"""The account's word on a run's spend: vastsim's charges endpoint (paging, window) and the sum by instance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ansible_collections.mlops.vast.plugins.module_utils import account_spend as spend

from mlops_vast.sim import charges as sim_charges
from mlops_vast.sim.errors import VastError


def row(instance_id: int, label: str, gpu: float, storage: float, created: float = 1000.0,
        destroyed: float | None = 2000.0) -> dict:
    return {"id": instance_id, "label": label, "created_at": created, "destroyed_at": destroyed,
            "running_seconds": 60.0, "gpu_cost": gpu, "storage_cost": storage}


class FakeClient:
    """Answers GET /api/v0/charges/ the way vastsim's route does, from ledger rows."""

    def __init__(self, rows: list[dict]) -> None:
        self.rows, self.calls = rows, 0

    def request(self, method: str, path: str, *, params: dict) -> dict:
        assert (method, path) == ("GET", "/api/v0/charges/")
        self.calls += 1
        return sim_charges.charges(self.rows, params["select_filters"], 2, "false", params.get("after_token"))


def test_the_run_spend_sums_its_instances_charges_by_kind_following_the_pages() -> None:
    rows = [row(1, "run-a", 0.5, 0.01), row(2, "other", 9.0, 1.0), row(3, "run-a", 0.25, 0.02),
            row(4, "run-a", 1.0, 0.1, created=5000.0, destroyed=6000.0)]
    client = FakeClient(rows)
    charges = spend.charges(client, 0, 3000)
    assert client.calls == 2 and sorted(c["source"] for c in charges) == ["1", "2", "3"]  # 4 is outside the window
    result = spend.run_spend(charges, {1}, "run-a")  # 3 counts by the label its charge names
    assert [i["id"] for i in result["instances"]] == [1, 3]
    assert result["gpu_usd"] == 0.75 and result["storage_usd"] == 0.03 and result["bandwidth_usd"] == 0
    assert result["total_usd"] == pytest.approx(0.78)


def test_amounts_as_text_and_charges_without_a_breakdown_are_read() -> None:
    charges = [{"type": "instance", "source": "7", "amount": "$1,234.50"},
               {"type": "volume", "source": "7", "amount": 99}]
    result = spend.run_spend(charges, {7}, "x")
    assert result["total_usd"] == 1234.5 and result["gpu_usd"] == 1234.5 and len(result["instances"]) == 1


def test_the_charges_route_rejects_bad_filters_and_tokens() -> None:
    with pytest.raises(VastError, match="select_filters must be an object"):
        sim_charges.charges([], [], 10, "false", None)
    with pytest.raises(VastError, match="day bounds must be numbers"):
        sim_charges.charges([], {"day": {"gte": "yesterday"}}, 10, "false", None)
    with pytest.raises(VastError, match="Invalid pagination token"):
        sim_charges.charges([], {}, 10, "false", "not-a-token")


def test_the_charge_window_starts_a_day_before_the_runs_first_contract() -> None:
    assert spend.charge_window(None, 123.0, 10**6) == 123.0 - spend.CLOCK_SLACK_S  # the run's start, less the slack
    assert spend.charge_window(100000.0, 0, 10**6) == 100000.0 - spend.DAY_S
    assert spend.charge_window(None, 0, 10**7) == 10**7 - 30 * spend.DAY_S


def test_an_earlier_run_with_the_same_label_is_not_this_runs_spend(tmp_path: Path) -> None:
    """Run 1 ($5, long over) and run 2 ($1, started at 10_000) both used the label: the proof of run 2 is $1."""
    ledger = tmp_path / "contracts.jsonl"
    api = "http://127.0.0.1:5077"
    ledger.write_text("".join(json.dumps(r) + "\n" for r in [
        {"event": "created", "id": 1, "label": "exp", "api_url": api, "ts": 1000.0},
        {"event": "destroyed", "id": 1, "label": "exp", "api_url": api, "ts": 2000.0},
        {"event": "created", "id": 2, "label": "exp", "api_url": api, "ts": 10_050.0}]))
    rows = [row(1, "exp", 4.0, 1.0, created=1000.0, destroyed=2000.0),
            row(2, "exp", 0.9, 0.1, created=10_040.0, destroyed=11_000.0)]
    everything = spend.charges(FakeClient(rows), 0, 12_000)

    ids, first = spend.ledger_history(str(ledger), "exp", api)  # no since: every run of the label, as before
    assert ids == {1, 2} and first == 1000.0
    assert spend.run_spend(everything, ids, "exp")["total_usd"] == pytest.approx(6.0)

    ids, first = spend.ledger_history(str(ledger), "exp", api, since=10_000.0)
    assert ids == {2} and first == 10_050.0
    window = spend.charge_window(first, 10_000.0, 12_000)
    assert window == 10_000.0 - spend.CLOCK_SLACK_S
    read = spend.charges(FakeClient(rows), window, 12_000)
    assert [c["source"] for c in read] == ["2"]  # run 1's charge ended before the window
    # an API whose day filter is coarser returns run 1's charge too: it names the label, but ended before the run
    result = spend.run_spend(everything, ids, "exp", since=10_000.0)
    assert result["total_usd"] == pytest.approx(1.0) and [i["id"] for i in result["instances"]] == [2]


def test_a_charge_named_by_label_alone_counts_while_it_ran_into_the_run() -> None:
    live = {"type": "instance", "source": "9", "amount": 2.0, "metadata": {"label": "exp", "destroyed_at": None}}
    ended_as_text = {"type": "instance", "source": "8", "amount": 3.0, "end": "1970-01-01 00:10:00",
                     "metadata": {"label": "exp"}}
    ended_late = {"type": "instance", "source": "7", "amount": 0.5, "end": 9_900.0, "metadata": {"label": "exp"}}
    result = spend.run_spend([live, ended_as_text, ended_late], set(), "exp", since=10_000.0)
    # 9 still lives; 7 ended within the clocks' slack of the start; 8 ended at 600 s, long before
    assert sorted(i["id"] for i in result["instances"]) == [7, 9] and result["total_usd"] == pytest.approx(2.5)


def test_too_many_pages_of_charges_says_to_give_the_runs_start() -> None:
    class Endless:
        def request(self, method: str, path: str, *, params: dict) -> dict:
            return {"results": [], "next_token": "more"}

    with pytest.raises(ValueError, match="give since"):
        spend.charges(Endless(), 5.0, 10.0)


def test_an_earlier_run_that_ended_just_before_this_one_is_not_its_spend() -> None:
    """A trial run again a minute after its first run: the first run's instance ended within the clocks' slack of
    the start, and its charge names the label; the ledger knows it was an earlier run's."""
    first = {"type": "instance", "source": "7", "amount": 0.5, "end": 9_950.0, "metadata": {"label": "exp"}}
    this = {"type": "instance", "source": "8", "amount": 0.25, "metadata": {"label": "exp", "destroyed_at": None}}
    assert spend.run_spend([first, this], {8}, "exp", since=10_000.0)["total_usd"] == pytest.approx(0.75)
    result = spend.run_spend([first, this], {8}, "exp", since=10_000.0, earlier={7})
    assert result["total_usd"] == pytest.approx(0.25) and [i["id"] for i in result["instances"]] == [8]


def test_only_what_the_ledger_saw_destroyed_before_the_run_is_an_earlier_runs(tmp_path: Path) -> None:
    api = "http://127.0.0.1:5077"
    ledger = tmp_path / "contracts.jsonl"
    ledger.write_text("".join(json.dumps(r) + "\n" for r in [
        {"event": "created", "id": 7, "label": "exp", "api_url": api, "ts": 9_000.0},
        {"event": "destroyed", "id": 7, "label": "exp", "api_url": api, "ts": 9_950.0},  # the run before
        {"event": "created", "id": 8, "label": "exp", "api_url": api, "ts": 9_960.0},  # still open: adopted
        {"event": "destroyed", "id": 8, "label": "exp", "api_url": api, "ts": 10_500.0},
        {"event": "created", "id": 9, "label": "other", "api_url": api, "ts": 9_000.0},
        {"event": "destroyed", "id": 9, "label": "other", "api_url": api, "ts": 9_100.0}]))
    assert spend.destroyed_before(str(ledger), "exp", api, since=10_000.0) == {7}
