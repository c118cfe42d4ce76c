"""`mlops-vast estimate` against the run's budget: over-budget offers are marked, a line says whether any offer fits
within run_max_total_usd, the exit code is 1 when none does (train would refuse the run), and a negative --offers
is refused. The estimates are the estimator's own; only the playbook that would fetch offers is stood in for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.mlops.vast.plugins.module_utils.estimate_cost import estimate
from ansible_collections.mlops.vast.plugins.module_utils.estimate_job import job_from_params

from mlops_vast import cli

JOB = {"params": 1e9, "max_steps": 400}


def offer(offer_id: int, gpu: str, dph: float) -> dict[str, Any]:
    return {"id": offer_id, "machine_id": offer_id * 10, "gpu_name": gpu, "num_gpus": 1, "gpu_ram": 24576,
            "cpu_ram": 64000, "disk_space": 500, "dph_total": dph, "inet_down": 800, "inet_up": 800}


OFFERS = [offer(1, "RTX 4090", 0.35), offer(2, "RTX 3090", 0.2)]


def estimated(budget: float | None, job: dict[str, Any] | None = None) -> dict[str, Any]:
    """What ESTIMATE_PLAY keeps: the job alone, then the job priced on the offers (disk as the run rents it)."""
    params = {**(job or JOB), "disk_gb": 60.0}
    return {"job": estimate(job_from_params(params), (), None, budget),
            "priced": estimate(job_from_params(params), OFFERS, None, budget)}


@pytest.fixture
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # one table row a line, as a wide terminal shows it


def test_offers_over_the_budget_are_marked_and_the_verdict_says_train_would_refuse(
        wide: None, capsys: pytest.CaptureFixture[str]) -> None:
    result = estimated(0.0001)
    assert result["priced"]["fitting"] == 2  # they fit the job: only the budget rules them out
    cli._print_estimate(result, 0.0001)
    out = capsys.readouterr().out
    assert "offers (2 of 2 fit; 0 within the budget $0.0001)" in out, out
    rows = [line for line in out.splitlines() if "RTX" in line]
    assert len(rows) == 2 and all("over the budget $0.0001 (at least $" in row and " over " in row for row in rows)
    assert "budget run_max_total_usd $0.0001: no offer fits within it" in out
    assert "train would refuse the run" in out
    fits, line = cli.estimate_verdict(result, 0.0001)
    assert not fits and "the cheapest fitting one (offer 2)" in line, line


def test_within_the_budget_the_offers_say_so_and_the_verdict_passes(wide: None,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    result = estimated(5.0)
    cli._print_estimate(result, 5.0)
    out = capsys.readouterr().out
    assert "2 within the budget $5" in out and "over the budget" not in out, out
    assert "budget run_max_total_usd $5: 2 of 2 fitting offer(s) within it" in out
    assert cli.estimate_verdict(result, 5.0)[0] is True


def test_without_a_budget_no_budget_column_and_no_refusal(wide: None, capsys: pytest.CaptureFixture[str]) -> None:
    result = estimated(None)
    cli._print_estimate(result)
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "why not" in line)
    assert "budget" not in header and "over the budget" not in out
    assert cli.estimate_verdict(result, 0.0) == (True, "2 offer(s) fit the job; the run has no budget "
                                                       "(run_max_total_usd)")


def test_a_budget_without_the_run_s_length_or_without_any_fitting_offer_is_refused() -> None:
    fits, line = cli.estimate_verdict(estimated(1.0, {"params": 1e9}), 1.0)
    assert not fits and "neither max_steps nor train_tokens" in line
    nothing = estimated(None)
    for row in nothing["priced"]["offers"]:
        row["fits"] = False
    assert cli.estimate_verdict(nothing, 0.0) == (False, "no offer fits the job: train would refuse the run")
    # --offers 0: nothing priced, nothing to refuse.
    assert cli.estimate_verdict({"job": estimated(1.0)["job"], "priced": None}, 1.0)[0] is True


def run_file(tmp_path: Path, budget: float) -> Path:
    path = tmp_path / "run.yml"
    path.write_text(f"run_name: est\nrun_max_total_usd: {budget}\nrun_estimate: {json.dumps(JOB)}\n")
    return path


@pytest.mark.parametrize(("budget", "code"), [(0.0001, 1), (5.0, 0)])
@pytest.mark.parametrize("json_mode", [False, True])
def test_the_exit_code_is_1_when_no_offer_fits_within_the_budget(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], wide: None,
        budget: float, code: int, json_mode: bool) -> None:
    def playbook(argv: list[str], **_kwargs: Any) -> Any:
        # ESTIMATE_PLAY's result, as its last task writes it.
        out = json.loads(argv[-1])["estimate_out"]
        Path(out).write_text(json.dumps(estimated(budget)))
        return type("Done", (), {"returncode": 0, "stdout": "", "stderr": ""})()

    monkeypatch.setattr(cli.subprocess, "run", playbook)
    monkeypatch.setenv("VAST_API_KEY", "k")
    argv = ["estimate", str(run_file(tmp_path, budget)), "--offers", "2", "--api-url", "http://x"]
    assert cli.main(argv + (["--json"] if json_mode else [])) == code
    out = capsys.readouterr().out
    if json_mode:
        assert json.loads(out)["priced"]["offers"][0]["within_budget"] is (code == 0)
    else:
        assert ("no offer fits within it" in out) is (code == 1), out


def test_a_negative_offer_count_is_refused_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        cli.main(["estimate", str(run_file(tmp_path, 1.0)), "--offers", "-1"])
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert "argument --offers: must be 0 (no offers priced) or more, got -1" in err, err
    assert [line for line in err.splitlines() if "error" in line] == [err.splitlines()[-1]]


def test_the_help_gives_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["estimate", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "exit codes: 0 an offer fits the job" in help_text
    assert "1 train would refuse the run: no priced offer fits the job within the budget" in help_text
