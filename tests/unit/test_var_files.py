"""Variables files for ansible-playbook -e @FILE: !unsafe is read, kept and written so that Ansible's own loader
and templating leave the text as it was."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar
from ansible_collections.mlops.vast.plugins.plugin_utils import var_files

from mlops_vast import api
from mlops_vast.inputs import InputError, collection_module, collection_root, load_vars

unsafe = var_files.UnsafeText
TEXTS = ["Q: {{question}} A:", "{#c#} {% raw %}", "${#ARR[@]}", "it's \"q\" $HOME\nline 2", "plain", ""]


def as_ansible_reads_it(text: str, folder: Path) -> dict:
    """What a playbook gets from -e @FILE: Ansible's loader (as load_extra_vars calls it), then its templating."""
    path = folder / "extra-vars.yml"
    path.write_text(text)
    loaded = DataLoader().load_from_file(str(path), cache="none", trusted_as_template=True)
    return Templar(loader=DataLoader(), variables=loaded).template(loaded)


def package_unsafe_text() -> type:
    """The class as the mlops_vast package loads it (from the checkout, outside the collection loader)."""
    return collection_module(collection_root(), "var_files", "plugin_utils").UnsafeText


def test_every_string_marked_unsafe_reaches_the_playbook_as_written(tmp_path: Path) -> None:
    data = {"run_command": TEXTS[0], "run_env": {"A": TEXTS[1], "B": [TEXTS[2], TEXTS[3]]}, "run_disk_gb": 20,
            "lr": 1e-4, "flag": True, "none": None, "empty": TEXTS[5], "plain": TEXTS[4]}
    assert as_ansible_reads_it(var_files.dump(data, unsafe=True), tmp_path) == data
    # Unmarked, Ansible would template them: the reason for the mark.
    with pytest.raises(Exception, match="question"):
        as_ansible_reads_it(var_files.dump({"run_command": TEXTS[0]}), tmp_path)


def test_only_text_already_unsafe_stays_so_without_the_flag(tmp_path: Path) -> None:
    data = {"kept": unsafe("{{ x }}"), "templated": "{{ 1 + 1 }}", "nested": [unsafe("{{ y }}")]}
    assert as_ansible_reads_it(var_files.dump(data), tmp_path) == {"kept": "{{ x }}", "templated": 2,
                                                                   "nested": ["{{ y }}"]}
    # Text that YAML would read as another type is written so that it stays text (Ansible reads "!unsafe 0.1" as a
    # number): it holds no template anyway.
    texts = {"n": "0.1", "b": "true", "none": "", "int": "7"}
    marked = {name: unsafe(text) for name, text in texts.items()}
    assert as_ansible_reads_it(var_files.dump(marked), tmp_path) == texts
    assert as_ansible_reads_it(var_files.dump(texts, unsafe=True), tmp_path) == texts


def test_unsafe_is_read_as_ansible_reads_it(tmp_path: Path) -> None:
    text = "a: !unsafe '{{ x }}'\nb: [!unsafe '{#c#}', 2]\nc: plain\nd: !unsafe {e: '{{ y }}', f: [1, '{% z %}']}\n" \
           "n: !unsafe 0.5\nnone: !unsafe ''\n"
    loaded = var_files.load(text)
    assert loaded == as_ansible_reads_it(text, tmp_path) == {
        "a": "{{ x }}", "b": ["{#c#}", 2], "c": "plain", "d": {"e": "{{ y }}", "f": [1, "{% z %}"]}, "n": 0.5,
        "none": None}
    for value in (loaded["a"], loaded["b"][0], loaded["d"]["e"], loaded["d"]["f"][1]):
        assert isinstance(value, var_files.UnsafeText), value
    assert not isinstance(loaded["c"], var_files.UnsafeText)
    with pytest.raises(yaml.YAMLError):
        var_files.load("a: !unsafe [1\n")


def test_the_api_reads_unsafe_from_a_file_and_keeps_it_from_a_dict(tmp_path: Path) -> None:
    source = tmp_path / "run.yml"
    source.write_text("run_name: r\nrun_env: {PROMPT: !unsafe 'Q: {{question}}'}\n")
    data, path = load_vars(str(source), "run")
    assert path == source.resolve() and isinstance(data["run_env"]["PROMPT"], package_unsafe_text())
    bad = tmp_path / "bad.yml"
    bad.write_text("run_env: !unsafe {A: [1}\n")
    with pytest.raises(InputError, match=r"bad\.yml is not valid YAML \(line 1, column 24\)"):
        load_vars(str(bad), "run")
    # A dict given to mlops_vast.train/sweep: mlops_vast.unsafe() marks what the playbook must not template.
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    ctx = api._Context(root=api.collection_root(), cwd=tmp_path, env_extra={}, key_file=None, scratch=scratch)
    written = ctx.var_file("run.yml", {"run_command": api.unsafe("echo {{ x }}"), "run_name": "{{ 'r' ~ 1 }}"})
    assert os.stat(written).st_mode & 0o777 == 0o600
    assert as_ansible_reads_it(written.read_text(), tmp_path) == {"run_command": "echo {{ x }}", "run_name": "r1"}
