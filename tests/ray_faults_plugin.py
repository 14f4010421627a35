"""A test-only method plugin that fails the way a run can fail on a cluster: its worker
killed by a signal, an exception, or a hang past the timeout. tests/test_ray_executor.py
installs it for the Ray workers as a throwaway distribution with a ``paqbench`` entry point
(workers build their own registry; a plugin registered in the test process would not reach them)."""

from __future__ import annotations

import os
import signal
import time
from typing import Literal

from pydantic import Field

from paqbench import Method, Params, hookimpl


class FaultParams(Params):
    action: Literal["kill", "raise", "hang"] = Field(description="how the run fails")


class Fault(Method):
    name = "ray-fault"
    family = "other"
    description = "Fail on purpose (tests only): SIGKILL its own process, raise, or hang."
    Params = FaultParams
    accepts = frozenset({"dense"})

    def apply(self, model, params: FaultParams, ctx):
        if params.action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if params.action == "raise":
            raise RuntimeError("injected failure")
        time.sleep(600)  # hang: the runner's timeout must stop it
        return None


@hookimpl
def paqbench_register_methods(register):
    register(Fault)
