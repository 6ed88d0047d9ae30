"""Progress for long steps whose inner loop edgeml does not own (a solver, a compiler).

:func:`timed_bar` shows a tqdm bar over wall time against an estimate, so a user
watching a 10-minute Verilator build sees that it is alive and about how far it is,
instead of a silent terminal.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

#: Seconds between two redraws of a timed bar.
TICK_S = 1.0


@contextlib.contextmanager
def timed_bar(desc: str, estimate_s: float | None = None, enabled: bool = True) -> Iterator[None]:
    """A progress bar over elapsed seconds while the ``with`` body runs.

    With an estimate the bar fills towards it (and stops just short of full until the
    step ends); without one it counts seconds. Disabled (``-q``) it does nothing.
    """
    if not enabled:
        yield
        return
    from tqdm.auto import tqdm

    total = max(1, round(estimate_s)) if estimate_s else None
    fmt = (
        "{desc}: {n:.0f}/{total:.0f} s estimated |{bar}| {elapsed}"
        if total
        else "{desc}: {elapsed}"
    )
    bar = tqdm(total=total, desc=desc, unit="s", bar_format=fmt, leave=False)
    stop = threading.Event()
    t0 = time.monotonic()

    def tick() -> None:
        while not stop.wait(TICK_S):
            el = time.monotonic() - t0
            bar.n = min(el, total - 0.5) if total else el
            bar.refresh()

    th = threading.Thread(target=tick, name=f"progress:{desc}", daemon=True)
    th.start()
    try:
        yield
    finally:
        stop.set()
        th.join()
        bar.n = total or (time.monotonic() - t0)
        bar.close()
