# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: vast
short_description: Vast.ai instances as an Ansible inventory
version_added: 0.1.0
author:
  - mlops.vast developers (@mlops-vast)
description:
  - Lists the instances of a Vast.ai account through C(GET /api/v1/instances/), page by page, and makes
    each one a host in the group C(vast).
  - Uses a YAML configuration file whose name ends with C(vast.yml) or C(vast.yaml).
  - Every field of an instance becomes a host variable with the O(hostvars_prefix) (C(vast_id),
    C(vast_label), C(vast_gpu_name), C(vast_actual_status), ...). C(ansible_host), C(ansible_port) and
    C(ansible_user) are set from the instance's SSH endpoint, as C(vastai ssh-url) computes it, and the
    group C(vast) gets C(ansible_ssh_private_key_file), the key the collection rents with (O(ssh_private_key_file)).
  - The API key is never written to host variables, the cache, warnings or errors.
extends_documentation_fragment:
  - mlops.vast.vast
  - constructed
  - inventory_cache
options:
  plugin:
    description: Marks this file as a configuration of this plugin.
    type: str
    required: true
    choices: [mlops.vast.vast]
  api_key:
    description:
      - Vast.ai API key.
      - When not set, the key is read from the E(VAST_API_KEY) environment variable, then from the file
        E(VAST_API_KEY_FILE) names, then from the official CLI's key files C(~/.config/vastai/vast_api_key)
        and C(~/.vast_api_key).
      - May be a template (for example C({{ vault_vast_api_key }})); it is rendered with the extra vars
        (C(--extra-vars)) available.
      - E(VAST_API_KEY) is read by the plugin itself rather than declared as this option's C(env), so that
        C(ansible-config dump) never prints the key.
  api_url:
    env:
      - name: VAST_URL
    ini:
      - section: vast
        key: api_url
  api_timeout:
    env:
      - name: VAST_API_TIMEOUT
    ini:
      - section: vast
        key: api_timeout
  api_retry_timeout:
    description:
      - Seconds the whole listing may take, including the retries of rate limits (429), server
        errors (502, 503, 504) and connection errors. When it is spent, parsing fails with the last error.
    type: float
    default: 60
    env:
      - name: VAST_API_RETRY_TIMEOUT
    ini:
      - section: vast
        key: api_retry_timeout
  statuses:
    description:
      - Only instances whose C(actual_status) is in this list (filtered by the server).
      - Values are Vast's status words, for example V(running), V(loading), V(created), V(exited),
        V(stopped), V(offline).
      - An empty list lists every instance, whatever its status.
    type: list
    elements: str
    default: [running]
  label_prefix:
    description:
      - Only instances whose label starts with this text. Instances without a label are left out when set.
    type: str
  label_regex:
    description:
      - Only instances whose label matches this Python regular expression (C(re.search); anchor it with
        C(^) and C($) to match the whole label). An instance without a label is matched as the empty string.
    type: str
  hostnames:
    description:
      - How to name each host, as a preference list; the first entry that gives a non-empty name wins.
      - V(label) is the instance label and V(id) the instance id. Any other name of an instance field
        (for example V(machine_id)) uses that field.
      - Anything else is a Jinja2 expression (for example C(vast_gpu_name ~ '-' ~ vast_id)) or a template
        containing C({{ }}), evaluated with the host variables of the instance (with their prefix).
      - Host names are unique. When a name is already taken (two instances with the same label), the later
        instance (higher id) is named C(<name>-<id>) and a warning says so.
    type: list
    elements: str
    default: [label, id]
  hostvars_prefix:
    description:
      - Prefix of the host variables made from the instance fields.
    type: str
    default: vast_
  prefer_direct:
    description:
      - When V(true), connect to the instance's public IP and the host port of its C(22/tcp) mapping when
        Vast reports one (runtypes with C(ssh_direc), while running); otherwise, and always when V(false),
        through Vast's SSH proxy C(ssh_host):C(ssh_port).
      - Like the official CLI, the proxy port is C(ssh_port + 1) for runtypes that contain C(jupyter).
    type: bool
    default: true
    env:
      - name: VAST_PREFER_DIRECT
    ini:
      - section: vast
        key: prefer_direct
  ansible_user:
    description:
      - The C(ansible_user) of every host. Vast containers log in as C(root).
    type: str
    default: root
    env:
      - name: VAST_SSH_USER
    ini:
      - section: vast
        key: ssh_user
  ssh_private_key_file:
    description:
      - The C(ansible_ssh_private_key_file) of the group C(vast), the key that reaches the instances. A group
        variable, so C(group_vars/vast.yml) or a host variable of the user's own still wins.
      - When not set, E(MLOPS_VAST_SSH_KEY), else the collection's own key (C(id_ed25519) next to the contract
        ledger, which M(mlops.vast.ssh_keypair) creates the first time the collection rents), if it exists.
      - An empty string sets none (SSH's own defaults then apply).
    type: str
notes:
  - Instances in the statuses C(loading) or C(created) have no direct port yet; they get the proxy endpoint.
  - With O(cache) enabled, a second run within O(cache_timeout) sends no request; C(--flush-cache) or
    the C(refresh_inventory) meta task query the API again. Another O(api_url), O(statuses) or API key also misses
    the cache (the cache holds a one-way digest of the key, never the key).
  - C(ansible-inventory) only warns, and exits 0, when a source fails to parse. Set
    E(ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED=true) (or C(any_unparsed_is_failed) in C([inventory])) to
    make a missing or rejected key fatal.
seealso:
  - name: Vast.ai API
    description: The REST API this plugin reads.
    link: https://docs.vast.ai/api-reference/introduction
"""

EXAMPLES = r"""
# Minimal: the running instances of the account whose key is in VAST_API_KEY
# (or ~/.config/vastai/vast_api_key). File name: vast.yml
plugin: mlops.vast.vast

---
# Every instance of one project, grouped by GPU, label and status
plugin: mlops.vast.vast
statuses: []
label_prefix: train-
keyed_groups:
  - key: vast_gpu_name
    prefix: gpu
  - key: vast_label
    prefix: label
  - key: vast_actual_status
    prefix: status
groups:
  multi_gpu: vast_num_gpus > 1

---
# Key from a vaulted variable passed with --extra-vars, hosts named by GPU and id,
# always through the SSH proxy, and a private key set for every host
plugin: mlops.vast.vast
api_key: "{{ vault_vast_api_key }}"
hostnames:
  - vast_gpu_name | replace(' ', '_') ~ '-' ~ vast_id
prefer_direct: false
compose:
  ansible_ssh_private_key_file: "'~/.ssh/vast_ed25519'"
  gpu_count: vast_num_gpus

---
# Cached for ten minutes in JSON files
plugin: mlops.vast.vast
cache: true
cache_plugin: ansible.builtin.jsonfile
cache_connection: ~/.cache/ansible/vast_inventory
cache_timeout: 600
"""

import copy
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

from ansible.errors import AnsibleParserError
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.inventory import BaseInventoryPlugin, Cacheable, Constructable

from ..module_utils.api_client import VastClient, resolve_api_key, resolve_base_url
from ..module_utils.errors import VastAPIError, VastAuthError, VastError
from ..module_utils.local_state import ssh_key_in_use
from ..module_utils.rows import ssh_endpoint
from ..module_utils.waiting import Deadline
from ..plugin_utils.redaction import redact_text, redacted

GROUP = "vast"
CACHE_FORMAT = 1


def label_matches(label: str | None, prefix: str | None, pattern: re.Pattern[str] | None) -> bool:
    """Whether an instance label passes ``label_prefix`` and ``label_regex``."""
    if prefix and not (label or "").startswith(prefix):
        return False
    return not (pattern is not None and not pattern.search(label or ""))


class InventoryModule(BaseInventoryPlugin, Constructable, Cacheable):
    NAME = "mlops.vast.vast"

    def __init__(self) -> None:
        super().__init__()
        self._api_key: str | None = None

    def verify_file(self, path: str) -> bool:
        """Only ``*vast.yml`` / ``*vast.yaml`` files are configurations of this plugin."""
        return bool(super().verify_file(path)) and str(path).endswith(("vast.yml", "vast.yaml"))

    # ------------------------------------------------------------------ parse

    def parse(self, inventory: Any, loader: Any, path: str, cache: bool = True) -> None:
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        # --extra-vars may feed templated options (a vaulted key, for instance).
        self.templar.available_variables = self._vars or {}
        try:
            self._run(path, cache)
        finally:
            self._api_key = None

    def _run(self, path: str, cache: bool) -> None:
        api_url = self._templated("api_url")
        statuses = [to_text(s) for s in self.get_option("statuses") or []]
        key, source = self._resolve_key()
        # What the cached answer depends on. The account is a one-way digest: the key itself is never stored.
        account = hashlib.sha256(f"{self.NAME}:{key}".encode()).hexdigest()[:16]
        fingerprint = {"api_url": self._base_url(api_url), "statuses": sorted(statuses), "account": account}

        instances, cached = self._get_cached_result(path, cache, fingerprint)
        if not cached:
            instances = self._fetch(fingerprint["api_url"], statuses, key, source)
        self._populate(instances)
        if not cached:
            self._update_cached_result(path, cache, fingerprint, instances)

    def _templated(self, name: str) -> str | None:
        value = self.get_option(name)
        if value is None:
            return None
        try:
            value = self.templar.template(value)
        except Exception as exc:  # the message must not carry the value
            raise AnsibleParserError(f"mlops.vast.vast: cannot render the {name} option: "
                                     f"{type(exc).__name__}") from None
        return None if value is None else to_text(value)

    def _base_url(self, api_url: str | None) -> str:
        try:
            return resolve_base_url(api_url)
        except VastError as exc:
            raise AnsibleParserError(f"mlops.vast.vast: {exc}") from None

    # ------------------------------------------------------------------ query

    def _resolve_key(self) -> tuple[str, str]:
        try:
            key, source = resolve_api_key(self._templated("api_key"))
        except VastError as exc:
            raise AnsibleParserError(f"mlops.vast.vast: {exc}") from None
        self._api_key = key
        return key, source

    def _fetch(self, base_url: str, statuses: list[str], key: str, source: str) -> list[dict[str, Any]]:
        select_filters = {"actual_status": {"in": statuses}} if statuses else {}
        deadline = Deadline(float(self.get_option("api_retry_timeout")))
        try:
            with VastClient(key, base_url, deadline=deadline,
                            request_timeout=float(self.get_option("api_timeout"))) as client:
                rows = list(client.iter_instances(select_filters))
        except VastAuthError as exc:
            raise AnsibleParserError(self._redact(
                f"mlops.vast.vast: Vast rejected the API key from {source} (HTTP {exc.status}: {exc.msg}). "
                "Check VAST_API_KEY, the api_key option or ~/.config/vastai/vast_api_key.")) from None
        except VastAPIError as exc:
            # status 0: no HTTP answer at all (connection refused, DNS, timeouts until the deadline)
            detail = str(exc) if exc.status else exc.msg
            raise AnsibleParserError(self._redact(
                f"mlops.vast.vast: listing instances at {base_url} failed: {detail}")) from None
        except VastError as exc:
            raise AnsibleParserError(self._redact(f"mlops.vast.vast: {exc}")) from None
        except Exception as exc:  # any other failure becomes one clear parser error
            raise AnsibleParserError(self._redact(
                f"mlops.vast.vast: listing instances at {base_url} failed: {type(exc).__name__}: {exc}")) from None
        return [redacted(row, (key,)) for row in rows if isinstance(row, Mapping)]

    def _redact(self, text: str) -> str:
        return redact_text(text, (self._api_key,))

    # ------------------------------------------------------------------ cache

    def _get_cached_result(self, path: str, cache: bool,
                           fingerprint: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
        # cache is False with --flush-cache and meta: refresh_inventory
        if not cache or not self.get_option("cache"):
            return [], False
        try:
            entry = self._cache[self.get_cache_key(path)]
        except KeyError:
            return [], False
        if (not isinstance(entry, Mapping) or entry.get("format") != CACHE_FORMAT
                or entry.get("source") != fingerprint or not isinstance(entry.get("instances"), list)):
            return [], False
        return [dict(row) for row in entry["instances"]], True

    def _update_cached_result(self, path: str, cache: bool, fingerprint: dict[str, Any],
                              instances: list[dict[str, Any]]) -> None:
        # Only called with freshly fetched data: an entry just read is never written back (that would
        # extend its lifetime).
        if not self.get_option("cache"):
            return
        self._cache[self.get_cache_key(path)] = {"format": CACHE_FORMAT, "source": fingerprint,
                                                 "instances": instances}

    # ------------------------------------------------------------------ hosts

    def _populate(self, instances: Iterable[dict[str, Any]]) -> None:
        prefix = self.get_option("label_prefix")
        regex = self.get_option("label_regex")
        try:
            pattern = re.compile(regex) if regex else None
        except re.error as exc:
            raise AnsibleParserError(f"mlops.vast.vast: label_regex {regex!r} is not a valid regular "
                                     f"expression: {exc}") from None
        hostvars_prefix = self.get_option("hostvars_prefix") or ""
        prefer_direct = bool(self.get_option("prefer_direct"))
        user = self.get_option("ansible_user")
        key_file = self._ssh_private_key_file()
        strict = self.get_option("strict")

        self.inventory.add_group(GROUP)
        # Each rental's host key is new, and its address and port are reused by other machines: its identity is the
        # API's word, whatever the user's ansible.cfg says of host keys (a group variable: their group_vars win).
        self.inventory.set_variable(GROUP, "ansible_host_key_checking", False)
        if key_file:
            # A group variable of `vast`, not a host variable: the user's own group_vars still win.
            self.inventory.set_variable(GROUP, "ansible_ssh_private_key_file", key_file)
        taken: dict[str, int] = {}
        for instance in sorted(instances, key=lambda row: _sort_id(row.get("id"))):
            if not label_matches(instance.get("label"), prefix, pattern):
                continue
            hostvars: dict[str, Any] = {f"{hostvars_prefix}{key}": copy.deepcopy(value)
                                        for key, value in instance.items()}
            host, port, _kind = ssh_endpoint(instance, prefer_direct)
            if host:
                hostvars["ansible_host"] = host
                hostvars["ansible_port"] = port
            if user:
                hostvars["ansible_user"] = user

            name = self._hostname(instance, hostvars, strict)
            if name is None:
                self.display.warning(f"mlops.vast.vast: instance {instance.get('id')} has no usable host name "
                                     "(see the hostnames option); skipped.")
                continue
            if name in taken:
                unique = f"{name}-{instance.get('id')}"
                self.display.warning(f"mlops.vast.vast: instances {taken[name]} and {instance.get('id')} are "
                                     f"both named {name!r}; instance {instance.get('id')} is the host {unique!r}.")
                if unique in taken:
                    raise AnsibleParserError(f"mlops.vast.vast: host name {unique!r} is taken twice; "
                                             "use hostnames that tell the instances apart.")
                name = unique
            taken[name] = instance.get("id")  # type: ignore[assignment]

            self.inventory.add_host(name, group=GROUP)
            for key, value in hostvars.items():
                self.inventory.set_variable(name, key, value)
            variables = self.inventory.get_host(name).get_vars()
            self._set_composite_vars(self.get_option("compose"), variables, name, strict=strict)
            self._add_host_to_composed_groups(self.get_option("groups"), {}, name, strict=strict)
            self._add_host_to_keyed_groups(self.get_option("keyed_groups"), {}, name, strict=strict)

    def _ssh_private_key_file(self) -> str | None:
        configured = self.get_option("ssh_private_key_file")
        if configured is not None:
            return to_text(configured) or None
        path, _source = ssh_key_in_use()
        return path if os.path.exists(path) else None

    def _hostname(self, instance: Mapping[str, Any], hostvars: dict[str, Any], strict: bool) -> str | None:
        for entry in self.get_option("hostnames") or []:
            entry = to_text(entry)
            if entry in instance:
                value: Any = instance[entry]
            else:
                try:
                    if "{{" in entry or "{%" in entry:
                        self.templar.available_variables = {**(self._vars or {}), **hostvars}
                        value = self.templar.template(entry)
                    else:
                        value = self._compose(entry, hostvars)
                except Exception as exc:
                    if strict:
                        raise AnsibleParserError(f"mlops.vast.vast: hostnames entry {entry!r} failed for "
                                                 f"instance {instance.get('id')}: {exc}") from None
                    continue
            name = "" if value is None else to_text(value).strip()
            if name:
                return name
        return None


def _sort_id(value: Any) -> tuple[int, str]:
    try:
        return int(value), ""
    except (TypeError, ValueError):
        return 0, json.dumps(value, default=str)
