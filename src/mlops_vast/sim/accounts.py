"""Accounts and their SSH keys: who may call the API, and whom each instance's sshd lets in.

Vast pushes an account's keys to its running instances too, so every change is written to the hosts
at once (sshd reads the file at each login).
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from mlops_vast.sim.errors import VastError
from mlops_vast.sim.models import Account, Instance, SshKey
from mlops_vast.sim.state import SimContext

DEFAULT_CREDIT = 100.0


class Accounts:
    def __init__(self, ctx: SimContext) -> None:
        self.ctx = ctx

    # ------------------------------------------------------------------ accounts

    def ensure(self, api_key: str, credit: float = DEFAULT_CREDIT) -> Account:
        accounts = self.ctx.state.accounts
        if api_key not in accounts:
            user_id = 100_000 + len(accounts) + 1
            accounts[api_key] = Account(id=user_id, api_key=api_key, email=f"user{user_id}@vastsim.invalid",
                                        username=f"user{user_id}", credit=credit)
            self.ctx.touch()
        return accounts[api_key]

    def ensure_one(self, credit: float) -> None:
        """An account with a generated key when there is none (the first start without --api-key)."""
        if not self.ctx.state.accounts:
            self.ensure(secrets.token_hex(32), credit)

    def authenticate(self, api_key: str | None) -> Account:
        account = self.ctx.state.accounts.get(api_key or "")
        if account is None:
            raise VastError(401, "auth_error", "Invalid user key")
        return account

    def own_instance(self, account: Account, instance_id: int) -> Instance:
        instance = self.ctx.state.instances.get(instance_id)
        if instance is None or instance.user_id != account.id:
            raise VastError(404, "no_such_instance", f"Instance {instance_id} not found.")
        return instance

    # ------------------------------------------------------------------ SSH keys

    def add_key(self, account: Account, key: Any) -> SshKey:
        text = _validate_public_key(key)
        for existing in self.ctx.state.ssh_keys.values():
            if existing.user_id == account.id and existing.instance_id is None and existing.key == text:
                raise VastError(400, "duplicate_key", "This SSH key is already registered to your account.",
                                key=existing.public())
        record = self._new_key(account, text, None)
        self.push_keys(account.id)
        return record

    def delete_key(self, account: Account, key_id: int) -> None:
        self._own_key(account, key_id)
        del self.ctx.state.ssh_keys[key_id]
        self.push_keys(account.id)

    def update_key(self, account: Account, key_id: int, key: Any) -> SshKey:
        record = self._own_key(account, key_id)
        record.key = _validate_public_key(key)
        self.push_keys(account.id)
        return record

    def attach_instance_key(self, account: Account, instance_id: int, key: Any) -> dict[str, Any]:
        instance = self.own_instance(account, instance_id)
        text = _validate_public_key(key)
        for existing in self.ctx.state.ssh_keys.values():
            if existing.instance_id == instance.id and existing.key == text:
                return {"success": False, "error": "duplicate_key",
                        "msg": "SSH key already associated with this instance."}
        record = self._new_key(account, text, instance.id)
        self.push_keys(account.id)
        return {"success": True, "msg": "SSH key added to instance.", "key": record.public()}

    def detach_instance_key(self, account: Account, instance_id: int, key_id: int) -> dict[str, Any]:
        instance = self.own_instance(account, instance_id)
        record = self.ctx.state.ssh_keys.get(key_id)
        if record is None or record.instance_id != instance.id:
            raise VastError(404, "no_such_key", f"SSH key {key_id} is not attached to instance {instance_id}.")
        del self.ctx.state.ssh_keys[key_id]
        self.push_keys(account.id)
        return {"success": True, "msg": "SSH key removed from instance."}

    def keys_for(self, instance: Instance) -> list[str]:
        return [k.key for k in self.ctx.state.ssh_keys.values()
                if k.user_id == instance.user_id and k.instance_id in (None, instance.id)]

    def push_keys(self, user_id: int) -> None:
        # Vast pushes account keys to current instances too; sshd reads the file at each login.
        for instance in self.ctx.state.instances.values():
            if instance.user_id == user_id:
                self.ctx.hosts.write_authorized_keys(instance.id, self.keys_for(instance))
        self.ctx.touch()

    def drop_instance_keys(self, instance_id: int) -> None:
        keys = self.ctx.state.ssh_keys
        for key_id in [k.id for k in keys.values() if k.instance_id == instance_id]:
            keys.pop(key_id, None)

    def _own_key(self, account: Account, key_id: int) -> SshKey:
        record = self.ctx.state.ssh_keys.get(key_id)
        if record is None or record.user_id != account.id or record.instance_id is not None:
            raise VastError(404, "no_such_key", f"SSH key {key_id} not found.")
        return record

    def _new_key(self, account: Account, text: str, instance_id: int | None) -> SshKey:
        state = self.ctx.state
        record = SshKey(id=state.next_key_id, user_id=account.id, key=text, created_at=time.time(),
                        instance_id=instance_id)
        state.next_key_id += 1
        state.ssh_keys[record.id] = record
        return record


def _validate_public_key(key: Any) -> str:
    if not isinstance(key, str) or not key.strip():
        raise VastError(400, "invalid_args",
                        "ssh_key is required: an OpenSSH public key such as 'ssh-ed25519 AAAA...'.")
    text = " ".join(key.strip().split())
    parts = text.split(" ")
    if "PRIVATE KEY" in text or len(parts) < 2 or not (parts[0].startswith("ssh-") or parts[0].startswith("ecdsa-")):
        raise VastError(400, "invalid_args", "Invalid SSH public key: expected 'ssh-<type> <base64> [comment]'.")
    return text
