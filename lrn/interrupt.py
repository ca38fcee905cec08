"""Graceful stop on SIGINT / SIGTERM: finish the step, checkpoint, exit; a second signal stops at once."""

from __future__ import annotations

import logging
import os
import signal
import threading

log = logging.getLogger(__name__)
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class GracefulStop:
    """Context manager: the first SIGINT/SIGTERM only records ``signum`` for the loop to act on.

    A second signal acts at once: SIGINT raises KeyboardInterrupt, SIGTERM kills the process (the
    last checkpoint stays valid: checkpoints are written atomically). Outside the main thread, where
    Python cannot install handlers, it does nothing.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        if self.signum is None:
            self.signum = signum
            log.warning("%s received: finishing this step, writing a checkpoint, then stopping "
                        "(send it again to stop at once)", signal.Signals(signum).name)
            return
        self.__exit__()
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
