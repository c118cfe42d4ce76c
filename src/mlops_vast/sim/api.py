"""The Vast REST API (``/api/v0``, ``/api/v1``) plus the simulator's ``/_sim`` endpoints, on Starlette."""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from mlops_vast.sim import charges as billing_charges
from mlops_vast.sim import query as q
from mlops_vast.sim.errors import VastError
from mlops_vast.sim.faults import FaultError
from mlops_vast.sim.internet import parse_forward
from mlops_vast.sim.market import Market
from mlops_vast.sim.models import Account, Instance

Handler = Callable[[Request], Awaitable[Response]]

V1_FILTER_COLUMNS = frozenset({
    "id", "actual_status", "intended_status", "cur_state", "next_state", "label", "gpu_name",
    "verification", "machine_id", "host_id", "image_uuid", "status_msg", "is_bid", "start_date",
    "geolocation", "template_hash_id", "image_runtype",
})
V1_MAX_LIMIT = 25


class JSON(Response):
    # Vast answers exactly `application/json`; the official CLI drops search results otherwise.
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return json.dumps(content).encode()

    def init_headers(self, headers: Any = None) -> None:
        super().init_headers(headers)
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-type"]
        self.raw_headers.append((b"content-type", b"application/json"))


def error(exc: VastError) -> JSON:
    return JSON(exc.body(), status_code=exc.status)


async def read_json(request: Request, *, required: bool = False) -> Any:
    raw = await request.body()
    if not raw.strip():
        if required:
            raise VastError(400, "invalid_request", "Invalid json body")
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        raise VastError(400, "invalid_request", "Invalid json body") from None


def api_key_of(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.query_params.get("api_key")


def json_param(request: Request, name: str, default: Any) -> Any:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return json.loads(raw)
    except ValueError:
        raise VastError(400, "invalid_request", f"Error in query parameters: {name} is not valid JSON") from None


def int_path(request: Request, name: str) -> int:
    try:
        return int(request.path_params[name])
    except (KeyError, ValueError):
        raise VastError(400, "invalid_args", f"invalid {name}") from None


class Api:
    def __init__(self, market: Market) -> None:
        self.market = market
        self.snapshots = Snapshots()

    # ------------------------------------------------------------ plumbing

    def account(self, request: Request) -> Account:
        return self.market.authenticate(api_key_of(request))

    def optional_account(self, request: Request) -> Account | None:
        key = api_key_of(request)
        return self.market.authenticate(key) if key else None

    def wrap(self, handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            fault = self.market.state.faults.take_http(request.method, request.url.path)
            if fault is not None:
                self.market.touch()
                if not fault.after:
                    return fault_response(fault.status or 500, fault.body, fault.retry_after)
            try:
                response = await handler(request)
            except VastError as exc:
                response = error(exc)
            if fault is not None:
                # The request took effect, but the client hears an error (a lost or failed answer).
                return fault_response(fault.status or 500, fault.body, fault.retry_after)
            return response

        return endpoint

    # ------------------------------------------------------------ offers

    async def search_bundles(self, request: Request) -> Response:
        if request.method == "GET":
            body = json_param(request, "q", {})
        else:
            body = await read_json(request, required=True)
            if request.url.path.rstrip("/").endswith("search/asks"):
                body = body.get("q", {}) if isinstance(body, dict) else body
        offers = self.market.search_offers(self.optional_account(request), body)
        return JSON({"offers": offers})

    async def gpu_names(self, request: Request) -> Response:
        return JSON({"gpu_names": self.market.catalog.gpu_names()})

    # ------------------------------------------------------------ renting

    async def create(self, request: Request) -> Response:
        account = self.account(request)
        body = await read_json(request, required=True)
        instance, started = self.market.create_instance(account, int_path(request, "offer_id"), body)
        return JSON({"success": started, "new_contract": instance.id,
                     "instance_api_key": instance.instance_api_key})

    async def create_bulk(self, request: Request) -> Response:
        account = self.account(request)
        body = await read_json(request, required=True)
        ids = body.get("ids") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not ids or len(ids) > 64:
            raise VastError(400, "invalid_args", "ids must be a list of 1 to 64 offer ids")
        started_at = time.time()
        results, created, failed = [], [], []
        for ask_id in ids:
            try:
                instance, started = self.market.create_instance(account, int(ask_id), body)
            except (VastError, ValueError, TypeError) as exc:
                msg = exc.msg if isinstance(exc, VastError) else str(exc)
                results.append({"ask_id": ask_id, "success": False, "error": msg})
                failed.append(ask_id)
                continue
            results.append({"ask_id": ask_id, "success": started, "new_contract": instance.id,
                            "state": "running" if started else "stopped"})
            created.append(instance.id)
        return JSON({"success": not failed, "results": results, "created": created, "failed": failed,
                     "elapsed": round(time.time() - started_at, 4)})

    # ------------------------------------------------------------ listing

    async def list_v1(self, request: Request) -> Response:
        account = self.account(request)
        filters = json_param(request, "select_filters", {})
        order_by = json_param(request, "order_by", [{"col": "id", "dir": "asc"}])
        select_cols = json_param(request, "select_cols", ["*"])
        limit = json_param(request, "limit", 25)
        if not isinstance(filters, dict):
            raise VastError(400, "invalid_request", "Error in query parameters: select_filters must be an object")
        try:
            limit = int(limit)
        except (TypeError, ValueError):
            raise VastError(400, "invalid_request", "Error in query parameters: limit must be an integer") from None
        limit = 5 if limit <= 0 else min(limit, V1_MAX_LIMIT)
        if not isinstance(order_by, list) or not all(isinstance(o, dict) and "col" in o for o in order_by):
            raise VastError(400, "invalid_request", "Error in query parameters: order_by must be a list of {col, dir}")
        for field in [*filters, *(o["col"] for o in order_by)]:
            if field not in V1_FILTER_COLUMNS:
                raise VastError(400, "invalid_request",
                                f"Error in query parameters: {field} is not a valid search key")
        rows = [instance_row(self.market, i) for i in self.market.mine(account)]
        try:
            predicate = q.build_predicate(filters, V1_FILTER_COLUMNS)
            matching = [row for row in rows if predicate(row)]
        except q.QueryError as exc:
            raise VastError(400, "invalid_request", str(exc)) from None
        order = [(o["col"], str(o.get("dir", "asc")).lower() == "desc") for o in order_by]
        matching = q.sort_rows(matching, order)
        token = request.query_params.get("after_token")
        if token:
            # Later pages follow the order fixed by the first one, so rows destroyed or created
            # meanwhile cannot shift others off a page (offsets alone would skip rows).
            snapshot_id, offset = decode_token(token)
            ids = self.snapshots.get(snapshot_id)
            if ids is None:
                raise VastError(400, "invalid_token", "Invalid or expired after_token.")
            by_id = {row["id"]: row for row in matching}
            window = ids[offset:offset + limit]
            page = [by_id[i] for i in window if i in by_id]
            more = offset + limit < len(ids)
        else:
            snapshot_id, offset = None, 0
            page = matching[:limit]
            more = limit < len(matching)
            if more:
                snapshot_id = self.snapshots.put([row["id"] for row in matching])
        label_counts: dict[str, int] = {}
        for row in rows:
            label_counts[row["label"] or ""] = label_counts.get(row["label"] or "", 0) + 1
        if select_cols != ["*"] and isinstance(select_cols, list):
            page = [{col: row.get(col) for col in select_cols} | {"id": row["id"]} for row in page]
        return JSON({
            "success": True,
            "instances_found": len(page),
            "total_instances": len(matching),
            "label_counts": label_counts,
            "next_token": encode_token(snapshot_id, offset + limit) if more and snapshot_id else None,
            "instances": page,
        })

    async def list_legacy(self, request: Request) -> Response:
        account = self.account(request)
        rows = [instance_row(self.market, i) for i in self.market.mine(account)]
        return JSON({"instances_found": len(rows), "instances": rows})

    async def filters(self, request: Request) -> Response:
        account = self.account(request)
        rows = [instance_row(self.market, i) for i in self.market.mine(account)]
        # One entry per distinct combination (§4.1); the CLI collects each column's values from them.
        columns = ("actual_status", "verification", "gpu_name")
        combos = sorted({tuple(row.get(c) for c in columns) for row in rows},
                        key=lambda combo: [str(v) for v in combo])
        return JSON({"filters": [dict(zip(columns, combo, strict=True)) for combo in combos]})

    # ------------------------------------------------------------ one instance

    async def instance(self, request: Request) -> Response:
        account = self.account(request)
        instance_id = int_path(request, "instance_id")
        if request.method == "GET":
            found = self.market.state.instances.get(instance_id)
            row = instance_row(self.market, found) if found and found.user_id == account.id else None
            return JSON({"instances": row})
        if request.method == "DELETE":
            self.market.destroy(account, instance_id)
            return JSON({"success": True, "msg": f"Instance {instance_id} destroyed."})
        body = await read_json(request)
        if not isinstance(body, dict):
            raise VastError(400, "invalid_args", "Invalid json body")
        return JSON(self.market.set_state(account, instance_id, body))

    async def instances_bulk(self, request: Request) -> Response:
        account = self.account(request)
        body = await read_json(request, required=True)
        if not isinstance(body, dict):
            raise VastError(400, "invalid_args", "Invalid json body")
        key = "instance_ids" if request.method == "DELETE" else "ids"
        ids = body.get(key)
        if not isinstance(ids, list) or not ids:
            raise VastError(400, "invalid_args", f"{key} must be a non-empty list of instance ids")
        done, failed = [], []
        for raw in ids:
            try:
                instance_id = int(raw)
                if request.method == "DELETE":
                    self.market.destroy(account, instance_id)
                else:
                    self.market.set_state(account, instance_id, {k: v for k, v in body.items() if k != "ids"})
                done.append(instance_id)
            except (VastError, ValueError, TypeError):
                failed.append(raw)
        return JSON({"success": not failed, "msg": f"{len(done)} updated, {len(failed)} failed",
                     "updated": done, "failed": failed})

    async def action(self, request: Request) -> Response:
        account = self.account(request)
        action = request.path_params["action"]
        instance_id = int_path(request, "instance_id")
        body = await read_json(request)
        body = body if isinstance(body, dict) else {}
        market = self.market
        if action == "reboot":
            return JSON(market.reboot(account, instance_id))
        if action == "recycle":
            return JSON(market.recycle(account, instance_id))
        if action == "bid_price":
            return JSON(market.change_bid(account, instance_id, body))
        if action == "request_logs":
            token = market.request_logs(account, instance_id, body)
            return JSON({"success": True, "result_url": f"{base_url(request)}/_sim/results/{token}",
                         "msg": "Logs will be uploaded shortly."})
        instance = market.own_instance(account, instance_id)
        if action == "prepay":
            return JSON({"success": True, "timescale": 1.0, "discount_rate": 0.0})
        if action == "update_template":
            if body.get("image"):
                instance.image = str(body["image"])
                market.touch()
            return JSON({"success": True, "updated_instance": instance_row(market, instance),
                         "msg": "Instance updated."})
        if action == "command":
            token, writeable_path = market.execute(account, instance_id, body)
            return JSON({"success": True, "result_url": f"{base_url(request)}/_sim/results/{token}",
                         "writeable_path": writeable_path, "msg": "Command queued."})
        raise VastError(404, "not_found", f"Unknown instance action {action}")

    async def results(self, request: Request) -> Response:
        # Vast serves these from object storage: unauthenticated, 404 until uploaded.
        text = self.market.result_text(request.path_params["token"])
        if text is None:
            return PlainTextResponse("<Error><Code>NoSuchKey</Code></Error>", status_code=404)
        return PlainTextResponse(text)

    # ------------------------------------------------------------ ssh keys

    async def ssh_keys(self, request: Request) -> Response:
        account = self.account(request)
        if request.method == "GET":
            return JSON([k.public() for k in self.market.state.ssh_keys.values()
                         if k.user_id == account.id and k.instance_id is None])
        body = await read_json(request, required=True)
        key = self.market.add_account_key(account, body.get("ssh_key") if isinstance(body, dict) else None)
        return JSON({"success": True, "key": key.public(), **key.public()})

    async def ssh_key(self, request: Request) -> Response:
        account = self.account(request)
        key_id = int_path(request, "key_id")
        if request.method == "DELETE":
            self.market.delete_account_key(account, key_id)
            return JSON({"success": True, "msg": f"SSH key {key_id} deleted."})
        body = await read_json(request, required=True)
        key = self.market.update_account_key(account, key_id, body.get("ssh_key") if isinstance(body, dict) else None)
        return JSON({"success": True, "key": key.public()})

    async def instance_ssh(self, request: Request) -> Response:
        account = self.account(request)
        instance_id = int_path(request, "instance_id")
        if request.method == "GET":
            self.market.own_instance(account, instance_id)
            return JSON([k.public() for k in self.market.state.ssh_keys.values() if k.instance_id == instance_id])
        body = await read_json(request, required=True)
        key = body.get("ssh_key") if isinstance(body, dict) else None
        return JSON(self.market.attach_instance_key(account, instance_id, key))

    async def instance_ssh_key(self, request: Request) -> Response:
        account = self.account(request)
        return JSON(self.market.detach_instance_key(
            account, int_path(request, "instance_id"), int_path(request, "key_id")))

    # ------------------------------------------------------------ account, misc

    async def current_user(self, request: Request) -> Response:
        return JSON(self.account(request).public())

    # ------------------------------------------------------------ copy (§1.1, §7)

    def copy_side(self, account: Account, raw: Any) -> Instance | str | None:
        """One side of a copy: None for local, the caller's instance for 123 / "123" / "C.123" (404 when
        it is not theirs), else the id as text (a volume "V.55", a cloud service "s3.101", "drive")."""
        if raw is None or raw == "local":
            return None
        text = str(raw)
        digits = text[2:] if text.startswith("C.") else text
        if isinstance(raw, bool) or not digits.isdigit():
            if text.startswith("C."):
                raise VastError(400, "invalid_args", f"Invalid instance id {text!r}.")
            return text
        return self.market.own_instance(account, int(digits))

    async def copy(self, request: Request) -> Response:
        """``PUT commands/copy_direct/`` and ``commands/rsync/``.

        With a local side the CLI runs ``rsync -e "ssh -p PORT" vastai_kaalia@ADDR::<id>/<path>`` itself, so
        the answer carries ``src_addr``/``src_port`` (download) or ``dst_addr``/``dst_port`` (upload): the
        instance's direct SSH endpoint when it has ``ports["22/tcp"]``, else its SSH proxy (as ``ssh-url``).
        Copies between two remote sides are acknowledged only.
        """
        account = self.account(request)
        body = await read_json(request, required=True)
        if not isinstance(body, dict):
            raise VastError(400, "invalid_args", "Invalid json body")
        src = self.copy_side(account, body.get("src_id"))
        dst = self.copy_side(account, body.get("dst_id"))
        if src is None and dst is None:
            raise VastError(400, "invalid_args", "Nothing to copy: both sides are local.")
        if src is not None and dst is not None:
            return JSON({"success": True,
                         "msg": "Remote copy initiated (vastsim does not move data between remote sides)."})
        side, remote = ("src", src) if src is not None else ("dst", dst)
        if not isinstance(remote, Instance):
            raise VastError(400, "invalid_args", "Copy to or from local is only supported with an instance.")
        if remote.phase != "running":
            raise VastError(400, "invalid_args",
                            f"Instance {remote.id} is not running: start it before copying to or from it.")
        row = instance_row(self.market, remote)
        if "22/tcp" in row["ports"]:
            addr, port = row["public_ipaddr"].strip(), int(row["ports"]["22/tcp"][0]["HostPort"])
        else:
            # Vast's proxy serves SSH one port above ssh_port for jupyter runtypes (§4.3).
            addr, port = row["ssh_host"], int(row["ssh_port"] or 0) + (1 if "jupyter" in remote.runtype else 0)
        return JSON({"success": True, "msg": "Copy ready: rsync over ssh.", f"{side}_addr": addr, f"{side}_port": port})

    async def cancel_copy(self, request: Request) -> Response:
        """``DELETE commands/copy_direct/`` and ``commands/rclone/`` with ``{"dst_id": ...}``."""
        account = self.account(request)
        body = await read_json(request)
        self.copy_side(account, body.get("dst_id") if isinstance(body, dict) else None)
        return JSON({"success": True, "msg": "Remote copy canceled."})

    async def cloud_copy(self, request: Request) -> Response:
        """``POST commands/rclone/``: acknowledged for the caller's instance (vastsim has no cloud storage)."""
        account = self.account(request)
        body = await read_json(request, required=True)
        if not isinstance(body, dict):
            raise VastError(400, "invalid_args", "Invalid json body")
        self.copy_side(account, body.get("instance_id"))
        return JSON({"success": True, "msg": "Cloud copy initiated (vastsim does not move data to clouds)."})

    # ------------------------------------------------------------ /_sim

    async def charges(self, request: Request) -> Response:
        account = self.account(request)
        live = [i.ledger_row() for i in self.market.mine(account)]
        done = [row for row in self.market.state.ledger if row.get("user_id") == account.id]
        return JSON(billing_charges.charges(
            live + done, json_param(request, "select_filters", {}), json_param(request, "limit", 20),
            request.query_params.get("latest_first", "false"), request.query_params.get("after_token")))

    async def sim_ledger(self, request: Request) -> Response:
        account = self.account(request)
        live = [i.ledger_row() for i in self.market.mine(account)]
        done = [row for row in self.market.state.ledger if row.get("user_id") == account.id]
        rows = sorted(live + done, key=lambda row: row["id"])
        totals = {
            "instances": len(rows),
            "open_instances": len(live),
            "open_instance_ids": [row["id"] for row in live],
            "running_seconds": round(sum(r["running_seconds"] for r in rows), 3),
            "gpu_cost": round(sum(r["gpu_cost"] for r in rows), 8),
            "storage_cost": round(sum(r["storage_cost"] for r in rows), 8),
            "cost": round(sum(r["cost"] for r in rows), 8),
            "credit": round(account.credit, 8),
        }
        return JSON({"success": True, "rows": rows, "totals": totals})

    async def sim_faults(self, request: Request) -> Response:
        self.account(request)
        if request.method == "GET":
            return JSON({"success": True, "faults": [f.as_dict() for f in self.market.state.faults.faults]})
        if request.method == "DELETE":
            removed = self.market.clear_faults()
            return JSON({"success": True, "removed": len(removed)})
        body = await read_json(request, required=True)
        specs = body if isinstance(body, list) else [body]
        try:
            armed = [self.market.arm_fault(spec) for spec in specs]
        except FaultError as exc:
            raise VastError(400, "invalid_fault", str(exc)) from None
        return JSON({"success": True, "faults": [f.as_dict() for f in armed]})

    async def sim_fault(self, request: Request) -> Response:
        self.account(request)
        removed = self.market.clear_faults(int_path(request, "fault_id"))
        if not removed:
            raise VastError(404, "no_such_fault", "No such fault.")
        return JSON({"success": True, "removed": len(removed)})

    async def sim_forwards(self, request: Request) -> Response:
        """The simulated internet's forwards: ``{"name": "s3.vastsim", "to": "127.0.0.1:5077"}`` (or a list)."""
        self.account(request)
        market = self.market
        if request.method == "POST":
            body = await read_json(request, required=True)
            specs = body if isinstance(body, list) else [body]
            if not specs or not all(isinstance(spec, dict) for spec in specs):
                raise VastError(400, "invalid_forward", 'a forward is {"name": "s3.vastsim", "to": "127.0.0.1:PORT"}')
            try:
                for spec in specs:  # all checked before any is set
                    parse_forward(spec.get("name"), spec.get("to"))
            except ValueError as exc:
                raise VastError(400, "invalid_forward", str(exc)) from None
            added = [market.set_forward(spec["name"], spec["to"]) for spec in specs]
            return JSON({"success": True, "forwards": added, "host_mode": market.hosts.mode})
        if request.method == "DELETE":
            name = request.path_params.get("name")
            removed = market.clear_forwards(name)
            if name is not None and not removed:
                raise VastError(404, "no_such_forward", f"No forward for {name}.")
            return JSON({"success": True, "removed": removed})
        return JSON({"success": True, "forwards": market.forwards(), "host_mode": market.hosts.mode})

    async def sim_machines(self, request: Request) -> Response:
        self.account(request)
        machines = []
        for machine in sorted(self.market.catalog.machines.values(), key=lambda m: m.machine_id):
            machines.append({
                "machine_id": machine.machine_id,
                "gpu_name": machine.gpu.vast_name,
                "gpus_total": machine.gpus_total,
                "free_gpus": self.market.free_gpus(machine),
                "offer_ids": sorted(o.id for o in self.market.catalog.offers_on(machine.machine_id)),
                "defects": machine.defects,
            })
        return JSON({"success": True, "machines": machines})

    async def sim_account(self, request: Request) -> Response:
        account = self.account(request)
        if request.method == "PUT":
            body = await read_json(request, required=True)
            if isinstance(body, dict) and "credit" in body:
                try:
                    account.credit = float(body["credit"])
                except (TypeError, ValueError):
                    raise VastError(400, "invalid_args", "credit must be a number") from None
                self.market.touch()
        return JSON({"success": True, **account.public()})

    async def sim_info(self, request: Request) -> Response:
        market = self.market
        return JSON({"success": True, "speed": market.speed, "seed": market.seed,
                     "host_mode": market.hosts.mode, "ssh_user": market.hosts.ssh_user,
                     "timings": {name: market.timing(name) for name in
                                 ("provisioning", "created", "loading", "start_loading", "stopping")}})


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


class Snapshots:
    """The id order of listings that span pages, kept a while for their next_tokens."""

    def __init__(self, ttl: float = 600.0, keep: int = 1000) -> None:
        self.ttl, self.keep = ttl, keep
        self._store: dict[str, tuple[float, list[int]]] = {}

    def put(self, ids: list[int]) -> str:
        now = time.monotonic()
        for key in [k for k, (at, _) in self._store.items() if now - at > self.ttl]:
            del self._store[key]
        while len(self._store) >= self.keep:
            del self._store[next(iter(self._store))]
        key = secrets.token_hex(8)
        self._store[key] = (now, ids)
        return key

    def get(self, key: str) -> list[int] | None:
        found = self._store.get(key)
        return None if found is None or time.monotonic() - found[0] > self.ttl else found[1]


def encode_token(snapshot_id: str, offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"s": snapshot_id, "o": offset}).encode()).decode().rstrip("=")


def decode_token(token: str) -> tuple[str, int]:
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded))
        snapshot_id, offset = str(data["s"]), int(data["o"])
    except (ValueError, KeyError, TypeError):
        raise VastError(400, "invalid_token", "Invalid after_token.") from None
    if offset < 0:
        raise VastError(400, "invalid_token", "Invalid after_token.")
    return snapshot_id, offset


class DroppedAnswer(Response):
    """No answer: the response is started, then the connection is dropped (uvicorn closes it when the app fails
    after starting), so the client sees the peer close mid-response, as with a TCP reset or a dying proxy."""

    def __init__(self) -> None:
        super().__init__(status_code=200)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"1024")]})
        await send({"type": "http.response.body", "body": b'{"success": tr', "more_body": True})
        raise ConnectionResetError("vastsim fault: the answer was cut off (body: reset)")


def fault_response(status: int, style: str, retry_after: float | None) -> Response:
    if style == "reset":
        return DroppedAnswer()
    headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
    if status == 429:
        bodies = {
            "text": "API requests too frequent",
            "detail": {"detail": "API requests too frequent endpoint threshold=1.0"},
            "json": {"success": False, "error": "rate_limit_exceeded", "msg": "API requests too frequent"},
            "vast": {"success": False, "error": "rate_limit_exceeded", "msg": "API requests too frequent"},
        }
    else:
        bodies = {
            "text": "Internal Server Error",
            "detail": {"detail": "Internal Server Error"},
            "json": {"success": False, "error": "server_error", "msg": f"Server error {status}"},
            "vast": {"success": False, "error": "server_error", "msg": f"Server error {status}"},
        }
    body = bodies[style]
    if isinstance(body, str):
        return PlainTextResponse(body, status_code=status, headers=headers)
    return JSON(body, status_code=status, headers=headers)


def instance_row(market: Market, instance: Instance) -> dict[str, Any]:
    """An instance as Vast's API shows it (§4.1 of the reference)."""
    catalog = market.catalog
    machine = catalog.machines[instance.machine_id]
    offer = catalog.offers[instance.offer_id]
    gpu = machine.gpu
    now = time.time()
    running = instance.phase == "running"
    frac = instance.num_gpus / machine.gpus_total
    port_map = market.port_map(instance)  # {} unless a direct runtype
    ports: dict[str, Any] = {}
    if running:
        # The same mapping the instance's VAST_*_PORT_* variables and port forwards come from.
        ports = {key: [{"HostIp": "0.0.0.0", "HostPort": str(public)}] for key, public in port_map.items()}
    public_ip = market.hosts.backend.public_address(instance.address) or market.public_host
    dph_total = instance.gpu_dph + instance.storage_dph
    storage_total = instance.storage_dph
    uptime = (now - instance.running_since) / 60.0 if instance.running_since else None
    return {
        "id": instance.id,
        "machine_id": machine.machine_id,
        "host_id": machine.host_id,
        "bundle_id": offer.id,
        "ask_contract_id": offer.id,
        "actual_status": instance.actual_status,
        "intended_status": instance.intended_status,
        "cur_state": instance.cur_state,
        "next_state": instance.cur_state,
        "status_msg": instance.status_msg,
        "label": instance.label,
        "image_uuid": instance.image,
        "image_args": [],
        "image_runtype": instance.runtype,
        "extra_env": [[k, v] for k, v in instance.env.items()],
        "onstart": instance.onstart,
        "jupyter_token": None,
        "template_id": None,
        "template_hash_id": None,
        "template_name": None,
        "num_gpus": instance.num_gpus,
        "gpu_name": gpu.vast_name,
        "gpu_ram": gpu.vram_mb,
        "gpu_totalram": gpu.vram_mb * instance.num_gpus,
        "gpu_util": 0.0 if running else None,
        "gpu_temp": 35.0 if running else None,
        "gpu_frac": frac,
        "gpu_arch": "nvidia",
        "gpu_mem_bw": gpu.mem_bw,
        "compute_cap": gpu.compute_cap,
        "cuda_max_good": machine.cuda_max_good,
        "driver_version": machine.driver_version,
        "cpu_name": machine.cpu_name,
        "cpu_cores": machine.cpu_cores,
        "cpu_cores_effective": round(machine.cpu_cores * frac, 2),
        "cpu_ram": int(machine.cpu_ram_mb * frac),
        "cpu_util": 0.0 if running else None,
        "mem_usage": 0.0 if running else None,
        "mem_limit": round(machine.cpu_ram_mb * frac / 1000, 2),
        "vmem_usage": None,
        "disk_space": instance.disk,
        "disk_usage": 0.0,
        "disk_util": -1,
        "disk_bw": machine.disk_bw,
        "inet_up": machine.inet_up,
        "inet_down": machine.inet_down,
        "inet_up_cost": machine.inet_up_cost,
        "inet_down_cost": machine.inet_down_cost,
        "ssh_host": market.public_host,
        "ssh_port": instance.proxy_port,
        "ssh_idx": "1",
        "machine_dir_ssh_port": None,
        "public_ipaddr": public_ip,
        "local_ipaddrs": public_ip,
        "ports": ports,
        # The range the instance's public ports were allocated in, sshd's direct port first.
        "direct_port_start": min(port_map.values()) if port_map else -1,
        "direct_port_end": max(port_map.values()) if port_map else -1,
        "start_date": instance.created_at,
        "end_date": machine.end_date,
        "duration": now - instance.created_at,
        "uptime_mins": uptime,
        "dph_base": round(instance.gpu_dph, 6),
        "dph_total": round(dph_total, 6),
        "storage_cost": machine.storage_cost,
        "storage_total_cost": round(storage_total, 6),
        "is_bid": instance.is_bid,
        "min_bid": market.min_bid(offer),
        "reliability2": machine.reliability,
        "verification": machine.verification,
        "geolocation": machine.geolocation,
        "country_code": machine.country_code,
        "static_ip": machine.static_ip,
        "hosting_type": machine.hosting_type,
        "external": False,
        "rentable": True,
        "pcie_bw": machine.pcie_bw,
        "total_flops": round(gpu.total_flops * instance.num_gpus, 2),
        "dlperf": round(gpu.dlperf * instance.num_gpus, 2),
        "credit_balance": None,
        "credit_discount": None,
        "credit_discount_max": machine.credit_discount_max,
        "client_run_time": round(instance.running_seconds / 3600.0, 6),
        "host_run_time": round(instance.running_seconds / 3600.0, 6),
        "time_remaining": "",
        "time_remaining_isbid": "",
        "volume_info": [],
        "logo": "/static/logos/vastai_small2.png",
        "webpage": None,
    }


def build_app(market: Market) -> Starlette:
    api = Api(market)
    w = api.wrap
    read = ["GET"]
    write = ["PUT", "POST"]

    def both(path: str, handler: Handler, methods: list[str]) -> list[Route]:
        # Vast accepts each path with and without its trailing slash.
        path = path.rstrip("/")
        return [Route(path, w(handler), methods=methods), Route(path + "/", w(handler), methods=methods)]

    routes = [
        *both("/api/v0/gpu_names/unique", api.gpu_names, read),
        *both("/api/v0/users/current", api.current_user, read),
        *both("/api/v0/bundles", api.search_bundles, ["GET", "POST"]),
        *both("/api/v0/search/asks", api.search_bundles, ["PUT", "POST"]),
        *both("/api/v0/asks/bulk", api.create_bulk, ["POST"]),
        *both("/api/v0/asks/{offer_id:int}", api.create, ["PUT"]),
        *both("/api/v1/instances", api.list_v1, read),
        *both("/api/v0/instances/filters", api.filters, read),
        *both("/api/v0/instances", api.list_legacy, read),
        *both("/api/v0/instances", api.instances_bulk, ["PUT", "DELETE"]),
        *both("/api/v0/instances/{instance_id:int}", api.instance, ["GET", "PUT", "DELETE"]),
        *both("/api/v0/instances/{instance_id:int}/ssh", api.instance_ssh, ["GET", "POST"]),
        *both("/api/v0/instances/{instance_id:int}/ssh/{key_id:int}", api.instance_ssh_key, ["DELETE"]),
        *both("/api/v0/instances/{action}/{instance_id:int}", api.action, write),
        *both("/api/v0/ssh", api.ssh_keys, ["GET", "POST"]),
        *both("/api/v0/ssh/{key_id:int}", api.ssh_key, ["PUT", "DELETE"]),
        *both("/api/v0/commands/copy_direct", api.copy, ["PUT"]),
        *both("/api/v0/commands/copy_direct", api.cancel_copy, ["DELETE"]),
        *both("/api/v0/commands/rsync", api.copy, ["PUT"]),
        *both("/api/v0/commands/rclone", api.cloud_copy, ["POST"]),
        *both("/api/v0/commands/rclone", api.cancel_copy, ["DELETE"]),
        *both("/api/v0/charges", api.charges, read),
        *both("/_sim/ledger", api.sim_ledger, read),
        *both("/_sim/faults", api.sim_faults, ["GET", "POST", "DELETE"]),
        *both("/_sim/faults/{fault_id:int}", api.sim_fault, ["DELETE"]),
        *both("/_sim/forwards", api.sim_forwards, ["GET", "POST", "DELETE"]),
        *both("/_sim/forwards/{name}", api.sim_forwards, ["DELETE"]),
        *both("/_sim/machines", api.sim_machines, read),
        *both("/_sim/account", api.sim_account, ["GET", "PUT"]),
        *both("/_sim/info", api.sim_info, read),
        Route("/_sim/results/{token}", api.results, methods=["GET"]),
    ]
    return Starlette(routes=routes)
