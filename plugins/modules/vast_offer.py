#!/usr/bin/python
# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: vast_offer
short_description: Search Vast.ai GPU offers with the official query language
description:
  - Searches the Vast.ai marketplace the way C(vastai search offers) does, with the same query
    language, default filters, ordering and storage pricing, so a query copied from the CLI or from
    a checklist works unchanged.
  - Extends the language with C(field ~ regex) (e.g. C(gpu_name ~ A100|RTX_4090|H100)), resolved
    against the marketplace's GPU names.
  - Read-only; safe in check mode.
version_added: 0.1.0
author:
  - mlops.vast developers (@mlops-vast)
extends_documentation_fragment:
  - mlops.vast.vast
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  platform:
    platforms: all
options:
  query:
    description:
      - The search query, e.g. C(reliability > 0.95 cuda_vers >= 12.4 gpu_ram >= 24 num_gpus=1).
      - Numbers of GB (C(gpu_ram), C(cpu_ram)) are GB as in the CLI; C(_) stands for a space.
      - A query that does not parse fails before any request, naming the bad token.
      - No offers is a result (RV(count) 0), except when a C(gpu_name) in the query is no GPU on the
        market; then it fails, listing the names there are (a misspelt model is the usual cause).
    type: str
    default: ""
  order:
    description:
      - Sort order as in the CLI's C(-o), e.g. C(dph+) (cheapest first) or C(score-,dph+).
    type: str
    default: score-
  type:
    description:
      - C(on-demand) or C(bid) (interruptible; prices use the current minimum bid).
    type: str
    choices: [on-demand, bid, reserved]
    default: on-demand
  limit:
    description:
      - How many offers to return, after O(exclude_machines) and O(max_dph) are applied.
    type: int
    default: 10
  storage:
    description:
      - GB of disk to price into C(dph_total) (the CLI's C(--storage)).
    type: float
    default: 5.0
  default_filters:
    description:
      - Apply the CLI's default filters (verified, rentable, not external). C(false) is the CLI's C(-n).
    type: bool
    default: true
  exclude_machines:
    description:
      - Machine ids never to return, e.g. hosts that failed a probe before.
    type: list
    elements: int
    default: []
  max_dph:
    description:
      - Drop offers whose total $/h (GPU plus storage) is above this.
    type: float
notes:
  - Vast reports VRAM in MB; a 24 GB card shows C(gpu_ram=24564), so query C(gpu_ram >= 24), not C(gpu_ram = 24).
seealso:
  - module: mlops.vast.vast_instance
"""

EXAMPLES = r"""
- name: Cheapest reliable single GPU with at least 24 GB and CUDA 12.4
  mlops.vast.vast_offer:
    query: reliability > 0.95 cuda_vers >= 12.4 gpu_ram >= 24 num_gpus=1
    order: dph+
    limit: 5
  register: found

- name: The checklist's regex form, excluding machines that failed before
  mlops.vast.vast_offer:
    query: reliability > 0.95 cuda_vers >= 12.4 gpu_name ~ A100|RTX_4090|H100 num_gpus=1
    order: dph+
    exclude_machines: "{{ bad_machines | default([]) }}"
    max_dph: 1.5
    storage: 50
  register: found

- name: Rent the best one
  mlops.vast.vast_instance:
    label: my-run
    offer_id: "{{ found.best.id }}"
    image: pytorch/pytorch:latest
    disk: 50
  when: found.best is not none
"""

RETURN = r"""
offers:
  description: Matching offers in order, as Vast returns them plus GB and per-GPU fields.
  returned: always
  type: list
  elements: dict
  sample:
    - id: 21469085
      machine_id: 64691
      gpu_name: RTX 4090
      num_gpus: 1
      gpu_ram: 24564
      gpu_ram_gb: 24.0
      dph_total: 0.3169
      dph_total_per_gpu: 0.3169
      reliability: 0.991
      cuda_max_good: 12.4
best:
  description: The first offer, or null when nothing matched.
  returned: always
  type: dict
count:
  description: Number of offers returned.
  returned: always
  type: int
search:
  description: The search body sent to C(POST /api/v0/bundles/) (filters, order, type, storage).
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ..module_utils.vast_api import Deadline, VastError
from ..module_utils.vast_common import client_for, error_result, normalise_offer, vast_argument_spec
from ..module_utils.vast_query import QueryError, build_search_body, no_offer_reason, parse_query

# Ask the server for more than `limit` so client-side exclusions still leave enough rows.
OVERFETCH = 64


def search(client, params: dict) -> tuple[list[dict], dict]:
    parsed = parse_query(params["query"] or "", defaults=params["default_filters"])
    gpu_names = client.gpu_names() if parsed.regex.get("gpu_name") else None
    body = build_search_body(
        params["query"] or "", order=params["order"], offer_type=params["type"],
        limit=max(params["limit"], 0) + len(params["exclude_machines"]) + OVERFETCH,
        storage_gb=params["storage"], defaults=params["default_filters"], gpu_names=gpu_names,
    )
    excluded = set(params["exclude_machines"])
    offers = []
    for offer in client.search_offers(body):
        if offer.get("machine_id") in excluded or not parsed.row_matches(offer):
            continue
        if params["max_dph"] is not None and float(offer.get("dph_total") or 0) > params["max_dph"]:
            continue
        offers.append(normalise_offer(offer))
        if len(offers) >= params["limit"]:
            break
    return offers, body


def main() -> None:
    argument_spec = vast_argument_spec()
    argument_spec.update(
        query={"type": "str", "default": ""},
        order={"type": "str", "default": "score-"},
        type={"type": "str", "choices": ["on-demand", "bid", "reserved"], "default": "on-demand"},
        limit={"type": "int", "default": 10},
        storage={"type": "float", "default": 5.0},
        default_filters={"type": "bool", "default": True},
        exclude_machines={"type": "list", "elements": "int", "default": []},
        max_dph={"type": "float"},
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    params = module.params
    if params["limit"] < 1:
        module.fail_json(msg=f"limit must be at least 1, got {params['limit']}")
    if params["storage"] < 0:
        module.fail_json(msg=f"storage must be a positive number of GB, got {params['storage']:g}")
    try:
        # Parse first: a bad query must fail before any request, and without needing a key.
        parsed = parse_query(params["query"] or "", defaults=params["default_filters"])
        deadline = Deadline(max(params["api_timeout"] * 4, 60))
        with client_for(params, deadline, need_key=False) as client:
            offers, body = search(client, params)
            # An empty answer is a fine answer, unless it is empty because a GPU name is misspelt.
            names = client.gpu_names() if not offers and parsed.filters.get("gpu_name") else []
            if names and parsed.unknown_gpu_names(names):
                module.fail_json(msg=no_offer_reason(parsed, names), search=body)
    except QueryError as exc:
        module.fail_json(msg=f"Invalid query: {exc}")
    except VastError as exc:
        module.fail_json(**error_result(exc))
    module.exit_json(changed=False, offers=offers, best=offers[0] if offers else None, count=len(offers),
                     search=body)


if __name__ == "__main__":
    main()
