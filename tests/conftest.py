"""Gives JAX four simulated CPU devices so that parallel code is tested on a laptop.

The persistent compilation cache of the CLIs (and of train.py/decode.py children) goes
to a directory of this test session, never to the user's ~/.cache: tests must not write
there, and a fresh cache per session keeps the tests independent of earlier runs.
"""

import atexit
import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_CACHE_DIR = tempfile.mkdtemp(prefix="flax_transformer_jax_cache_")
os.environ["FLAX_TRANSFORMER_COMPILATION_CACHE"] = _CACHE_DIR
atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)


class Child:
    """A train.py (or other) subprocess in its own process group, output in a log file."""

    def __init__(self, args, log_path, env=None):
        self.log_path = log_path
        self._log = open(log_path, "w+")  # noqa: SIM115 (closed by stop())
        # Files, not pipes: a full pipe would block the child.
        self.process = subprocess.Popen(args, env=env, stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        with open(self.log_path, errors="replace") as handle:
            return handle.read()

    def wait_for(self, text: str, timeout: float = 600) -> None:
        """Polls the child's output until ``text`` appears (an event, not a fixed delay)."""
        self.wait_until(lambda output: text in output, repr(text), timeout)

    def wait_for_step(self, step: int, timeout: float = 600) -> None:
        """Waits until the progress bar shows ``step`` or later.

        The bar redraws at most every few steps (tqdm's ``miniters``/``mininterval``), so a
        given step may never be printed: wait for any step at or past it.
        """
        def reached(output: str) -> bool:
            return any(int(done) >= step for done in re.findall(r"\| *(\d+)/\d+ \[", output))
        self.wait_until(reached, f"step {step} or later in the progress bar", timeout)

    def wait_until(self, predicate, what: str, timeout: float = 600) -> None:
        """Polls the child's output until ``predicate(output)`` holds or the child ends."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.output()):
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{what} did not appear in the output of "
                             f"{self.process.args[:2]}:\n{self.output()[-3000:]}")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 600) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        """Kills the whole process group (children of the child too), whatever happened."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self._log.close()


@pytest.fixture
def start_child():
    """Starts subprocesses that are killed, with their process groups, when the test ends."""
    children = []

    def start(args, log_path, env=None) -> Child:
        children.append(Child(args, str(log_path), env))
        return children[-1]
    yield start
    for child in children:
        child.stop()
