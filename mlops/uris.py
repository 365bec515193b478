"""Whether a storage location lies inside another, however its path is spelled."""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from urllib.parse import unquote, urlparse

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")


def location_within(location: str, root: str) -> bool:
    """Whether an artifact location (a URI or a path) lies under ``root``.

    The path is unquoted until it stops changing (``%252e`` included) and may hold no ``..``
    segment, backslash or NUL; the scheme and the host must be the same (a plain path is a
    ``file:`` URI, relative paths taken from the working directory).
    """
    if not root:
        return False
    target, base = _split(location), _split(root)
    if target is None or base is None:
        return False
    scheme, host, path = target
    root_scheme, root_host, root_path = base
    inside = path == root_path or path.startswith(root_path.rstrip("/") + "/")
    return (scheme, host) == (root_scheme, root_host) and inside


def _split(uri: str) -> tuple[str, str, str] | None:
    """(scheme, host, normalised path), or None for a path that tries to climb out."""
    text = uri
    for _ in range(5):
        decoded = unquote(text)
        if decoded == text:
            break
        text = decoded
    if "\\" in text or "\x00" in text:
        return None
    if not _SCHEME.match(text):
        if ".." in text.split("/"):
            return None
        text = Path(text).absolute().as_uri()
    parsed = urlparse(text)
    path = parsed.path or "/"
    if ".." in path.split("/"):
        return None
    return parsed.scheme, parsed.netloc, posixpath.normpath(path)
