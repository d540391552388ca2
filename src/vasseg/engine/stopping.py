"""A clean stop on SIGTERM/SIGINT: the first signal is recorded, the trainer finishes its step,
saves a checkpoint and stops (``--resume`` continues); a second signal acts as usual."""

from __future__ import annotations

import signal
import threading
from typing import Any, Callable

import torch

from vasseg.engine import distributed


class StopRequest:
    """The first SIGTERM/SIGINT seen while installed (``signal``: its number, None before)."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def install(self) -> Callable[[], Any]:
        """Catch the first SIGTERM/SIGINT (main thread only); returns the undo."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

        def handler(signum: int, _frame: Any) -> None:
            self.signal = signum
            for sig, old in previous.items():  # a second signal acts as usual
                signal.signal(sig, old)

        for sig in previous:
            signal.signal(sig, handler)
        return lambda: [signal.signal(sig, old) for sig, old in previous.items()]

    def requested(self, world_size: int, at_flush: bool, device: torch.device) -> bool:
        """Whether to stop now; under DDP every rank agrees, at flush points only (they sync there)."""
        if world_size == 1:
            return self.signal is not None
        if not at_flush:
            return False
        return distributed.any_rank(self.signal is not None, device)

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal else "a signal on another rank"
