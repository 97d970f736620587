"""Sealing scratch data that must touch the disk: XOR with a SHAKE-256 keystream.

The run's scratch stores (`spill.py`, `shared_strings.py`) hold personal data in files that
exist only for the run (unlinked when created). Sealed, a copy of the freed disk blocks or of
the file through `/proc` shows no name, ID number or mobile. The key lives only in this
process's memory; each sealed piece has its own nonce, so no keystream is used twice.

>>> seal = Sealer()
>>> secret = seal(b"block 1", "张三".encode())
>>> seal(b"block 1", secret).decode()
'张三'
"""

from __future__ import annotations

import hashlib
import secrets

__all__ = ["Sealer", "xor"]


class Sealer:
    """Seals and unseals (the same operation) under a random per-process key."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)

    def __call__(self, nonce: bytes, data: bytes) -> bytes:
        """`data` XORed with the keystream for `nonce` (a nonce must never seal two texts)."""
        return xor(data, hashlib.shake_256(self._key + nonce).digest(len(data)))


def xor(data: bytes, pad: bytes) -> bytes:
    """`data` XOR `pad` (equal lengths), in C: one big integer each, not a loop over bytes."""
    return (int.from_bytes(data, "little") ^ int.from_bytes(pad, "little")).to_bytes(
        len(data), "little"
    )
