# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Options shared by every mlops.vast module and plugin that talks to the Vast API."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  api_key:
    description:
      - Vast.ai API key.
      - When not set, the key is read from the E(VAST_API_KEY) environment variable, then from the file that
        E(VAST_API_KEY_FILE) names (how the C(mlops_vast) Python API passes it, so that it is in no environment
        or ansible-runner artifact), then from the official CLI's key files C(~/.config/vastai/vast_api_key)
        and C(~/.vast_api_key).
      - Never logged, never copied to a rented host.
    type: str
  api_url:
    description:
      - Base URL of the Vast API, without C(/api/v0).
      - When not set, E(VAST_URL) is used, then C(https://console.vast.ai). Point it at
        C(vastsim serve) to work against the local simulator.
    type: str
  api_timeout:
    description:
      - Seconds one request may take before it is retried (within the run's overall deadline).
    type: float
    default: 30
requirements:
  - httpx (on the controller)
"""
