"""mlops.vast: rent Vast.ai GPUs and run ML training on them; ships the vastsim simulator.

The Python API (built on ansible-runner; imported on first use, so ``vastsim`` starts without it)::

    import mlops_vast
    result = mlops_vast.train("my-run.yml", on_event=print)
    rows = mlops_vast.sweep("my-sweep.yml").trials

See docs/api.md.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = {"train", "sweep", "unsafe", "RunResult", "SweepResult", "TrialRow"}
_EVENTS = {"Event", "PhaseChanged", "Progress", "Spend", "Warning", "TrialStateChanged", "Finished", "Snapshot"}
__all__ = sorted(_API | _EVENTS | {"InputError", "__version__"})


def __getattr__(name: str) -> Any:
    if name in _API:
        from mlops_vast import api

        return getattr(api, name)
    if name in _EVENTS:
        from mlops_vast import events

        return getattr(events, name)
    if name == "InputError":
        from mlops_vast.inputs import InputError

        return InputError
    raise AttributeError(f"module 'mlops_vast' has no attribute {name!r}")
