"""The compiled-template cache of mlops.vast.linear (plugins/plugin_utils/template_cache.py): templates and
conditionals render exactly as without it, from memory, from disk, after damage, when the folder vanishes and when
a filter changes how it wants its arguments; only the text of the collection's playbooks and roles reaches the disk;
a folder that others may write to (or a folder above it), a link, or a file of another user's is not used.

Each check runs Ansible's Templar in a Python process of its own: the cache patches Ansible's classes for the
process's lifetime, which must not reach the other tests."""

from __future__ import annotations

import hashlib
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
IN_THE_CHECKOUT = str(REPO / "examples" / "run.yml")  # a user's own variables, inside the checkout: not shipped
INVENTORY_VARS = str(REPO / "playbooks" / "group_vars" / "all.yml")  # Ansible reads it beside the playbooks
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
    ("template", FOREIGN_TEXT + "HF_TOKEN=hf_x python train.py --lr {{ a }}", IN_THE_CHECKOUT),
    ("template", FOREIGN_TEXT + "group vars {{ a }}", INVENTORY_VARS),
    ("template", "{{ a }} and {{ b }}", ELSEWHERE),  # shipped text, here from elsewhere: memory only
]

SCRIPT = r"""
import json, shutil, sys
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
if mode in ("cached", "vanish"):
    report["installed"] = template_cache.install()
    report["folder"] = template_cache._folder
if mode == "vanish":
    shutil.rmtree(template_cache._folder)
report["results"] = render()
if len(sys.argv) > 4:  # a folder of filter plugins found first from now on, as a role's own filter_plugins would be
    from ansible.plugins.loader import filter_loader
    filter_loader.add_directory(sys.argv[4])
report["again"] = render()
report["stats"] = vars(template_cache.stats)
print(json.dumps(report))
"""


def run(mode: str, cache: str | None, tmp_path: Path, cases: list | None = None, shadow: Path | None = None,
        umask: int = 0o022, **env_extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "MLOPS_VAST_"))}
    env.update({"HOME": str(tmp_path / "home"), "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
                "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-local"), **env_extra})
    if "XDG_CACHE_HOME" not in env_extra:  # the caller's own must not take the cache elsewhere
        env.pop("XDG_CACHE_HOME", None)
    if cache is not None:
        env["MLOPS_VAST_TEMPLATE_CACHE"] = cache
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(REPO / ".collections"), json.dumps(cases or CASES),
                           mode, *([str(shadow)] if shadow else [])],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                          preexec_fn=lambda: os.umask(umask))
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def stored(folder: Path) -> list[tuple[str, bytes]]:
    """Each entry's key and whole file, checked against the digest it carries."""
    found = []
    for path in sorted(folder.iterdir()):
        raw = path.read_bytes()
        assert hashlib.sha256(raw[32:]).digest() == raw[:32], path
        key, _calls, _code = marshal.loads(raw[32:])
        assert path.name == hashlib.sha256(key.encode()).hexdigest()
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


def copy_of(runs: dict, folder: Path) -> list[Path]:
    folder.mkdir(mode=0o700)
    copies = []
    for path in sorted(runs["folder"].iterdir()):
        (folder / path.name).write_bytes(path.read_bytes())
        copies.append(folder / path.name)
    return copies


def test_damaged_or_foreign_files_are_compiled_again(runs: dict, tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    copies = copy_of(runs, folder)
    codes = [marshal.loads(path.read_bytes()[32:])[2] for path in copies]
    for index, path in enumerate(copies):
        raw = path.read_bytes()
        key, calls, code = marshal.loads(raw[32:])
        foreign = marshal.dumps(("another text's key", calls, code))
        swapped = marshal.dumps((key, calls, codes[index - 1]))  # this key, another text's code, the old digest
        other_layout = marshal.dumps((key, 5, code))
        damage = (raw[: len(raw) // 2],  # cut short
                  raw[:40] + bytes([raw[40] ^ 1]) + raw[41:],  # one bit flipped
                  hashlib.sha256(foreign).digest() + foreign,  # sound, but another text's
                  raw[:32] + swapped,
                  hashlib.sha256(other_layout).digest() + other_layout)  # sound, of another layout
        path.write_bytes(damage[index % 5])
    damaged = run("cached", str(folder), tmp_path)
    assert damaged["results"] == runs["plain"]["results"]
    assert damaged["stats"]["loaded"] == 0
    assert damaged["stats"]["stored"] == len(runs["files"])  # replaced by sound ones
    assert {key for key, _raw in stored(folder)} == {key for key, _raw in runs["files"]}


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")
def test_a_file_of_another_users_or_that_others_may_write_is_not_loaded(runs: dict, tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    for index, path in enumerate(copy_of(runs, folder)):
        if index % 2:
            os.chown(path, 65534, 65534)
        else:
            path.chmod(0o666)
    refused = run("cached", str(folder), tmp_path)
    assert refused["results"] == runs["plain"]["results"]
    assert refused["stats"]["loaded"] == 0 and refused["stats"]["stored"] == len(runs["files"])
    assert all(path.stat().st_uid == os.geteuid() and path.stat().st_mode & 0o777 == 0o600
               for path in folder.iterdir())


def test_a_folder_that_vanishes_leaves_the_code_in_memory(runs: dict, tmp_path: Path) -> None:
    gone = run("vanish", str(tmp_path / "cache"), tmp_path)
    assert gone["results"] == runs["plain"]["results"] and gone["again"] == runs["plain"]["results"]
    assert gone["stats"]["stored"] == 0 and gone["stats"]["hits"] >= gone["stats"]["compiled"] > 0


PLAIN_FILTER = "class FilterModule:\n    def filters(self):\n        return {'shape': lambda value: f'plain:{value}'}\n"
CONTEXT_FILTER = ("from jinja2 import pass_context\n\n\n@pass_context\ndef shape(context, value):\n"
                  "    return f'context:{value}:{context.get(\"b\")}'\n\n\nclass FilterModule:\n"
                  "    def filters(self):\n        return {'shape': shape}\n")


def test_code_is_not_reused_once_a_filter_wants_its_arguments_otherwise(tmp_path: Path) -> None:
    # Jinja compiles a call after the filter's pass_context mark: the same text with a filter of the same name that
    # now wants the context (a user's filter_plugins, another version) is compiled again, here and from disk.
    cases = [("template", "{{ a | shape }}", SHIPPED), ("conditional", "(a | shape) != 'x'", SHIPPED)]
    folder, plugins = tmp_path / "cache", tmp_path / "filter_plugins"
    plugins.mkdir()
    (plugins / "shape.py").write_text(PLAIN_FILTER)
    first = run("cached", str(folder), tmp_path, cases, ANSIBLE_FILTER_PLUGINS=str(plugins))
    assert first["results"][0] == ["ok", repr("plain:3")] and first["stats"]["stored"] == 2
    (plugins / "shape.py").write_text(CONTEXT_FILTER)
    second = run("cached", str(folder), tmp_path, cases, ANSIBLE_FILTER_PLUGINS=str(plugins))
    assert second["results"][0] == ["ok", repr("context:3:bee")]
    assert second["results"][1] == ["ok", "True"]
    assert second["stats"]["loaded"] == 0 and second["stats"]["compiled"] == 2
    # And within one process: a folder of filters found first from the middle of the run on.
    (plugins / "shape.py").write_text(PLAIN_FILTER)
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "shape.py").write_text(CONTEXT_FILTER)
    midway = run("cached", "", tmp_path, cases, shadow=shadow, ANSIBLE_FILTER_PLUGINS=str(plugins))
    assert midway["results"][0] == ["ok", repr("plain:3")]
    assert midway["again"][0] == ["ok", repr("context:3:bee")], midway
    assert midway["again"][1] == ["ok", "True"]


def test_a_linked_folder_or_one_under_a_folder_others_may_change_is_not_used(runs: dict, tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    open_parent = tmp_path / "open"
    open_parent.mkdir()
    open_parent.chmod(0o777)  # not sticky: anyone could swap the cache folder under it
    for folder in (tmp_path / "link", open_parent / "cache"):
        refused = run("cached", str(folder), tmp_path)
        assert refused["folder"] is None, folder
        assert refused["results"] == runs["plain"]["results"]
        assert refused["stats"]["stored"] == 0
    assert list(real.iterdir()) == [] and not (open_parent / "cache").exists()  # nothing made under it


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a home of another user's")
def test_nothing_is_made_in_another_users_home(runs: dict, tmp_path: Path) -> None:
    # root with a user's HOME (sudo -E): that user's ~/.cache must not become root's.
    home = tmp_path / "someone"
    home.mkdir()
    os.chown(home, 65534, 65534)
    theirs = run("cached", None, tmp_path, HOME=str(home))
    assert theirs["folder"] is None and theirs["results"] == runs["plain"]["results"]
    assert list(home.iterdir()) == []


def test_a_umask_that_opens_new_folders_to_the_group_does_not_disable_the_cache(runs: dict, tmp_path: Path) -> None:
    base = tmp_path / "xdg"
    first = run("cached", None, tmp_path, umask=0o002, XDG_CACHE_HOME=str(base))
    assert first["folder"] is not None and first["folder"].startswith(str(base / "mlops-vast" / "templates"))
    assert first["stats"]["stored"] > 0
    made = Path(first["folder"])
    while made != base:
        assert made.stat().st_mode & 0o777 == 0o700, made
        made = made.parent
    again = run("cached", None, tmp_path, umask=0o002, XDG_CACHE_HOME=str(base))
    assert again["stats"]["loaded"] > 0 and again["results"] == runs["plain"]["results"]


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
