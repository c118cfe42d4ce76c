"""A sweep's trials: grid, random and explicit lists expanded in a stable order, each trial's command and run
variables, and a wrong description rejected with a message that names the variable."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from ansible_collections.mlops.vast.plugins.action.sweep import ActionModule as SweepAction
from ansible_collections.mlops.vast.plugins.filter import trial_placeholders as placeholders_module
from ansible_collections.mlops.vast.plugins.plugin_utils.sweep_plan import (
    SweepSpecError,
    check_sweep_name,
    expand,
    method_collisions,
    render_command,
    render_value,
    training_digests,
    trial_expressions,
    trial_ids,
    trial_references,
    trial_run_vars,
)
from ansible_collections.mlops.vast.plugins.plugin_utils.sweep_scheduler import Trial

from tests.conftest import REPO

TRAIN_SPEC = str(REPO / "playbooks" / "train.meta.yml")

trial_placeholders = placeholders_module.FilterModule().filters()["trial_placeholders"]


def test_grid_is_every_combination_in_the_given_order() -> None:
    sets = expand({"lr": [0.1, 0.01], "seed": [1, 2, 3]}, None, None)
    assert len(sets) == 6
    assert sets[0] == {"lr": 0.1, "seed": 1} and sets[-1] == {"lr": 0.01, "seed": 3}
    assert len({tuple(sorted(s.items())) for s in sets}) == 6


def test_explicit_trials_come_first_then_grid_then_random() -> None:
    sets = expand({"lr": [0.5]}, {"count": 2, "seed": 1, "params": {"lr": {"min": 0.001, "max": 0.1}}},
                  [{"lr": 9, "crash_at_step": 10}])
    assert sets[0] == {"lr": 9, "crash_at_step": 10}
    assert sets[1] == {"lr": 0.5}
    assert len(sets) == 4 and all(0.001 <= s["lr"] <= 0.1 for s in sets[2:])


def test_random_is_reproducible_from_its_seed_and_respects_bounds_and_scale() -> None:
    spec = {"count": 50, "seed": 7, "params": {"lr": {"min": 1e-5, "max": 1e-1, "log": True},
                                               "layers": {"min": 1, "max": 4, "int": True},
                                               "opt": {"choices": ["adam", "sgd"]}}}
    first, again = expand(None, spec, None), expand(None, spec, None)
    assert first == again
    assert first != expand(None, {**spec, "seed": 8}, None)
    lrs = [s["lr"] for s in first]
    assert all(1e-5 <= lr <= 1e-1 for lr in lrs)
    # A log scale puts about half the samples below the geometric middle (1e-3); a linear one almost none.
    assert 10 <= sum(lr < 1e-3 for lr in lrs) <= 40
    assert {s["layers"] for s in first} <= {1, 2, 3, 4} and all(isinstance(s["layers"], int) for s in first)
    assert {s["opt"] for s in first} == {"adam", "sgd"}
    # The order the params are written in does not matter, and a parameter added keeps the others' values.
    reordered = {**spec, "params": dict(reversed(list(spec["params"].items())))}
    assert [dict(sorted(t.items())) for t in expand(None, reordered, None)] == [dict(sorted(t.items())) for t in first]
    more = expand(None, {**spec, "params": {**spec["params"], "dropout": {"min": 0.0, "max": 0.5}}}, None)
    assert [{k: v for k, v in t.items() if k != "dropout"} for t in more] == first
    assert trial_ids(expand(None, reordered, None)) == trial_ids(first), "the same trials are the same ids"


@pytest.mark.parametrize(("grid", "random", "trials", "needle"), [
    (None, None, None, "no trials"),
    ({"lr": []}, None, None, "sweep_grid.lr must be a non-empty list"),
    ({"lr": "0.1"}, None, None, "sweep_grid.lr must be a non-empty list"),
    ({"bad name": [1]}, None, None, "must be a word"),
    (["lr"], None, None, "sweep_grid must map"),
    (None, {"count": 0, "params": {"lr": {"min": 1, "max": 2}}}, None, "sweep_random.count"),
    (None, {"count": 2, "params": {"lr": {"min": 2, "max": 1}}}, None, "min (2) is above max (1)"),
    (None, {"count": 2, "params": {"lr": {"min": 0, "max": 1, "log": True}}}, None, "log scale needs min > 0"),
    (None, {"count": 2, "params": {"lr": {"min": 0, "max": 1, "step": 2}}}, None, "unknown key(s) ['step']"),
    (None, {"count": 2, "params": {"lr": {"min": "a", "max": 1}}}, None, "lr.min must be a number"),
    (None, {"count": 2, "params": {"opt": {"choices": []}}}, None, "choices must be a non-empty list"),
    (None, {"count": 2}, None, "sweep_random.params must map"),
    (None, {"count": 2, "seed": "x", "params": {"a": [1]}}, None, "sweep_random.seed"),
    (None, {"cnt": 2, "params": {"a": [1]}}, None, "unknown key(s) ['cnt']"),
    (None, None, [1, 2], "sweep_trials[0] must be a mapping"),
    (None, None, "lr=1", "sweep_trials must be a list"),
    ({"lr": list(range(40))}, None, [{"a": i} for i in range(40)] * 30, "more than 1000"),
])
def test_wrong_descriptions_name_the_variable(grid, random, trials, needle: str) -> None:
    with pytest.raises(SweepSpecError, match=None) as raised:
        expand(grid, random, trials)
    assert needle in str(raised.value)


def test_unnamed_parameters_are_appended_as_options_booleans_as_flags() -> None:
    command = render_command("python3 train.py --max_steps 10", {"lr": 0.05, "fp16": True, "ema": False,
                                                                 "tag": "a b"})
    assert shlex.split(command) == ["python3", "train.py", "--max_steps", "10", "--lr", "0.05", "--fp16",
                                    "--tag", "a b"]


def test_named_parameters_are_filled_in_and_not_repeated() -> None:
    marks = trial_placeholders({"lr": [0.1], "seed": [1]})
    command = f"python3 train.py --learning_rate {marks['lr']} --out /w/{marks['seed']}"
    assert render_command(command, {"lr": 1e-05, "seed": 3}) == "python3 train.py --learning_rate 1e-05 --out /w/3"
    with pytest.raises(SweepSpecError, match=r"names trial parameter\(s\) \['seed'\]"):
        render_command(command, {"lr": 0.1})


def test_a_null_parameter_is_left_out_and_lists_are_json() -> None:
    command = render_command("python3 train.py", {"lr": None, "layers": [64, 32], "names": ["a", "b"],
                                                   "opt": {"beta": 0.9}})
    assert command == ("python3 train.py --layers '[64, 32]' --names '[\"a\", \"b\"]' "
                       "--opt '{\"beta\": 0.9}'")
    with pytest.raises(SweepSpecError, match="sets to null"):
        render_command(f"python3 train.py --lr {trial_placeholders({'lr': [None]})['lr']}", {"lr": None})


def test_placeholders_cover_every_source_and_other_variables_are_filled_too() -> None:
    marks = trial_placeholders({"a": [1]}, {"count": 1, "params": {"b": {"min": 0, "max": 1}}}, [{"c": 1}])
    assert set(marks) == {"a", "b", "c"}
    # A placeholder alone is the parameter's own value (a number stays a number); inside a text it is its text.
    assert render_value({"env": {"SEED": marks["c"]}, "list": [marks["a"], 3], "out": f"/w/{marks['a']}"},
                        {"a": 1, "c": 42}) == {"env": {"SEED": 42}, "list": [1, 3], "out": "/w/1"}
    # A trial without a parameter a variable names is refused, naming where: not an empty value put in its place.
    with pytest.raises(SweepSpecError, match=r"run_env\.SEED names trial parameter\(s\) \['c'\]"):
        render_value({"SEED": marks["c"]}, {"a": 1}, "run_env")


def test_trial_run_vars_make_the_base_run_the_trials_own() -> None:
    base = {"name": "sw", "command": "python3 t.py", "disk_gb": 20.0, "max_total_usd": 0.0, "env": {}}
    out = trial_run_vars(base, {"lr": 0.1}, label="sw-t003", results_dir="/r/sw/t003", max_total_usd=0.02)
    assert out["run_name"] == "sw-t003" and out["run_results_dir"] == "/r/sw/t003"
    assert out["run_command"] == "python3 t.py --lr 0.1"
    assert out["run_disk_gb"] == 20.0 and out["run_max_total_usd"] == 0.02
    assert all(name.startswith("run_") for name in out)


def test_trial_ids_follow_the_parameters_not_the_position() -> None:
    grid = expand({"lr": [0.1, 0.01], "seed": [1, 2]}, None, None)
    with_extra = expand({"lr": [0.1, 0.01], "seed": [1, 2]}, None, [{"lr": 0.5}])
    assert trial_ids(grid) == trial_ids(with_extra)[1:]
    assert len(set(trial_ids(grid))) == 4 and all(len(tid) == 7 and tid[0] == "t" for tid in trial_ids(grid))
    assert trial_ids([{"a": 1}, {"a": 1}])[1] == trial_ids([{"a": 1}])[0] + "-2"


@pytest.mark.parametrize("name", ["../qa-esc", "a/b", ".hidden", "", "  ", None, "K" * 201, "é" * 121, "lr $HOME"])
def test_a_sweep_name_that_leaves_results_or_names_nothing_is_refused(name) -> None:
    with pytest.raises(SweepSpecError, match="sweep_name"):
        check_sweep_name(name)


def test_a_plain_sweep_name_is_accepted() -> None:
    assert check_sweep_name("lr-sweep.v2") == "lr-sweep.v2"
    # The longest name still makes labels Vast takes and a folder name the file system takes.
    longest = "K" * 200
    assert check_sweep_name(longest) == longest and len(f"{longest}-{trial_ids([{'a': 1}] * 2)[1]}") <= 256
    with pytest.raises(SweepSpecError, match="sweep_name is 201 characters long: at most 200"):
        check_sweep_name(longest + "K")


def test_a_random_int_param_stays_within_its_range_or_is_refused() -> None:
    with pytest.raises(SweepSpecError, match=r"sweep_random.params.w: int is set, but no whole number lies between"):
        expand(None, {"count": 3, "params": {"w": {"min": 0.5, "max": 0.7, "int": True}}}, None)
    sets = expand(None, {"count": 200, "seed": 3, "params": {"w": {"min": 0.5, "max": 2.2, "int": True},
                                                              "v": {"min": 1.5, "max": 300, "int": True, "log": True}}},
                  None)
    assert {s["w"] for s in sets} == {1, 2}
    assert all(2 <= s["v"] <= 300 and type(s["v"]) is int for s in sets)


def test_a_parameter_named_like_a_mapping_method_is_refused_naming_it() -> None:
    # What Ansible 2.19 renders for {{ trial.items }} and {{ trial.keys }} when trial is a mapping.
    rendered = {"run_command": "python3 t.py --i <bound method _AnsibleLazyTemplateDict.items of "
                               "{'items': '@@mlops-trial:items@@', 'seed': '@@mlops-trial:seed@@'}>",
                "run_env": {"K": "<built-in method keys of _AnsibleLazyTemplateDict object at 0x7f>"},
                "run_disk_gb": 20}
    found = method_collisions(rendered)
    assert len(found) == 2
    assert found[0].startswith("run_command: {{ trial.items }} gave the method items") and \
        "write {{ trial['items'] }}" in found[0]
    assert found[1].startswith("run_env.K: {{ trial.keys }}")
    assert method_collisions({"run_command": "python3 t.py --items @@mlops-trial:items@@"}) == []


def test_each_trial_is_checked_against_the_run_contract_with_its_own_values() -> None:
    marks = trial_placeholders({"disk": [20, 30]})
    run_vars = {"run_command": "python3 t.py", "run_disk_gb": marks["disk"], "run_image": "img:1"}
    bases = SweepAction._checked_bases("sw", run_vars, [{"disk": 20}, {"disk": 30}], TRAIN_SPEC)
    # A number (run_disk_gb is a float in the contract), converted as train.yml would, every default filled in.
    assert [b["disk_gb"] for b in bases] == [20, 30] and all(isinstance(b["disk_gb"], float) for b in bases)
    assert bases[0]["name"] == "sw-" + trial_ids([{"disk": 20}])[0] and "max_runtime_s" in bases[0]
    with pytest.raises(SweepSpecError) as raised:
        SweepAction._checked_bases("sw", run_vars, [{"disk": 20}, {"disk": -5}], TRAIN_SPEC)
    message = str(raised.value)
    assert f"trial {trial_ids([{'disk': -5}])[0]} (disk=-5): run_disk_gb must be at least" in message
    assert "disk=20" not in message
    # A problem every trial has is said once, without a trial.
    with pytest.raises(SweepSpecError, match=r"^run_dsik_gb is not a variable of train.meta.yml; did you mean"):
        SweepAction._checked_bases("sw", {**run_vars, "run_dsik_gb": 3}, [{"disk": 20}, {"disk": 30}], TRAIN_SPEC)
    with pytest.raises(SweepSpecError, match="run_max_total_usd cannot name a trial parameter"):
        SweepAction._checked_bases("sw", {**run_vars, "run_max_total_usd": marks["disk"]}, [{"disk": 20}], TRAIN_SPEC)
    # No command: the parameters alone (" --disk 20") must not pass for one.
    for command in (None, "  "):
        without = {k: v for k, v in run_vars.items() if k != "run_command"}
        if command is not None:
            without["run_command"] = command
        with pytest.raises(SweepSpecError, match=r"^run_command is missing"):
            SweepAction._checked_bases("sw", without, [{"disk": 20}], TRAIN_SPEC)
    # A cap no trial could start with is said before anything runs, not as a row per trial.
    with pytest.raises(SweepSpecError, match=r"run_max_total_usd \$0.0001 is below \$0.0005"):
        SweepAction._checked_bases("sw", {**run_vars, "run_max_total_usd": 0.0001}, [{"disk": 20}], TRAIN_SPEC)
    assert SweepAction._checked_bases("sw", {**run_vars, "run_max_total_usd": 0.0005}, [{"disk": 20}], TRAIN_SPEC)


def test_a_trials_variables_are_filled_in_with_its_values_and_types() -> None:
    marks = trial_placeholders({"disk": [20]}, None, [{"seed": 7, "lr": 0.1}])
    run_vars = {"run_command": f"python3 t.py --seed {marks['seed']}", "run_disk_gb": marks["disk"]}
    params = [{"seed": 7, "disk": 20, "lr": 0.1}]
    trial_vars = {"provision_probe_max_seconds": marks["disk"], "extra": {"tag": f"s{marks['seed']}"}}
    _bases, [trial] = SweepAction._plan("sw", run_vars, params, trial_vars, "/r/sw", TRAIN_SPEC)
    assert trial.run_vars["run_disk_gb"] == 20 and trial.run_vars["provision_probe_max_seconds"] == 20
    assert trial.run_vars["extra"] == {"tag": "s7"}
    # disk is placed by run_disk_gb, seed by the command itself: only lr is appended.
    assert trial.run_vars["run_command"] == "python3 t.py --seed 7 --lr 0.1"
    assert "@@mlops-trial" not in repr(trial.run_vars)


def test_a_base_given_whole_is_planned_as_it_is() -> None:
    marks = trial_placeholders({"disk": [20]})
    _bases, [trial] = SweepAction._plan("sw", {"run_command": "python3 t.py", "run_disk_gb": marks["disk"]},
                                        [{"disk": 20}], {}, "/r/sw", None)
    assert trial.run_vars["run_disk_gb"] == 20 and trial.run_vars["run_command"] == "python3 t.py"
    with pytest.raises(SweepSpecError, match=r"write \{\{ trial\['keys'\] \}\}"):
        SweepAction._plan("sw", {"run_command": "t.py <built-in method keys of dict object at 0x1>"}, [{"keys": 1}],
                          {}, "/r/sw", None)


def test_a_rerun_reuses_a_completed_trial_only_while_it_trains_the_same(tmp_path: Path) -> None:
    def trial(trial_id: str, **run_vars: object) -> Trial:
        folder = tmp_path / trial_id
        folder.mkdir(exist_ok=True)
        return Trial(id=trial_id, label=f"sw-{trial_id}", params={"lr": 0.1}, results_dir=str(folder),
                     run_vars={"run_command": "python3 train.py --lr 0.1", "run_image": "img:1",
                               "run_env": {"TOKEN": "s3cret"}, "run_poll_interval_s": 30, **run_vars})

    row = {"outcome": "completed", "cost_usd": 0.01}
    before = [trial("t1"), trial("t2"), trial("t3"), trial("t4")]
    for earlier in before:
        (Path(earlier.results_dir) / "trial.json").write_text(json.dumps(
            {"id": earlier.id, "params": earlier.params, "trains": training_digests(earlier.run_vars), "row": row}))
    assert "s3cret" not in (tmp_path / "t1" / "trial.json").read_text()  # run_env may hold tokens
    # Results from before trial.json kept what a trial trains: reused, as they were.
    (tmp_path / "t4" / "trial.json").write_text(json.dumps({"id": "t4", "params": {"lr": 0.1}, "row": row}))

    now = [trial("t1", run_poll_interval_s=5),  # how it is watched: still the same training
           trial("t2", run_command="python3 train.py --lr 0.1 --max_steps 400"),
           trial("t3", run_env={"TOKEN": "other"}, run_image="img:2"),
           trial("t4", run_command="anything")]
    reused, retrained = SweepAction._reuse_completed(now)
    assert reused == 2 and [t.state for t in now] == ["done", "queued", "queued", "done"]
    # The same parameters and training under another sweep's label: that sweep's result, not this one's.
    (tmp_path / "t1" / "trial.json").write_text(json.dumps(
        {"id": "t1", "label": "other-t1", "params": {"lr": 0.1}, "trains": training_digests(now[0].run_vars),
         "row": row}))
    again = trial("t1", run_poll_interval_s=5)
    assert SweepAction._reuse_completed([again]) == (0, {}) and again.state == "queued"
    (tmp_path / "t1" / "trial.json").write_text(json.dumps(
        {"id": "t1", "label": "sw-t1", "params": {"lr": 0.1}, "trains": training_digests(now[0].run_vars),
         "row": row}))
    assert SweepAction._reuse_completed([again]) == (1, {}) and again.state == "done"
    assert retrained == {"t2": ["run_command"], "t3": ["run_image", "run_env"]}


def test_a_placeholder_in_single_quotes_is_one_shell_argument_whatever_the_value() -> None:
    placed = trial_placeholders({"optim": ["adam w"], "note": ["it's"], "plain": ["x"]})
    command = f"python3 train.py --optim '{placed['optim']}' --note '{placed['note']}' --plain '{placed['plain']}'"
    rendered = render_command(command, {"optim": "adam w", "note": "it's", "plain": "x"})
    assert shlex.split(rendered) == ["python3", "train.py", "--optim", "adam w", "--note", "it's", "--plain", "x"]


def test_a_template_that_computes_or_decides_on_a_trial_parameter_is_named() -> None:
    written = {"run_command": "python3 t.py --lr {{ trial.lr * 2 }} --o '{{ trial.opt }}' {{trial['a-b'] | quote}}",
               "run_env": {"SEED": "{{ trial.seed }}", "UP": "{{ trial.name | upper }}"},
               "run_smoke_args": "{% if trial.fast %}--max_steps 5{% endif %}",
               "run_image": "{{ my_image }}", "run_disk_gb": "{{ trial.disk | string }}"}
    found = trial_expressions(written)
    assert [line.split(":", 1)[0] for line in found] == ["run_command", "run_env.UP", "run_smoke_args"], found
    assert "{{ trial.lr * 2 }} computes with a trial parameter" in found[0]
    assert "{% if trial.fast %} decides on a trial parameter" in found[2]


def test_a_trial_name_that_is_no_parameter_or_a_mapping_method_is_named_before_templating() -> None:
    written = {"run_command": "python3 t.py --seed {{ trial.seed }} --tag '{{ trial[\"warm-up\"] }}' {{ 'trial.x' }}",
               "run_env": {"X": "{{ trial.sed }}", "K": "{{ trial.keys }}", "OK": "{{ trial['items'] }}"},
               "run_smoke_args": "--n {{ trial['nope'] | quote }}", "run_image": "img:{{ trial.seed }}"}
    found = trial_references(written, {"seed", "warm-up", "items", "keys"})
    assert found == [
        "run_env.X: {{ trial.sed }} names no parameter of the sweep (its parameters: items, keys, seed, warm-up); "
        "did you mean 'seed'?",
        "run_env.K: {{ trial.keys }} would give the method keys of the trial mapping, not the parameter 'keys' (a "
        "parameter named like a mapping's method); write {{ trial['keys'] }}",
        "run_smoke_args: {{ trial['nope'] | quote }} names no parameter of the sweep (its parameters: items, keys, "
        "seed, warm-up)"]
    # Text that Ansible will not template (marked !unsafe) names nothing.
    assert trial_references(written, {"seed"}, templated=lambda text: text.startswith("img:")) == []


def test_a_placeholder_changed_by_a_filter_elsewhere_is_refused() -> None:
    # run_command: "{{ my_cmd }}" with my_cmd using {{ trial.x | upper }}: only the result shows it.
    with pytest.raises(SweepSpecError, match="a trial parameter that a filter or an expression changed"):
        render_command("python3 t.py --x @@MLOPS-TRIAL:X@@", {"x": "a"})
    with pytest.raises(SweepSpecError, match=r"run_env\.A has a trial parameter"):
        render_value({"A": "@@mlops-trial:x@@@@MLOPS-TRIAL:X@@"}, {"x": "a"}, "run_env")


def test_random_bounds_written_as_yaml_reads_1e_4_are_numbers() -> None:
    # YAML 1.1 reads 1e-4 (no dot) as text; the README's own example writes it so.
    trials = expand({}, {"count": 4, "seed": 7, "params": {"lr": {"min": "1e-4", "max": "1e-1", "log": True}}}, [])
    assert len(trials) == 4 and all(1e-4 <= trial["lr"] <= 1e-1 for trial in trials)
    with pytest.raises(SweepSpecError, match=r"sweep_random.params.lr.min must be a number; got 'small'"):
        expand({}, {"count": 1, "params": {"lr": {"min": "small", "max": 1}}}, [])


def test_whitespace_control_and_a_string_literal_are_not_computations() -> None:
    written = {"run_command": "python3 t.py --lr={{- trial.lr }} --tag {{ prefix ~ '-trial' }}",
               "run_env": {"X": "{{ trial['opt'] -}}"}}
    assert trial_expressions(written) == []
