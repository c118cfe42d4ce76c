# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Keeps an instance's lease fresh while a controller watches it (module_utils/local_state.py ``Leases``).

A thread, not the watch's loop, renews it: a poll blocked on a slow host or a reconnect must not make a live
run look orphaned. It renews only while the controller lives: the watch runs in a worker process that Ansible
puts in a session of its own, so a controller killed with SIGKILL (even its whole process group) leaves the
worker polling on; its parent gone, it stops renewing, and the instance is an orphan a grace later
(mlops.vast.vast_reap).

Private to the collection.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from ansible_collections.mlops.vast.plugins.module_utils.local_state import LONG_LEASE_S, ContractLedger

# Renewal period bounds, in seconds: often enough for a short grace, rarely enough to cost nothing.
MIN_EVERY_S = 2.0
MAX_EVERY_S = 60.0


class LeaseKeeper:
    """``with LeaseKeeper(id, api_url, every_s):`` renews every ``every_s`` seconds; leaving hands the lease
    over with a long promise, for what follows a watch (the final pull, teardown, recovery)."""

    def __init__(self, instance_id: int, api_url: str, every_s: float, *, ledger: ContractLedger | None = None) -> None:
        self.instance_id = int(instance_id)
        self.api_url = api_url
        self.every_s = min(MAX_EVERY_S, max(MIN_EVERY_S, float(every_s)))
        self.ledger = ledger or ContractLedger()
        self.renewals = 0
        self.owned = False
        # The worker's parent is the controller (ansible-playbook's main process); a new parent means it died.
        self.controller_pid = os.getppid()
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mlops-vast-lease", daemon=True)

    def _renew(self, interval_s: float) -> None:
        if not self.owned or os.getppid() != self.controller_pid:
            return
        try:
            self.ledger.leases.renew(self.instance_id, api_url=self.api_url, interval_s=interval_s)
        except OSError as exc:  # a full disk must not end the watch; the reaper then waits the long grace
            self.error = str(exc)
        else:
            self.renewals += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self._renew(self.every_s)

    def __enter__(self) -> LeaseKeeper:
        try:
            # Only a contract of this ledger has a lease here (one rented elsewhere is not ours to keep).
            self.owned = any(c["id"] == self.instance_id for c in self.ledger.open_contracts(self.api_url))
        except OSError as exc:
            self.error = str(exc)
        if self.owned:
            self._renew(self.every_s)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self.owned:
            return
        self._stop.set()
        self._thread.join(timeout=5.0)
        self._renew(LONG_LEASE_S)
