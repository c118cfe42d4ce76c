# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The base of every mlops.vast module that talks to the Vast API, as ``hetzner.hcloud``'s
``AnsibleHCloud`` and ``amazon.aws``'s ``AnsibleAWSModule`` are for theirs.

A module is a subclass that declares its own options and rules, and implements ``run()``, filling
``self.result``. The base merges the auth options (``api_key``, ``api_url``, ``api_timeout``, the
``mlops.vast.vast`` doc fragment) into the argument spec, builds the module, owns the client and
the one deadline of the run, and turns every error into one failure shape: the message, Vast's
status and words, and what to do (``errors.error_details``). ``main()`` is then one line.

Private to the collection.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ansible.module_utils.basic import AnsibleModule

from .api_client import VastClient
from .errors import VastError, error_details
from .vast_query import QueryError
from .waiting import Deadline


def auth_argument_spec() -> dict[str, Any]:
    """The options every API-side module and action takes (documented by the ``mlops.vast.vast`` fragment)."""
    return {
        "api_key": {"type": "str", "no_log": True},
        "api_url": {"type": "str"},
        "api_timeout": {"type": "float", "default": 30.0},
    }


MAX_LABEL_CHARS = 256


class VastModule:
    """One module run against the Vast API: options, client, deadline, result, diff, failure."""

    # The module's own options and AnsibleModule rules (mutually_exclusive, required_one_of, ...).
    argument_spec: ClassVar[dict[str, Any]] = {}
    module_rules: ClassVar[dict[str, Any]] = {}
    supports_check_mode: ClassVar[bool] = True
    # False for read-only calls the API answers without a key (the offer search).
    requires_api_key: ClassVar[bool] = True

    def __init__(self, module: AnsibleModule) -> None:
        self.module = module
        self.params: dict[str, Any] = module.params
        self.result: dict[str, Any] = {"changed": False}
        self.deadline = Deadline(self.deadline_seconds())
        self._client: VastClient | None = None

    # ------------------------------------------------------------------ definition

    @classmethod
    def define_module(cls) -> AnsibleModule:
        return AnsibleModule(argument_spec={**auth_argument_spec(), **cls.argument_spec},
                             supports_check_mode=cls.supports_check_mode, **cls.module_rules)

    @classmethod
    def execute(cls) -> None:
        """The whole of a module's ``main()``: build, check the options, run, exit or fail."""
        module = cls.define_module()
        runner = cls(module)
        try:
            runner.check_common_params()
            runner.check_params()
            runner.run()
        except QueryError as exc:
            runner.fail(f"Invalid query: {exc}")
        except VastError as exc:
            runner.fail_on(exc)
        finally:
            runner.close()
        module.exit_json(**runner.result)

    # ------------------------------------------------------------------ hooks

    def deadline_seconds(self) -> float:
        """The budget of the whole run, every request and wait included."""
        return max(float(self.params["api_timeout"]) * 4, 60.0)

    def check_common_params(self) -> None:
        """The shared options' ranges, before any request: a zero timeout would fail every request, and a label
        is sent in a URL's query (a huge one fails deep inside the HTTP client, naming nothing)."""
        if self.params["api_timeout"] <= 0:
            self.fail(f"api_timeout must be more than 0 seconds, got {self.params['api_timeout']:g}")
        label = self.params.get("label")
        if isinstance(label, str) and len(label) > MAX_LABEL_CHARS:
            self.fail(f"label must be at most {MAX_LABEL_CHARS} characters, got {len(label)}: use a short name "
                      "(it is the instance's identity on the account)")

    def check_params(self) -> None:
        """Fail (``self.fail``) on options that are wrong together or out of range, before any request."""

    def run(self) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ client

    @property
    def client(self) -> VastClient:
        if self._client is None:
            self._client = VastClient.from_options(self.params, self.deadline, need_key=self.requires_api_key)
            if self.params.get("state") == "absent":
                # Destroying is what stops the billing: an API that is down is waited for to the deadline (a wrong
                # URL has failed an earlier step of the run long before), never given up on after 20 s.
                self._client.first_contact_s = None
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # ------------------------------------------------------------------ result

    def warn(self, warning: str | None) -> None:
        """Pass a warning on to Ansible's output (None: nothing to say)."""
        if warning:
            self.module.warn(warning)

    def changed(self) -> None:
        self.result["changed"] = True

    def set_diff(self, before: Any, after: Any) -> None:
        self.result["diff"] = {"before": before, "after": after}

    def fail(self, msg: str, **extra: Any) -> None:
        self.close()
        self.module.fail_json(msg=msg, **{**{k: v for k, v in self.result.items() if k != "changed"}, **extra})

    def fail_on(self, exc: VastError, **extra: Any) -> None:
        """Fail with ``exc``'s message, Vast's status and words, and what to do."""
        details = error_details(exc)
        self.fail(details.pop("msg"), **{**details, **extra})
