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
extends_documentation_fragment:
  - mlops.vast.attributes.in_process
  - mlops.vast.vast
  - mlops.vast.attributes
  - mlops.vast.attributes.api
  - mlops.vast.attributes.read_only
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
      - Drop offers whose total $/h (GPU plus storage) is above this. For O(type=bid) the price is the
        current minimum bid, as listed.
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
reason:
  description: Why no offer is returned (nothing matches the query, every match is on an excluded machine,
    or the cheapest costs more than O(max_dph)), in words that say what to change.
  returned: when RV(count) is 0
  type: str
  sample: "12 offer(s) match 'gpu_ram >= 24': the cheapest allowed costs $0.3169/h, over max_dph $0.2/h;
    raise max_dph or loosen the query"
"""

from typing import Any, ClassVar

from ..module_utils.offer_selection import OfferRequest, select_offers
from ..module_utils.vast_module import VastModule


class VastOffer(VastModule):
    argument_spec: ClassVar[dict[str, Any]] = {
        "query": {"type": "str", "default": ""},
        "order": {"type": "str", "default": "score-"},
        "type": {"type": "str", "choices": ["on-demand", "bid", "reserved"], "default": "on-demand"},
        "limit": {"type": "int", "default": 10},
        "storage": {"type": "float", "default": 5.0},
        "default_filters": {"type": "bool", "default": True},
        "exclude_machines": {"type": "list", "elements": "int", "default": []},
        "max_dph": {"type": "float"},
    }
    requires_api_key = False  # the marketplace answers searches without a key

    def check_params(self) -> None:
        if self.params["limit"] < 1:
            self.fail(f"limit must be at least 1, got {self.params['limit']}")
        if self.params["max_dph"] is not None and self.params["max_dph"] <= 0:
            self.fail(f"max_dph must be more than 0 $/h, got {self.params['max_dph']:g}")
        if self.params["storage"] < 0:
            self.fail(f"storage must be a positive number of GB, got {self.params['storage']:g}")
        self.request().parsed()  # a bad query fails here, before any request and without a key

    def request(self) -> OfferRequest:
        p = self.params
        return OfferRequest(query=p["query"] or "", order=p["order"], offer_type=p["type"], storage_gb=p["storage"],
                            max_dph=p["max_dph"], exclude_machines=p["exclude_machines"], limit=p["limit"],
                            default_filters=p["default_filters"])

    def run(self) -> None:
        selection = select_offers(self.client, self.request())
        # An empty answer is a fine answer, unless it is empty because a GPU name is misspelt.
        if selection.unknown_gpu_name:
            self.fail(selection.reason or "no offer", search=selection.body)
        self.result.update(offers=selection.offers, best=selection.offers[0] if selection.offers else None,
                           count=len(selection.offers), search=selection.body)
        if selection.reason:
            self.result["reason"] = selection.reason


def main() -> None:
    VastOffer.execute()


if __name__ == "__main__":
    main()
