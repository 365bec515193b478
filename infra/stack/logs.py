"""The local stack's logs, ``<home>/stack/logs/*.log``, kept to a size: copy, then truncate.

Each component writes its log through a file descriptor it inherited from ``mlops up`` or the
supervisor, opened for appending. Renaming the file would leave the component writing to the
renamed one, so a log over the limit is copied to ``NAME.log.1`` (older copies move to ``.2``
... up to the number kept, the oldest dropped) and then truncated in place; a writer that
appends simply continues at the start of the emptied file. Lines written in the instant between
the end of the copy and the truncation are lost, as with logrotate's ``copytruncate``. The
supervisor (``infra/supervisor.py``) does this every round.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def backup_path(log: Path, index: int) -> Path:
    """The ``index``-th newest rotated copy of ``log``: ``NAME.log.1`` is the newest."""
    return log.with_name(f"{log.name}.{index}")


def rotate_log(log: Path, keep: int) -> None:
    """Copy ``log`` to ``NAME.log.1`` (shifting the older copies, at most ``keep``), empty it."""
    if keep > 0:
        for index in range(keep - 1, 0, -1):
            older = backup_path(log, index)
            if older.exists():
                older.replace(backup_path(log, index + 1))
        with log.open("rb") as source, backup_path(log, 1).open("wb") as copy:
            shutil.copyfileobj(source, copy)  # to the end, what arrived during the copy included
    os.truncate(log, 0)


def rotate_logs(folder: Path, max_bytes: int, keep: int) -> list[tuple[Path, int]]:
    """Rotate every ``*.log`` in ``folder`` larger than ``max_bytes`` (0: rotate none).

    Returns:
        Each log rotated, with its size when it was.
    """
    if max_bytes <= 0:
        return []
    rotated = []
    for log in sorted(folder.glob("*.log")):
        try:
            size = log.stat().st_size
            if size > max_bytes:
                rotate_log(log, keep)
                rotated.append((log, size))
        except FileNotFoundError:  # removed meanwhile (`mlops down`, a person)
            continue
    return rotated
