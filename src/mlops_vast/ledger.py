"""The controller's local contract ledger as the package reads it (plugins/module_utils/local_state.py writes it):
where it is, and which contracts it still holds open."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def ledger_path(env: Mapping[str, str]) -> Path:
    """MLOPS_VAST_LEDGER, else contracts.jsonl in the XDG state directory (as the collection finds it)."""
    base = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(env.get("MLOPS_VAST_LEDGER") or os.path.join(base, "mlops-vast", "contracts.jsonl")).expanduser()


def open_contracts(path: Path, api_url: str | None = None) -> list[dict[str, Any]]:
    """The ledger's contracts created and not yet destroyed (those of ``api_url`` when given)."""
    live: dict[int, dict[str, Any]] = {}
    with contextlib.suppress(OSError):
        for line in path.read_bytes().splitlines():
            # A damaged line (not UTF-8, not an object) is skipped; the others still say what is open.
            with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
                record = json.loads(line)
                if not isinstance(record, dict):
                    continue
                if api_url and record.get("api_url") and record["api_url"].rstrip("/") != api_url.rstrip("/"):
                    continue
                if record.get("event") == "created":
                    live[int(record["id"])] = record
                elif record.get("event") == "destroyed":
                    live.pop(int(record["id"]), None)
    return list(live.values())
