"""Looking for a secret as it may leak: as is, URL-encoded, or inside base64 at any alignment (an Authorization
header, a kubeconfig-like blob, a base64-encoded environment)."""

from __future__ import annotations

import base64
import math
import urllib.parse
from pathlib import Path


def forms(secret: str) -> list[str]:
    """The secret, its URL encoding, and the part of its base64 (standard and URL-safe) that does not depend on
    what precedes or follows it in the encoded text, for each of the three alignments."""
    raw = secret.encode()
    found = {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)}
    for pad in range(3):
        encoded = base64.b64encode(b"\0" * pad + raw).decode()
        core = encoded[math.ceil(pad * 4 / 3):len(encoded) - 4]
        if len(core) >= 12:
            found.update({core, core.replace("+", "-").replace("/", "_")})
    return sorted(found)


def files_holding(root: Path, secrets: list[str]) -> list[str]:
    """Every regular file under ``root`` holding one of the secrets in any of its forms: 'path: form'."""
    needles = {form.encode(): form for secret in secrets for form in forms(secret)}
    hits = []
    for path in sorted(root.rglob("*")) if root.is_dir() else [root]:
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            hits += [f"{path}: {form[:6]}..." for needle, form in needles.items() if needle in data]
    return hits


def text_holding(text: str, secrets: list[str]) -> list[str]:
    return [f"{form[:6]}..." for secret in secrets for form in forms(secret) if form in text]
