"""What the model registry checks before it trusts a file: names, containment and digests.

model.joblib is a pickle and unpickling runs code, so the registry unpickles only bytes that were
read from a path resolving inside the registry root and whose SHA-256 equals the one recorded in
metadata.json at register time. Bytes are read once, hashed, and unpickled from memory, so a file
swapped between the check and the load is never what gets unpickled.

This detects a corrupted or replaced artifact; it is not a signature. Whoever can rewrite
metadata.json can record a new hash, so the registry directory must stay writable by the
trainer only.

Example::

    path = contained(root, root / check_name(name) / check_version(name, version) / ARTIFACT)
    data = read_verified(path, expected=mv.sha256, what=f"{name} {version}")
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from tidegate.errors import ModelArtifactError, ModelArtifactTamperedError, ModelNotFoundError

__all__ = [
    "ARTIFACT", "METADATA", "check_name", "check_version", "contained", "read_verified",
    "sha256_hex", "valid_name", "version_number",
]

ARTIFACT = "model.joblib"
METADATA = "metadata.json"
# fullmatch, not match with "$": "$" also matches before a trailing newline, and a name is
# one path component, so it can hold no separator and cannot be "." or "..".
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_VERSION = re.compile(r"v([1-9][0-9]{0,8})")


def _shown(value: object) -> str:
    """``value`` for a one-line message: repr escapes newlines; long input is cut."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def valid_name(name: object) -> bool:
    """Whether ``name`` can name a model (one path component of safe characters)."""
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


def check_name(name: object) -> str:
    """``name`` if it is a valid model name, else ModelNotFoundError with one line.

    >>> check_name("fraud-primary")
    'fraud-primary'
    """
    if not isinstance(name, str) or not valid_name(name):
        raise ModelNotFoundError(
            f"invalid model name {_shown(name)}: 1-100 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit")
    return name


def check_version(name: str, version: object) -> str:
    """``version`` if it looks like ``v1``, ``v2``, ..., else ModelNotFoundError with one line."""
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        raise ModelNotFoundError(
            f"invalid version {_shown(version)} of model {name}: expected v1, v2, ...")
    return version


def version_number(version: str) -> int:
    """The number of a version directory's name; 0 for anything that is not a version."""
    match = _VERSION.fullmatch(version)
    return int(match.group(1)) if match else 0


def contained(root: Path, path: Path) -> Path:
    """``path`` resolved; ModelArtifactTamperedError if it (or a symlink on it) leaves ``root``.

    The root itself may be a symlink (a shared volume); what counts is where files end up.
    """
    base = root.resolve()
    resolved = path.resolve()
    if not resolved.is_relative_to(base):
        raise ModelArtifactTamperedError(
            f"{path.relative_to(root) if path.is_relative_to(root) else path} resolves to "
            f"{resolved}, outside the model registry {base}")
    return resolved


def sha256_hex(data: bytes) -> str:
    """The lowercase hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def read_verified(path: Path, *, expected: str, what: str) -> bytes:
    """The bytes at ``path`` if their SHA-256 is ``expected``; else ModelArtifactTamperedError.

    An empty ``expected`` (metadata from before hashes were recorded, or edited by hand) is
    refused too: an artifact nobody vouched for is not unpickled; ``tidegate model seal`` records
    the hash once an operator has checked the file.
    """
    if not expected:
        raise ModelArtifactTamperedError(
            f"no SHA-256 recorded for {what}; check the artifact, then "
            f"'tidegate model seal {what} --reason ...', or register it again")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelArtifactError(f"cannot read the artifact of {what}: {exc}") from exc
    actual = sha256_hex(data)
    if actual != expected:
        raise ModelArtifactTamperedError(
            f"checksum mismatch for {what}: the artifact's SHA-256 is {actual[:12]}, "
            f"metadata.json recorded {expected[:12]}; refusing to unpickle it")
    return data
