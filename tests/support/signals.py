"""Ctrl-C in a test: SIGINT with Python's own handler, whatever the test process inherited.

A shell without job control (a CI script, ``cmd &`` in a non-interactive shell) starts its
background commands with SIGINT ignored, and Python then leaves it ignored: a test that sends
itself SIGINT would see nothing happen. ``ctrl_c()`` installs ``signal.default_int_handler``
(``KeyboardInterrupt`` in the main thread, which ``asyncio.run`` turns into a cancel of its main
task) for the block and puts back what was there. Main thread only, as ``signal.signal`` is.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def ctrl_c() -> Iterator[int]:
    """SIGINT raises ``KeyboardInterrupt`` in the block; yields the main thread's id (the
    thread to ``signal.pthread_kill``)."""
    main = threading.main_thread().ident
    assert main is not None and threading.get_ident() == main, "Ctrl-C goes to the main thread"
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield main
    finally:
        signal.signal(signal.SIGINT, before)
