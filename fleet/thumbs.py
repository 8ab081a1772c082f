"""Thumbnails of the site photos on an alert page.

Officers open alert pages on phones, often on mobile data; a photo from a phone camera is 2-5 MB,
and the timeline shows each one 160 px wide. The page therefore asks for a thumbnail (at most
``THUMB_PX`` on its longer side, JPEG), made with Pillow on first request and kept in a small
per-process cache keyed by the photo's content (a hash, not its row id: ids can come round
again after a database is reset). The full photo is one tap away.

A photo that Pillow cannot read (a truncated upload that still starts like a JPEG or PNG: the
upload check looks at the first bytes only), or one whose pixel count is beyond Pillow's
decompression-bomb limit, has no thumbnail: the caller serves the photo itself, as before.
"""

from __future__ import annotations

import hashlib
import io
import logging
import threading
from collections import OrderedDict

log = logging.getLogger(__name__)

THUMB_PX = 320  # twice the 160 px the page shows: sharp on high-density phone screens
CACHE_ENTRIES = 256  # about 20-40 KB each
_QUALITY = 80

_cache: OrderedDict[bytes, bytes | None] = OrderedDict()
_lock = threading.Lock()


def make_thumbnail(data: bytes, max_px: int = THUMB_PX) -> bytes | None:
    """A JPEG of at most ``max_px`` on its longer side, upright (EXIF orientation applied);
    None when the image cannot be read."""
    from PIL import Image, ImageOps  # noqa: PLC0415 (only the fleet's photo route needs Pillow)

    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format == "JPEG":
                img.draft("RGB", (max_px * 2, max_px * 2))  # decode at a reduced scale: fast
            upright = ImageOps.exif_transpose(img)
            upright.thumbnail((max_px, max_px))
            if upright.mode in ("RGBA", "LA", "P"):
                rgba = upright.convert("RGBA")
                flat = Image.new("RGB", rgba.size, (255, 255, 255))
                flat.paste(rgba, mask=rgba.getchannel("A"))
                upright = flat
            elif upright.mode != "RGB":
                upright = upright.convert("RGB")
            out = io.BytesIO()
            upright.save(out, "JPEG", quality=_QUALITY, optimize=True)
            return out.getvalue()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        log.warning("no thumbnail for a photo (%s): serving it whole", type(exc).__name__)
        return None


def thumbnail(data: bytes) -> bytes | None:
    """:func:`make_thumbnail` of a stored photo, cached by its content (hashing 5 MB takes
    a few milliseconds; decoding it, ten times that)."""
    key = hashlib.blake2b(data, digest_size=16).digest()
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    thumb = make_thumbnail(data)
    with _lock:
        _cache[key] = thumb
        while len(_cache) > CACHE_ENTRIES:
            _cache.popitem(last=False)
    return thumb
