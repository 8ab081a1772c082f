"""Card pseudonymisation (PIPL art. 51: de-identify at the edge).

A 26-bit card space is small enough to brute-force a plain hash, so pseudonyms are HMAC-SHA256
under a per-site secret that never leaves the site's gateways. The raw number exists only in
memory between the driver and :meth:`Pseudonymiser.card`.
"""

from __future__ import annotations

import hashlib
import hmac


class Pseudonymiser:
    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        self._key = key

    def card(self, number: str) -> str:
        """Stable pseudonym of a card number (normalised: surrounding space, leading zeros)."""
        normalised = number.strip().lstrip("0") or "0"
        return hmac.new(self._key, normalised.encode(), hashlib.sha256).hexdigest()[:32]

    def __repr__(self) -> str:
        return "Pseudonymiser(<key hidden>)"
