"""Where the collection is, and reading a run or a sweep (a dict or a YAML file) with clear errors."""

from __future__ import annotations

import datetime
import difflib
import importlib
import importlib.util
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml


class InputError(ValueError):
    """Bad input: a missing file, malformed YAML, an unknown top-level key. One line, no traceback needed."""


SWEEP_KEYS = frozenset({"sweep_name", "sweep_grid", "sweep_random", "sweep_trials", "sweep_max_parallel",
                        "sweep_budget_usd"})


def collection_root() -> Path:
    """The repository that is the collection ``mlops.vast`` (playbooks/, ansible.cfg): ``MLOPS_VAST_COLLECTION``,
    else the checkout this package was installed from (editable installs)."""
    candidates = [os.environ.get("MLOPS_VAST_COLLECTION", "")]
    here = Path(__file__).resolve()
    candidates += [str(parent) for parent in here.parents]
    for candidate in candidates:
        if candidate and (Path(candidate) / "galaxy.yml").is_file() and (Path(candidate) / "playbooks").is_dir():
            return Path(candidate)
    raise InputError("cannot find the mlops.vast collection (playbooks/, ansible.cfg): install the package from "
                     "its checkout (pip install -e .) or set MLOPS_VAST_COLLECTION to the checkout")


def check_api_url(url: str | None, named: str) -> None:
    """The collection's rule for the API's address (its api_client's), said before anything starts; ``named``: where
    the URL came from, for the message."""
    if url and not url.strip().startswith(("http://", "https://")):
        raise InputError(f"the Vast API URL must start with http:// or https://, got {url!r} ({named})")


def load_vars(source: dict[str, Any] | str | os.PathLike[str], what: str,
              cwd: str | os.PathLike[str] | None = None) -> tuple[dict[str, Any], Path | None]:
    """The variables of a run or sweep and the file they came from (None for a dict); a relative path is looked for
    under ``cwd``, then under the current directory."""
    if cwd is not None and not Path(cwd).expanduser().is_dir():
        raise InputError(f"cwd {os.fspath(cwd)!r} is not a directory: give the folder relative paths and results/ "
                         "start from")
    if isinstance(source, dict):
        return dict(source), None
    if not isinstance(source, str | os.PathLike):
        raise InputError(f"the {what} must be a mapping of its variables or the path of a YAML file holding them, "
                         f"not {type(source).__name__} {source!r:.60}")
    path = Path(source).expanduser()
    if cwd is not None and not path.is_absolute() and (Path(cwd).expanduser() / path).exists():
        path = Path(cwd).expanduser() / path
    if not path.is_file():
        raise InputError(f"{what} file {path} does not exist" if not path.exists() else f"{path} is not a file")
    try:
        # As ansible-playbook reads -e @FILE: !unsafe marks text the playbook must not template.
        data = collection_module(collection_root(), "var_files", "plugin_utils").load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InputError(f"{path} is not valid YAML{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(f"{path} must hold a mapping of variables (run_name: ..., ...), not a {type(data).__name__}")
    return data, path.resolve()


def run_variables(root: Path) -> frozenset[str]:
    """The run_* variables the run contract (playbooks/train.meta.yml) knows."""
    meta = yaml.safe_load((root / "playbooks" / "train.meta.yml").read_text())
    return frozenset(meta["argument_specs"]["main"]["options"])


def sweep_variables(root: Path) -> frozenset[str] | None:
    """The sweep_* variables sweep.yml's contract knows (playbooks/sweep.meta.yml), or None when it has none."""
    path = root / "playbooks" / "sweep.meta.yml"
    if not path.is_file():
        return None
    meta = yaml.safe_load(path.read_text())
    return frozenset(meta["argument_specs"]["main"]["options"])


def check_run(data: dict[str, Any], root: Path, where: str = "the run", *, complete: bool = True,
              cwd: str | os.PathLike[str] | None = None) -> str:
    """The run's name; InputError for an unknown top-level key, a missing name or a wrong value (a directory is
    looked for under ``cwd``, default the current one), and, when the run is to be ``complete`` (not only
    estimated), a missing required variable."""
    known = run_variables(root)
    unknown = sorted(str(name) for name in data if str(name) not in known)
    if unknown:
        raise InputError(f"{where}: unknown variable(s) {_with_hints(unknown, known)} (the run's variables are "
                         "run_*, described in playbooks/train.meta.yml and examples/run.yml)")
    name = _name(data, "run_name", where)
    wrong = missing_required(data, _options(root, "train.meta.yml")) if complete else []
    wrong += value_problems(data, root, cwd)
    if wrong:
        raise InputError(f"{where}: {'; '.join(wrong)} (see playbooks/train.meta.yml and examples/run.yml)")
    return name


SEARCH_VARIABLES = ("run_query", "run_order", "run_disk_gb", "run_max_dph")


def search_defaults(root: Path) -> dict[str, Any]:
    """train.meta.yml's defaults of the variables that choose the offers a run rents (its query, order, disk and price
    limit): what an estimate searches with when the run file leaves them out."""
    options = _options(root, "train.meta.yml")
    return {name: options[name]["default"] for name in SEARCH_VARIABLES if "default" in options.get(name, {})}


def _options(root: Path, meta: str) -> dict[str, Any]:
    return yaml.safe_load((root / "playbooks" / meta).read_text())["argument_specs"]["main"]["options"]


def missing_required(data: dict[str, Any], spec: dict[str, Any], given_elsewhere: frozenset[str] = frozenset()
                     ) -> list[str]:
    """A required variable absent from ``data`` (one given templated is there, and left to the playbook)."""
    return [f"{name} is missing (required: {_first_sentence(option)})" for name, option in spec.items()
            if option.get("required") and name not in data and name not in given_elsewhere]


def _first_sentence(option: dict[str, Any]) -> str:
    text = option.get("description") or ""
    text = " ".join(text) if isinstance(text, list) else str(text)
    sentence = text.split(". ")[0].rstrip(".").strip()
    return sentence[:1].lower() + sentence[1:] if sentence else "see its description"


def _with_hints(unknown: list[str], known: Iterable[str]) -> str:
    """The unknown names, each with the closest known one (a typo said as such, as the playbook's check does)."""
    choices = sorted(known)
    said = []
    for name in unknown:
        close = difflib.get_close_matches(name, choices, n=1)
        said.append(f"{name} (did you mean {close[0]}?)" if close else name)
    return ", ".join(said)


def value_problems(data: dict[str, Any], root: Path, cwd: str | os.PathLike[str] | None = None) -> list[str]:
    """What train.yml's first task would say about the run's values (types, choices, ranges), said before a
    playbook starts. Templated values and missing required ones are left to the playbook."""
    contract = _contract(root)
    spec = yaml.safe_load((root / "playbooks" / "train.meta.yml").read_text())["argument_specs"]["main"]["options"]
    values = {name: value for name, value in data.items() if name in spec and "{{" not in str(value)}
    converted, errors = contract.validated(values, spec)
    found = [error for error in errors if not _top_level_missing(error)]
    return contract.plain_errors(found, values, spec) + contract.problems(
        values, spec, where="train.yml", converted=converted, base_dir=str(cwd) if cwd is not None else None) + \
        query_problems(values, root) + estimate_problems(values, root)


def _top_level_missing(error: str) -> bool:
    """A required variable left out: the playbook says that (a run file may leave it to -e); a required key missing
    inside one of them ("... found in run_sources") is said here."""
    return error.startswith("missing required arguments") and " found in " not in error


def _contract(root: Path) -> Any:
    """The collection's own contract checks (plugins/plugin_utils/contract.py), loaded from the checkout: the
    same code as the playbook's first task, without the collection loader."""
    return collection_module(root, "contract", "plugin_utils")


def collection_module(root: Path, name: str, folder: str = "module_utils") -> Any:
    """A module of the collection's plugins/<folder>, loaded from the checkout without the collection loader, as part
    of a package of that folder, so that its imports of its siblings (``from .x import y``) work too."""
    package = f"mlops_vast._{folder}_package"
    if package not in sys.modules:
        spec = importlib.util.spec_from_loader(package, loader=None, is_package=True)
        if spec is None:
            raise InputError(f"cannot load {root / 'plugins' / folder}")
        module = importlib.util.module_from_spec(spec)
        module.__path__ = [str(root / "plugins" / folder)]
        sys.modules[package] = module
    return importlib.import_module(f"{package}.{name}")


def estimate_problems(data: dict[str, Any], root: Path) -> list[str]:
    """What mlops.vast.estimate would refuse in run_estimate (an unknown option, a wrong type or choice), said before
    a playbook starts; templated values are left to the playbook."""
    job = data.get("run_estimate")
    if not isinstance(job, dict) or not job:
        return []
    spec = collection_module(root, "estimate_job").JOB_SPEC
    unknown = sorted(str(name) for name in job if name not in spec)
    if unknown:
        return [f"run_estimate has no option(s) {_with_hints(unknown, spec)}; its options are {', '.join(spec)}"]
    from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

    given = {name: value for name, value in job.items() if "{{" not in str(value)}
    checked = ArgumentSpecValidator(spec).validate(given)
    return [f"run_estimate: {message}" for message in checked.error_messages]


def query_problems(data: dict[str, Any], root: Path) -> list[str]:
    """What the offer search would say of run_query and run_order before it searches (the CLI's query language),
    said before anything starts; a templated one is left to the playbook."""
    query_language = collection_module(root, "vast_query")
    found = []
    for name, parse in (("run_query", query_language.parse_query), ("run_order", query_language.parse_order)):
        value = data.get(name)
        if value is None or "{{" in str(value):
            continue
        try:
            parse(value)
        except (query_language.QueryError, TypeError, ValueError) as exc:
            found.append(f"{name}: {exc}")
    return found


def check_sweep(data: dict[str, Any], root: Path, where: str = "the sweep",
                cwd: str | os.PathLike[str] | None = None) -> str:
    """The sweep's name; InputError for an unknown top-level key, a missing name or no trials."""
    runs = run_variables(root)
    sweeps = sweep_variables(root)
    unknown = sorted(str(name) for name in data if not (
        str(name) in runs or (str(name) in sweeps if sweeps is not None else str(name).startswith("sweep_"))))
    if unknown:
        known = runs | (sweeps or frozenset())
        raise InputError(f"{where}: unknown variable(s) {_with_hints(unknown, known)} (a sweep has sweep_* "
                         "variables and the run_* variables of its base run)")
    if not any(data.get(key) for key in ("sweep_grid", "sweep_random", "sweep_trials")):
        raise InputError(f"{where}: no trials (give sweep_grid, sweep_random or sweep_trials)")
    name = _name(data, "sweep_name", where)
    wrong = sweep_value_problems(data, root)
    # The sweep names each trial's run; every other required run_* variable is the base run's to give.
    wrong += missing_required(data, _options(root, "train.meta.yml"), frozenset({"run_name"}))
    wrong += value_problems(data, root, cwd)
    if not wrong:
        wrong = _plan_problems(data, root)
    if wrong:
        raise InputError(f"{where}: {'; '.join(wrong)} (see playbooks/sweep.meta.yml, playbooks/train.meta.yml and "
                         "examples/sweep.yml)")
    return name


def sweep_value_problems(data: dict[str, Any], root: Path) -> list[str]:
    """What sweep.yml's first task would say about the sweep_* values (types, ranges)."""
    if sweep_variables(root) is None:
        return []
    contract = _contract(root)
    spec = _options(root, "sweep.meta.yml")
    values = {name: value for name, value in data.items() if name in spec and "{{" not in str(value)}
    converted, errors = contract.validated(values, spec)
    found = [error for error in errors if not _top_level_missing(error)]
    return (contract.plain_errors(found, values, spec) +
            contract.problems(values, spec, where="sweep.yml", converted=converted))


def _plan_problems(data: dict[str, Any], root: Path) -> list[str]:
    """The trials the sweep describes (grid, random samples, explicit list), expanded as sweep.yml will."""
    keys = ("sweep_grid", "sweep_random", "sweep_trials")
    plan = collection_module(root, "sweep_plan", "plugin_utils")
    try:
        plan.check_sweep_name(data.get("sweep_name"))
    except plan.SweepSpecError as exc:
        return [str(exc)]
    if any("{{" in str(data.get(key)) for key in keys):
        return []  # templated: the playbook expands it
    try:
        plan.expand(*(data.get(key) or ({} if key != "sweep_trials" else []) for key in keys))
    except plan.SweepSpecError as exc:
        return [str(exc)]
    return []


def _name(data: dict[str, Any], key: str, where: str) -> str:
    name = data.get(key)
    if isinstance(name, int | float | datetime.date) and not isinstance(name, bool):
        # -e run_name=123 (or 2024-01-01) read as YAML is a number (a date): ansible-playbook would take the text.
        name = data[key] = str(name)
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"{where}: {key} is missing (a non-empty string: it names the results folder)")
    return name  # its form ('/', a leading '.') is the meta file's pattern, checked with the other values
