"""A trio instrument that logs any task step blocking the event loop for too long.

One blocking step (a sync call, a CPU-heavy parse) delays every actor at once — webhooks
answered late, OLT sessions timing out — so it is worth a warning with the task's name.
"""

from __future__ import annotations

import logging
import time

import trio

log = logging.getLogger("paymentd.loop")


class SlowStepLogger(trio.abc.Instrument):
    def __init__(self, threshold: float = 0.1) -> None:
        self.threshold = threshold
        self._started: dict[trio.lowlevel.Task, float] = {}

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._started[task] = time.perf_counter()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        began = self._started.pop(task, None)
        if began is None:
            return
        took = time.perf_counter() - began
        if took > self.threshold:
            log.warning("task %s blocked the event loop for %.0f ms", task.name, took * 1000)
