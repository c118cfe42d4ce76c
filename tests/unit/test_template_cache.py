"""The compiled-template cache of mlops.vast.linear (plugins/plugin_utils/template_cache.py): templates and
conditionals render exactly as without it, from memory, from disk and after damage; only the collection's own text
reaches the disk; a folder that others may write to is not used.

Each check runs Ansible's Templar in a Python process of its own: the cache patches Ansible's classes for the
process's lifetime, which must not reach the other tests."""

from __future__ import annotations

import json
import marshal
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

SHIPPED = str(REPO / "roles" / "train" / "tasks" / "main.yml")  # the origin Ansible gives text from that file
ELSEWHERE = "/srv/users-own/playbook.yml"
FOREIGN_TEXT = "users-own-text-"

# (kind, source, origin): template or conditional; origin None is text with no file (extra vars, module results).
CASES = [
    ("template", "{{ a }} and {{ b }}", SHIPPED),
    ("template", "{{ a + 1 }}", SHIPPED),
    ("template", "{{ names | mlops.vast.natural_sort }}", SHIPPED),  # the collection's filter, from disk
    ("template", "{{ {'x': a} | ansible.builtin.to_json }}", SHIPPED),
    ("template", "{{ 'one\\ttwo' }}|{% set s = 'x\\ty' %}{{ s }}", SHIPPED),  # Ansible escapes backslashes here only
    ("template", "#jinja2:variable_start_string:'[%', variable_end_string:'%]'\n[% a %] {{ a }}", SHIPPED),
    ("template", "[% a %] {{ a }}", SHIPPED),  # the same text without the override header: compiled apart
    ("template", "{% for i in range(a) %}{{ i }},{% endfor %}", SHIPPED),
    ("template", "{{ lookup('ansible.builtin.vars', 'inner') }}", SHIPPED),  # a template inside a variable
    ("template", "{{ a }}\n\n", SHIPPED),  # trailing newlines kept
    ("template", "{{ not_defined_anywhere }}", SHIPPED),
    ("template", "{{ a | no_such_filter_here }}", SHIPPED),
    ("template", "{{ a + }}", SHIPPED),  # a syntax error: the same error, never kept
    ("conditional", "a == 3 and b is defined", SHIPPED),
    ("conditional", "b is undefined", SHIPPED),
    ("conditional", "a +", SHIPPED),
    ("template", FOREIGN_TEXT + "elsewhere {{ a }}", ELSEWHERE),
    ("template", FOREIGN_TEXT + "no file {{ b }}", None),
    ("conditional", f"'{FOREIGN_TEXT}cond' != b", ELSEWHERE),
    ("template", "{{ a }} and {{ b }}", ELSEWHERE),  # shipped text, here from elsewhere: memory only
]

SCRIPT = r"""
import json, sys
from ansible.plugins.loader import init_plugin_loader
init_plugin_loader([sys.argv[1]])
from ansible._internal._datatag._tags import Origin
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template
from ansible_collections.mlops.vast.plugins.plugin_utils import template_cache

cases, mode = json.loads(sys.argv[2]), sys.argv[3]
variables = {"a": 3, "b": "bee", "names": ["ckpt-10", "ckpt-9", "ckpt-100"], "inner": trust_as_template("<{{ b }}>")}


def render():
    templar = Templar(loader=DataLoader(), variables=variables)
    out = []
    for kind, source, origin in cases:
        value = trust_as_template(Origin(path=origin).tag(source) if origin else source)
        try:
            result = templar.template(value) if kind == "template" else templar.evaluate_conditional(value)
            out.append(["ok", repr(result)])
        except Exception as exc:
            out.append(["error", type(exc).__name__, str(exc).split("\n")[0]])
    return out


report = {}
if mode == "cached":
    report["installed"] = template_cache.install()
    report["folder"] = template_cache._folder
report["results"] = render()
report["again"] = render()
report["stats"] = vars(template_cache.stats)
print(json.dumps(report))
"""


def run(mode: str, cache: str | None, tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "MLOPS_VAST_"))}
    env.update(HOME=str(tmp_path / "home"), ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-local"))
    if cache is not None:
        env["MLOPS_VAST_TEMPLATE_CACHE"] = cache
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(REPO / ".collections"), json.dumps(CASES), mode],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def stored(folder: Path) -> list[tuple[str, bytes]]:
    found = []
    for path in sorted(folder.iterdir()):
        raw = path.read_bytes()
        key, _code = marshal.loads(raw)
        found.append((key, raw))
    return found


FAILING = {"{{ not_defined_anywhere }}", "{{ a | no_such_filter_here }}", "{{ a + }}", "a +"}
SHIPPED_OK = {source for _kind, source, origin in CASES if origin == SHIPPED and source not in FAILING}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    tmp_path = tmp_path_factory.mktemp("template-cache")
    folder = tmp_path / "cache"
    plain = run("plain", None, tmp_path)
    cold = run("cached", str(folder), tmp_path)
    files_after_cold = stored(folder)
    warm = run("cached", str(folder), tmp_path)
    return {"plain": plain, "cold": cold, "warm": warm, "folder": folder, "files": files_after_cold}


def test_the_cases_exercise_what_they_should(runs: dict) -> None:
    failed = {case[1] for case, result in zip(CASES, runs["plain"]["results"], strict=True) if result[0] == "error"}
    assert failed == FAILING, runs["plain"]["results"]
    by_source = {case[1]: result for case, result in zip(CASES, runs["plain"]["results"], strict=True)}
    assert by_source["{{ names | mlops.vast.natural_sort }}"][1] == repr(["ckpt-9", "ckpt-10", "ckpt-100"])
    assert by_source["#jinja2:variable_start_string:'[%', variable_end_string:'%]'\n[% a %] {{ a }}"][1] \
        == repr("3 {{ a }}")
    assert by_source["[% a %] {{ a }}"][1] == repr("[% a %] 3")
    assert by_source["{{ lookup('ansible.builtin.vars', 'inner') }}"][1] == repr("<bee>")


def test_templates_render_the_same_compiled_read_from_memory_and_from_disk(runs: dict) -> None:
    plain = runs["plain"]["results"]
    for name in ("cold", "warm"):
        assert runs[name]["installed"] is True
        assert runs[name]["results"] == plain, name
        assert runs[name]["again"] == plain, name
    assert runs["plain"]["again"] == plain


def test_a_process_compiles_each_text_once_and_the_next_one_reads_the_collections_from_disk(runs: dict) -> None:
    cold, warm = runs["cold"]["stats"], runs["warm"]["stats"]
    assert cold["loaded"] == 0 and cold["compiled"] > 0
    assert cold["hits"] >= cold["compiled"]  # the second render compiled nothing
    assert cold["stored"] == len(runs["files"]) > 0
    assert warm["loaded"] >= len(SHIPPED_OK)
    assert warm["stored"] == 0
    # What was compiled again is only what the disk may not hold (and the errors, which are never kept).
    assert warm["compiled"] < cold["compiled"]
    assert runs["plain"]["stats"] == {"hits": 0, "loaded": 0, "compiled": 0, "stored": 0}  # not installed: untouched


def test_only_the_collections_own_text_reaches_the_disk(runs: dict) -> None:
    keys = [key for key, _raw in runs["files"]]
    for source in SHIPPED_OK:
        compiled = source.split("\n", 1)[1] if source.startswith("#jinja2:") else source  # Ansible strips the header
        assert any(repr(compiled) in key for key in keys), source
    assert sum(repr("[% a %] {{ a }}") in key for key in keys) == 2  # with the override and without: apart
    for key, raw in runs["files"]:
        assert FOREIGN_TEXT.encode() not in raw, key
    for source in FAILING - {"{{ not_defined_anywhere }}"}:  # compiles: the variable is missing only at render
        assert not any(repr(source) in key for key in keys), source  # a compile error is never kept
    assert os.stat(runs["folder"]).st_mode & 0o777 == 0o700


def test_damaged_or_foreign_files_are_compiled_again(runs: dict, tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    folder.mkdir(mode=0o700)
    for index, path in enumerate(sorted(runs["folder"].iterdir())):
        raw = path.read_bytes()
        damage = (raw[: len(raw) // 2],  # cut short
                  b"\x00not marshal",
                  marshal.dumps(("another text's key", marshal.loads(raw)[1])))  # another text's code
        (folder / path.name).write_bytes(damage[index % 3])
    damaged = run("cached", str(folder), tmp_path)
    assert damaged["results"] == runs["plain"]["results"]
    assert damaged["stats"]["loaded"] == 0
    assert damaged["stats"]["stored"] == len(runs["files"])  # replaced by sound ones
    assert {key for key, _raw in stored(folder)} == {key for key, _raw in runs["files"]}


def test_a_folder_others_may_write_to_is_not_used(runs: dict, tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o777)
    shared = run("cached", str(folder), tmp_path)
    assert shared["folder"] is None
    assert shared["results"] == runs["plain"]["results"]
    assert shared["stats"]["hits"] > 0 and shared["stats"]["stored"] == 0
    assert list(folder.iterdir()) == []


def test_an_empty_setting_keeps_code_in_memory_only(runs: dict, tmp_path: Path) -> None:
    memory = run("cached", "", tmp_path)
    assert memory["folder"] is None
    assert memory["results"] == runs["plain"]["results"]
    assert memory["stats"]["stored"] == 0 and memory["stats"]["hits"] > 0
    assert not (tmp_path / "home" / ".cache").exists()
