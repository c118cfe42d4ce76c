"""A sweep hands each trial's variables to its train.yml as they were planned, never templated a second time: a
prompt template's {{ }}, a {# #} or a shell ${#ARR[@]} in a value reaches the trial as written. A stand-in
train.yml records what it received; nothing is rented."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO
from tests.integration.ansible_run import ANSIBLE_BIN, ansible_env

RECORDER = """\
- name: Stand-in for train.yml, recording the variables it was given
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Record them
      ansible.builtin.copy:
        content: "{{ {'command': run_command, 'env': run_env, 'image': run_image} | to_json }}"
        dest: "{{ run_results_dir }}/received.json"
        mode: "0600"
"""

SWEEP = """\
- name: A sweep whose values hold template syntax
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Sweep
      mlops.vast.sweep:
        name: verbatim
        playbook_dir: {plays}
        results_dir: {results}
        base:
          # As sweep.yml's templating leaves {{{{ trial.tmpl | quote }}}}: the placeholder the action fills in.
          command: "python3 train.py --tmpl '@@mlops-trial:tmpl@@'"
          image: !unsafe "img:{{{{x}}}}"
          env: {{PROMPT: !unsafe "Q: {{{{question}}}} A:", ARRAY_LEN: !unsafe "${{#ARR[@]}}"}}
        trials:
          - {{tmpl: !unsafe "{{#c#}} {{{{ x }}}} {{% raw %}}"}}
          - {{tmpl: "it's \\"q\\" $HOME"}}
        max_parallel: 2
        poll_s: 0.2
        trial_strategy: ""
      register: swept
      ignore_errors: true
"""


def test_each_trial_receives_its_values_as_written(tmp_path: Path) -> None:
    plays, results = tmp_path / "plays", tmp_path / "results"
    plays.mkdir()
    (plays / "train.yml").write_text(RECORDER)
    playbook = tmp_path / "sweep.yml"
    playbook.write_text(SWEEP.format(plays=plays, results=results))
    env = ansible_env(None, tmp_path)
    done = subprocess.run([str(ANSIBLE_BIN / "ansible-playbook"), str(playbook), "-i", "localhost,", "-c", "local",
                           "-e", f"ansible_python_interpreter={sys.executable}"], env=env, cwd=REPO,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    received = sorted(results.glob("t*/received.json"))
    assert len(received) == 2, done.stdout[-3000:] + done.stderr[-3000:]
    commands = set()
    for path in received:
        got = json.loads(path.read_text())
        assert got["env"] == {"PROMPT": "Q: {{question}} A:", "ARRAY_LEN": "${#ARR[@]}"}, got
        assert got["image"] == "img:{{x}}", got
        commands.add(got["command"])
    assert commands == {"python3 train.py --tmpl " + shlex.quote(value)
                        for value in ("{#c#} {{ x }} {% raw %}", "it's \"q\" $HOME")}
