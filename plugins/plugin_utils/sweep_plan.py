# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A sweep's trials: expanding grid, random samples and explicit lists into parameter sets, and giving each
trial its own run variables (its name, results folder and command).

``run_command`` may name a trial's parameters as ``{{ trial.lr }}``. The sweep playbook templates the base run
with ``trial`` bound to placeholders (:func:`placeholders`), so the text reaches the scheduler intact whatever
Ansible's templating does, and each trial substitutes its own values here. Parameters the command does not
name are appended as ``--name value`` (``True`` as a bare flag, ``False`` left out).
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import itertools
import json
import math
import random
import re
import shlex
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any

PLACEHOLDER = "@@mlops-trial:{name}@@"
_PLACEHOLDER_RE = re.compile(r"@@mlops-trial:([A-Za-z_][A-Za-z0-9_.-]*)@@")
_QUOTED_PLACEHOLDER_RE = re.compile(r"'@@mlops-trial:([A-Za-z_][A-Za-z0-9_.-]*)@@'")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
MAX_TRIALS = 1000
RANDOM_PARAM_KEYS = {"min", "max", "log", "int", "choices"}


class SweepSpecError(ValueError):
    """The sweep's trials are described wrongly; the message names the variable and how to fix it."""


# A trial's label, <sweep_name>-<id> (t and 6 hex digits, -2 for a repeat), must fit Vast's 256 characters, and the
# name makes a folder (255 bytes).
MAX_SWEEP_NAME = 200
MAX_SWEEP_NAME_BYTES = 240


def check_sweep_name(name: Any) -> str:
    """The sweep's name makes the results folder (results/<name>) and every trial's label (<name>-<id>).
    playbooks/sweep.meta.yml's pattern says the same before sweep.yml reaches the module; this is the module's own
    guard, for a play that calls mlops.vast.sweep without sweep.yml's checks."""
    if not isinstance(name, str) or not name.strip():
        raise SweepSpecError(f"sweep_name must be a non-empty name (it names results/<sweep_name> and each trial's "
                             f"label); got {name!r}")
    if "/" in name or "$" in name or name.startswith("."):
        # '$': the modules that take the trials' paths expand $VAR in them (type path); other parts would not.
        raise SweepSpecError(f"sweep_name {name!r} must not contain '/' or '$' or start with '.' (it names "
                             "results/<sweep_name> and each trial's label)")
    if len(name) > MAX_SWEEP_NAME or len(name.encode("utf-8", "surrogateescape")) > MAX_SWEEP_NAME_BYTES:
        raise SweepSpecError(f"sweep_name is {len(name)} characters long: at most {MAX_SWEEP_NAME} (and "
                             f"{MAX_SWEEP_NAME_BYTES} bytes), since each trial's instance label is <sweep_name>-<id> "
                             "(Vast takes 256 characters) and the name is a folder's (255 bytes)")
    return name


def _check_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise SweepSpecError(f"{where}: parameter name {name!r} must be a word (letters, digits, _ . -), "
                             "as it becomes the command's --name")
    return name


def param_names(grid: Mapping[str, Any] | None, random_spec: Mapping[str, Any] | None,
                trials: Sequence[Any] | None) -> list[str]:
    """Every parameter name the sweep sets, in first-seen order (for the placeholders)."""
    names: list[str] = []
    for trial in trials or []:
        if isinstance(trial, Mapping):
            names.extend(str(name) for name in trial)
    names.extend(str(name) for name in (grid or {}))
    params = (random_spec or {}).get("params") if isinstance(random_spec, Mapping) else None
    if isinstance(params, Mapping):
        names.extend(str(name) for name in params)
    return list(dict.fromkeys(names))


def placeholders(names: Sequence[str]) -> dict[str, str]:
    return {name: PLACEHOLDER.format(name=name) for name in names}


def _grid(grid: Mapping[str, Any]) -> list[dict[str, Any]]:
    axes: list[tuple[str, list[Any]]] = []
    for name, values in grid.items():
        _check_name(name, "sweep_grid")
        if isinstance(values, str | bytes) or not isinstance(values, Sequence) or not values:
            raise SweepSpecError(f"sweep_grid.{name} must be a non-empty list of values, e.g. {name}: [0.1, 0.01]; "
                                 f"got {values!r}")
        axes.append((name, list(values)))
    if not axes:
        return []
    names = [axis[0] for axis in axes]
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*(axis[1] for axis in axes))]


def _number(spec: Mapping[str, Any], key: str, name: str) -> float:
    value = spec.get(key)
    if isinstance(value, str):
        # YAML 1.1 (PyYAML, Ansible) reads 1e-4 as text: it needs a dot (1.0e-4) to be a number there.
        with contextlib.suppress(ValueError):
            value = float(value.strip())
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SweepSpecError(f"sweep_random.params.{name}.{key} must be a number; got {value!r}")
    return float(value)


def _sampler(name: str, spec: Any) -> Any:
    _check_name(name, "sweep_random.params")
    if isinstance(spec, Sequence) and not isinstance(spec, str | bytes):
        spec = {"choices": list(spec)}  # a bare list is a list of choices
    if not isinstance(spec, Mapping):
        raise SweepSpecError(f"sweep_random.params.{name} must be {{min, max, log}} or {{choices: [...]}}; "
                             f"got {spec!r}")
    unknown = set(spec) - RANDOM_PARAM_KEYS
    if unknown:
        raise SweepSpecError(f"sweep_random.params.{name}: unknown key(s) {sorted(unknown)}; "
                             f"use {sorted(RANDOM_PARAM_KEYS)}")
    if "choices" in spec:
        choices = spec["choices"]
        if isinstance(choices, str | bytes) or not isinstance(choices, Sequence) or not choices:
            raise SweepSpecError(f"sweep_random.params.{name}.choices must be a non-empty list; got {choices!r}")
        if set(spec) - {"choices"}:
            raise SweepSpecError(f"sweep_random.params.{name}: choices cannot be combined with min/max/log/int")
        return lambda rng: rng.choice(list(choices))
    low, high = _number(spec, "min", name), _number(spec, "max", name)
    if low > high:
        raise SweepSpecError(f"sweep_random.params.{name}: min ({low:g}) is above max ({high:g})")
    log, as_int = bool(spec.get("log", False)), bool(spec.get("int", False))
    if log and low <= 0:
        raise SweepSpecError(f"sweep_random.params.{name}: a log scale needs min > 0 (got {low:g})")
    if as_int and math.ceil(low) > math.floor(high):
        raise SweepSpecError(f"sweep_random.params.{name}: int is set, but no whole number lies between min "
                             f"({low:g}) and max ({high:g})")

    def sample(rng: random.Random) -> float | int:
        value = math.exp(rng.uniform(math.log(low), math.log(high))) if log else rng.uniform(low, high)
        if as_int:
            # Rounded, then held to the whole numbers within [min, max] (round(0.6) is 1 for [0.5, 1.4], never 0).
            return int(min(max(round(value), math.ceil(low)), math.floor(high)))
        # Six significant digits: what a person would type, and the same text on every machine.
        return float(f"{value:.6g}")

    return sample


def _random(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    if not spec:
        return []
    unknown = set(spec) - {"count", "seed", "params"}
    if unknown:
        raise SweepSpecError(f"sweep_random: unknown key(s) {sorted(unknown)}; use count, seed and params")
    count, seed = spec.get("count"), spec.get("seed", 0)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise SweepSpecError(f"sweep_random.count must be a whole number of trials >= 1; got {count!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise SweepSpecError(f"sweep_random.seed must be a whole number (the same seed gives the same trials); "
                             f"got {seed!r}")
    params = spec.get("params")
    if not isinstance(params, Mapping) or not params:
        raise SweepSpecError("sweep_random.params must map each parameter to {min, max, log} or {choices: [...]}")
    # A stream of its own for each parameter, from the seed and its name: the trials do not change when the params
    # are written in another order, and adding a parameter leaves the others' values as they were.
    streams = [(name, _sampler(name, param), random.Random(f"{seed}:{name}")) for name, param in params.items()]
    return [{name: sample(rng) for name, sample, rng in streams} for _trial in range(count)]


def _explicit(trials: Sequence[Any]) -> list[dict[str, Any]]:
    out = []
    for index, trial in enumerate(trials):
        if not isinstance(trial, Mapping):
            raise SweepSpecError(f"sweep_trials[{index}] must be a mapping of parameter names to values; got {trial!r}")
        for name in trial:
            _check_name(name, f"sweep_trials[{index}]")
        out.append(dict(trial))
    return out


def expand(grid: Mapping[str, Any] | None, random_spec: Mapping[str, Any] | None,
           trials: Sequence[Any] | None) -> list[dict[str, Any]]:
    """The parameter sets, in a stable order: explicit trials, then the grid, then the random samples.

    The same spec (and seed) always gives the same list, which is what lets a re-run find its finished trials.
    """
    if grid is not None and not isinstance(grid, Mapping):
        raise SweepSpecError(f"sweep_grid must map parameter names to lists of values; got {grid!r}")
    if random_spec is not None and not isinstance(random_spec, Mapping):
        raise SweepSpecError(f"sweep_random must be {{count, seed, params}}; got {random_spec!r}")
    if trials is not None and (isinstance(trials, str | bytes) or not isinstance(trials, Sequence)):
        raise SweepSpecError(f"sweep_trials must be a list of parameter mappings; got {trials!r}")
    sets = _explicit(trials or []) + _grid(grid or {}) + _random(random_spec or {})
    if not sets:
        raise SweepSpecError("The sweep has no trials: give sweep_grid, sweep_random or sweep_trials")
    if len(sets) > MAX_TRIALS:
        raise SweepSpecError(f"The sweep has {len(sets)} trials, more than {MAX_TRIALS}; split it")
    return sets


def trial_ids(param_sets: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each trial's id, from its parameters: the same trial keeps its id (its label, its folder) when trials are
    added to or removed from the sweep, which is what lets a re-run find the ones that completed."""
    ids: list[str] = []
    seen: dict[str, int] = {}
    for params in param_sets:
        canonical = json.dumps(params, sort_keys=True, default=str, separators=(",", ":"))
        base = "t" + hashlib.sha1(canonical.encode(), usedforsecurity=False).hexdigest()[:6]
        seen[base] = seen.get(base, 0) + 1
        ids.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return ids


def format_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, dict)):  # JSON, as a trainer's argument parser would read it (not Python's repr)
        return json.dumps(value)
    return str(value)


def render_command(command: str, params: Mapping[str, Any], placed: Collection[str] = ()) -> str:
    """The trial's command: placeholders replaced, unnamed parameters appended as command-line options.

    ``placed``: parameters another variable names (``run_disk_gb: "{{ trial.disk }}"``); they are placed there, not
    appended to the command."""
    named = set(_PLACEHOLDER_RE.findall(command))
    missing = named - set(params)
    if missing:
        raise SweepSpecError(f"run_command names trial parameter(s) {sorted(missing)} that this trial does not set")
    empty = sorted(name for name in named if params[name] is None)
    if empty:
        raise SweepSpecError(f"run_command places trial parameter(s) {empty}, which this trial sets to null: give a "
                             "value, or leave the placeholder out (a null parameter appended is left out)")
    # {{ trial.name | quote }} arrives as the placeholder in single quotes: the value is quoted for the shell as a
    # whole (a value holding a quote or a space stays one argument), not pasted between the quotes.
    text = _QUOTED_PLACEHOLDER_RE.sub(lambda match: shlex.quote(format_value(params[match.group(1)])), command)
    text = _PLACEHOLDER_RE.sub(lambda match: format_value(params[match.group(1)]), text)
    _no_altered_placeholder(text, "run_command")
    extra = []
    for name, value in params.items():
        if name in named or name in placed or value is None:  # null: the trainer's own default applies
            continue
        if isinstance(value, bool):
            if value:
                extra.append(f"--{name}")
            continue
        extra.extend([f"--{name}", shlex.quote(format_value(value))])
    return " ".join([text, *extra]) if extra else text


_ALTERED_RE = re.compile(r"@@mlops-trial:", re.I)


def _no_altered_placeholder(text: str, where: str) -> None:
    """What is left of a placeholder once the exact ones are filled in: a filter or an expression changed one (in a
    variable that another one includes, where :func:`trial_expressions` does not look)."""
    if _ALTERED_RE.search(text):
        raise SweepSpecError(f"{where} has a trial parameter that a filter or an expression changed ({text[:200]!r}): "
                             "only {{ trial.NAME }} (or {{ trial.NAME | quote }}) can be placed")


def named_params(value: Any) -> set[str]:
    """The trial parameters a run variable (or anything inside it) names."""
    if isinstance(value, str):
        return set(_PLACEHOLDER_RE.findall(value))
    if isinstance(value, Mapping):
        return set().union(*(named_params(item) for item in value.values()))
    if isinstance(value, list):
        return set().union(*(named_params(item) for item in value))
    return set()


def has_placeholder(value: Any) -> bool:
    """Whether a run variable (or anything inside it) names a trial parameter."""
    return bool(named_params(value))


def render_value(value: Any, params: Mapping[str, Any], where: str = "a run variable") -> Any:
    """Placeholders replaced in every string of a run variable (run_env, run_smoke_args, ...).

    A string that is exactly one placeholder becomes the parameter's own value, so ``run_disk_gb: "{{ trial.disk }}"``
    gives the trial the number 20, not the text "20" (a boolean stays the text "true"/"false" it always was: an
    environment variable's value, and what a bool option reads as one)."""
    if isinstance(value, str):
        missing = sorted({name for name in _PLACEHOLDER_RE.findall(value) if name not in params})
        if missing:  # an empty value in its place would go unnoticed (SEED="" in run_env)
            raise SweepSpecError(f"{where} names trial parameter(s) {missing} that this trial does not set")
        whole = _PLACEHOLDER_RE.fullmatch(value)
        if whole and not isinstance(params[whole.group(1)], bool):
            return params[whole.group(1)]
        text = _PLACEHOLDER_RE.sub(lambda match: format_value(params[match.group(1)]), value)
        _no_altered_placeholder(text, where)
        return text
    if isinstance(value, Mapping):
        return {key: render_value(item, params, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, list):
        return [render_value(item, params, f"{where}[{index}]") for index, item in enumerate(value)]
    return value


_JINJA_RE = re.compile(r"\{\{(.*?)\}\}|\{%(.*?)%\}", re.S)
_TRIAL_RE = re.compile(r"\btrial\b")
_LITERAL_RE = re.compile(r"'[^']*'|\"[^\"]*\"")
# What can be placed: the parameter itself, as it is (quote leaves a placeholder as it is).
_PLACEABLE_RE = re.compile(r"""trial\s*(?:\.\s*[A-Za-z_]\w*|\[\s*(['"])[A-Za-z_][A-Za-z0-9_.-]*\1\s*\])"""
                           r"(?:\s*\|\s*(?:ansible\.builtin\.)?(?:quote|string))*")


def _strings(values: Mapping[str, Any], prefix: str = "",
             templated: Callable[[str], bool] | None = None) -> Iterator[tuple[str, str]]:
    """Every string in the variables (inside their mappings and lists too), with where it is (run_env.SEED); with
    ``templated``, only those it says Ansible will template (not text marked !unsafe)."""
    def walk(where: str, value: Any) -> Iterator[tuple[str, str]]:
        if isinstance(value, str):
            if templated is None or templated(value):
                yield where, value
        elif isinstance(value, Mapping):
            for key, item in value.items():
                yield from walk(f"{where}.{key}", item)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                yield from walk(f"{where}[{index}]", item)

    for name, value in values.items():
        yield from walk(f"{prefix}{name}", value)


def trial_expressions(values: Mapping[str, Any], prefix: str = "",
                      templated: Callable[[str], bool] | None = None) -> list[str]:
    """One sentence per template (in the variables as written, before Ansible templates them) that does more with a
    trial parameter than place it: ``{{ trial.lr * 2 }}``, ``{{ trial.x | upper }}``, ``{% if trial.flag %}``. The
    placeholder bound to ``trial`` goes through them as text (a condition on it is always true), so each trial
    would run with something else than its value."""
    found: list[str] = []
    for where, text in _strings(values, prefix, templated):
        for match in _JINJA_RE.finditer(text):
            # Whitespace control ({{- x -}}) is no computation, and a string literal ('-trial') names nothing.
            expression, statement = (None if part is None else part.strip().strip("-+").strip()
                                     for part in (match.group(1), match.group(2)))
            if statement is not None and _names_trial(statement):
                found.append(f"{where}: {match.group(0)} decides on a trial parameter, which is filled in only "
                             "after Ansible's templating (the condition would hold for every trial)")
            elif expression is not None and _names_trial(expression) and not _PLACEABLE_RE.fullmatch(expression):
                found.append(f"{where}: {match.group(0)} computes with a trial parameter, which is filled in only "
                             "after Ansible's templating (each trial would get something else than its value)")
    return found


def _names_trial(jinja: str) -> bool:
    return bool(_TRIAL_RE.search(_LITERAL_RE.sub("''", jinja)))


_REFERENCE_RE = re.compile(r"""\btrial\s*(?:\.\s*([A-Za-z_]\w*)|\[\s*(['"])([A-Za-z_][A-Za-z0-9_.-]*)\2\s*\])""")
_MAPPING_METHODS = frozenset(name for name in dir(dict) if not name.startswith("_"))


def trial_references(values: Mapping[str, Any], names: Collection[str], prefix: str = "",
                     templated: Callable[[str], bool] | None = None) -> list[str]:
    """One sentence per {{ trial.NAME }} (in the variables as written, before Ansible templates them) that names no
    parameter of the sweep, or names one like a mapping's method with a dot (Jinja would find the method)."""
    found: dict[str, None] = {}
    for where, text in _strings(values, prefix, templated):
        for match in _JINJA_RE.finditer(text):
            jinja = match.group(1) or match.group(2) or ""
            # 'trial.x' in a string literal names nothing.
            literals = [literal.span() for literal in _LITERAL_RE.finditer(jinja)]
            for ref in _REFERENCE_RE.finditer(jinja):
                if any(start <= ref.start() < end for start, end in literals):
                    continue
                dotted, name = ref.group(1) is not None, ref.group(1) or ref.group(3)
                if dotted and name in _MAPPING_METHODS:
                    found[f"{where}: {{{{ trial.{name} }}}} would give the method {name} of the trial mapping, not "
                          f"the parameter {name!r} (a parameter named like a mapping's method); write "
                          f"{{{{ trial['{name}'] }}}}"] = None
                elif name not in names:
                    close = difflib.get_close_matches(name, list(names), n=1)
                    hint = f"; did you mean {close[0]!r}?" if close else ""
                    found[f"{where}: {match.group(0).strip()} names no parameter of the sweep (its parameters: "
                          f"{', '.join(sorted(names)) or 'none'}){hint}"] = None
    return list(found)


# What Jinja gives for {{ trial.items }}: its attribute lookup finds the mapping's method before the key.
_METHOD_RE = re.compile(r"<(?:bound method|built-in method) (?:[\w.]*\.)?(\w+) of ")


def method_collisions(values: Mapping[str, Any], prefix: str = "") -> list[str]:
    """One sentence per variable where ``{{ trial.<name> }}`` was rendered as a method of the trial mapping (a
    parameter named ``items``, ``keys``, ``values``, ``get``, ...) instead of the parameter's value."""
    return [f"{where}: {{{{ trial.{name} }}}} gave the method {name} of the trial mapping, not the parameter "
            f"{name!r} (a parameter named like a mapping's method); write {{{{ trial['{name}'] }}}}"
            for where, text in _strings(values, prefix) for name in dict.fromkeys(_METHOD_RE.findall(text))]


def trial_run_vars(base: Mapping[str, Any], params: Mapping[str, Any], *, label: str, results_dir: str,
                   max_total_usd: float | None = None, placed: Collection[str] = ()) -> dict[str, Any]:
    """The extra variables of one trial's train.yml: the base run (names without ``run_``) made its own.

    Parameters that another of its variables names, or that ``placed`` lists, are not appended to the command."""
    placed = {*placed, *named_params({name: value for name, value in base.items() if name != "command"})}
    out = {f"run_{name}": render_value(value, params, f"run_{name}") for name, value in base.items()
           if name != "command"}
    out["run_command"] = render_command(str(base.get("command", "")), params, placed)
    out["run_name"] = label
    out["run_results_dir"] = results_dir
    if max_total_usd is not None:
        out["run_max_total_usd"] = max_total_usd
    return out


# What a trial trains, as opposed to where and how it is rented and watched: a completed trial is reused by a re-run
# only while these are what they were (a changed command or image trains something else; a changed poll interval,
# price limit or budget does not).
TRAINS = ("run_image", "run_code_src", "run_git_repo", "run_index_url", "run_wheelhouse", "run_command", "run_env",
          "run_resume_arg")


def training_digests(run_vars: Mapping[str, Any]) -> dict[str, str]:
    """A digest of each TRAINS variable of a trial, to keep in its trial.json: run_env may hold tokens, so the values
    themselves are not kept. The files under run_code_src are not read: a changed file under the same path is the
    same code to it."""
    return {name: hashlib.sha256(json.dumps(run_vars.get(name), sort_keys=True, default=str).encode()).hexdigest()[:16]
            for name in TRAINS}


def changed_training(earlier: Mapping[str, Any] | None, now: Mapping[str, str]) -> list[str]:
    """The TRAINS variables whose digests differ (none when the earlier trial kept no digests: older results)."""
    if not isinstance(earlier, Mapping):
        return []
    return [name for name in TRAINS if name in earlier and earlier.get(name) != now.get(name)]
