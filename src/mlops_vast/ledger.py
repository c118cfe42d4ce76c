"""The controller's local contract ledger as the package reads it: the collection's own reader
(plugins/module_utils/local_state.py, which also writes it), loaded from the checkout."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlops_vast.inputs import InputError, collection_module, collection_root


def _local_state() -> Any:
    return collection_module(collection_root(), "local_state")


def ledger_path(env: Mapping[str, str]) -> Path:
    """MLOPS_VAST_LEDGER, else contracts.jsonl in the XDG state directory (as the collection finds it)."""
    return Path(_local_state().default_ledger_path(env)).expanduser()


def open_contracts(path: Path, api_url: str | None = None) -> list[dict[str, Any]]:
    """The ledger's contracts created and not yet destroyed (those of ``api_url`` when given), oldest first; none
    when there is no ledger yet. A ledger that cannot be read is an :class:`InputError`: it may hold what bills."""
    try:
        return _local_state().ContractLedger(str(path)).open_contracts(api_url)
    except OSError as exc:
        raise InputError(f"cannot read the contract ledger {path}: {exc.strerror or exc} (MLOPS_VAST_LEDGER names "
                         "it; unset, it is contracts.jsonl under $XDG_STATE_HOME/mlops-vast)") from None
