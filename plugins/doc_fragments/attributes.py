# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every mlops.vast module's documentation shares: its maintainers and its attributes.

Use ``mlops.vast.attributes`` (maintainers, what each attribute means) and one fragment per trait:
``.api`` (talks to the Vast API from the controller, in the ``mlops.vast.vast`` action group),
``.host`` (runs on the rented host), ``.action`` (an action plugin, on the controller), ``.in_process`` (a
module whose action plugin runs it inside Ansible's worker), ``.read_only`` or ``.resource`` (check mode and
diff support).
"""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
author:
  - mlops.vast developers (@mlops-vast)
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
  platform:
    description: Target OS/families that can be operated against.
    support: N/A
"""

    API = r"""
attributes:
  action_group:
    description: Use C(group/mlops.vast.vast) in C(module_defaults) to set O(api_key), O(api_url) and
      O(api_timeout) once for every module of the collection that talks to the Vast API.
    support: full
    membership:
      - mlops.vast.vast
  platform:
    platforms: all
    details: Runs on the controller (a module without an action plugin, wherever the task is delegated); talks to
      the Vast API over HTTPS.
"""

    HOST = r"""
attributes:
  platform:
    platforms: posix
    details: Runs on the rented host, with the Python standard library only.
"""

    ACTION = r"""
attributes:
  action:
    description: Indicates this has a corresponding action plugin, so some parts of the options can be executed
      on the controller.
    support: full
    details: An action plugin; it runs on the controller.
  async:
    description: Supports being used with the C(async) keyword.
    support: none
  bypass_host_loop:
    description: Forces a 'global' task that does not execute per host.
    support: none
"""

    IN_PROCESS = r"""
attributes:
  action:
    description: Indicates this has a corresponding action plugin, so some parts of the options can be executed
      on the controller.
    support: full
    details: Its action plugin runs the module's code inside Ansible's worker process on the controller, so no
      Python is started for it (about 0.3 CPU-seconds saved a task); C(delegate_to) does not move it, and the
      task's C(environment) applies as it would to a module.
  async:
    description: Supports being used with the C(async) keyword.
    support: none
"""

    READ_ONLY = r"""
attributes:
  check_mode:
    support: full
    details: Reads only; check mode changes nothing either.
  diff_mode:
    support: none
"""

    RESOURCE = r"""
attributes:
  check_mode:
    support: full
    details: Nothing is rented, started, stopped, written or destroyed; the result and diff say what would be.
  diff_mode:
    support: full
"""
