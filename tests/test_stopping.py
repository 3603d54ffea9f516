"""Stop requests: real SIGTERM/SIGINT sent to this process while the handlers are installed
(always restored afterwards); the second request's os._exit only in a subprocess."""

import contextlib
import os
import signal
import subprocess
import sys
import threading

import pytest

from flax_transformer import stopping

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _keep(signum, frame):
    """A stand-in for whatever handler was there before: it must come back afterwards."""


@contextlib.contextmanager
def installed(stop):
    """Installs ``stop`` for SIGTERM/SIGINT over a known handler; restores on any outcome."""
    outer = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        for signum in outer:
            signal.signal(signum, _keep)
        previous = stopping.install_signal_handlers(stop)
        try:
            # A signal sent below must reach ``stop``, never the default handler (which
            # would end the test run).
            assert signal.getsignal(signal.SIGTERM) is stop
            assert signal.getsignal(signal.SIGINT) is stop
            yield previous
        finally:
            stopping.restore_handlers(previous)
    finally:
        for signum, handler in outer.items():
            signal.signal(signum, handler)


def test_install_returns_the_previous_handlers_and_restore_puts_them_back():
    stop = stopping.Stop()
    with installed(stop) as previous:
        assert previous == {signal.SIGTERM: _keep, signal.SIGINT: _keep}
    # installed() restored ``previous`` before putting its own outer handlers back: check
    # the restore on its own.
    outer = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        signal.signal(signal.SIGTERM, _keep)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        previous = stopping.install_signal_handlers(stop)
        stopping.restore_handlers(previous)
        assert signal.getsignal(signal.SIGTERM) is _keep
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        for signum, handler in outer.items():
            signal.signal(signum, handler)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_first_signal_during_steps_is_only_noted(signum, caplog):
    stop = stopping.Stop()
    with installed(stop):
        assert not stop.requested
        signal.raise_signal(signum)  # no StopRequested, and SIGINT no KeyboardInterrupt
        assert stop.requested
    assert f"received signal {int(signum)}: stopping" in caplog.text


def test_signal_inside_an_interruptible_phase_ends_it_at_once():
    stop = stopping.Stop()
    reached = []
    with (installed(stop), pytest.raises(stopping.StopRequested) as raised,
          stop.interruptible()):
        signal.raise_signal(signal.SIGTERM)
        reached.append("after the signal")
    assert reached == []
    assert raised.value.args == (signal.SIGTERM,)
    assert stop.requested


def test_nested_interruptible_phase_leaves_the_outer_one_interruptible():
    stop = stopping.Stop()
    with installed(stop), pytest.raises(stopping.StopRequested), stop.interruptible():
        with stop.interruptible():
            pass
        signal.raise_signal(signal.SIGINT)


@pytest.mark.parametrize("ending", ["normally", "by an exception"])
def test_signal_after_an_interruptible_phase_is_only_noted(ending):
    stop = stopping.Stop()
    with installed(stop):
        if ending == "normally":
            with stop.interruptible():
                pass
        else:
            with pytest.raises(ValueError, match="inside the phase"), stop.interruptible():
                raise ValueError("inside the phase")
        signal.raise_signal(signal.SIGTERM)  # back in training steps: must not raise
        assert stop.requested


def test_interruptible_phase_does_not_start_after_a_request():
    stop = stopping.Stop()
    started = []
    with installed(stop):
        signal.raise_signal(signal.SIGTERM)
        with pytest.raises(stopping.StopRequested), stop.interruptible():
            started.append("phase")
    assert started == []


def test_install_outside_the_main_thread_sets_nothing():
    stop = stopping.Stop()
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    results = []
    thread = threading.Thread(target=lambda: results.append(
        stopping.install_signal_handlers(stop)))
    thread.start()
    thread.join(timeout=60)
    assert results == [{}]  # no ValueError, and nothing to restore
    stopping.restore_handlers(results[0])
    assert {signum: signal.getsignal(signum) for signum in before} == before


@pytest.mark.parametrize("first, second", [(signal.SIGTERM, signal.SIGINT),
                                           (signal.SIGINT, signal.SIGTERM)])
def test_second_signal_exits_at_once_with_128_plus_its_number(first, second):
    code = (f"import signal, sys; sys.path.insert(0, {ROOT!r})\n"
            "from flax_transformer import stopping\n"
            "stop = stopping.Stop()\n"
            "stopping.install_signal_handlers(stop)\n"
            f"signal.raise_signal({int(first)})\n"
            "print('first noted', stop.requested, flush=True)\n"
            f"signal.raise_signal({int(second)})\n"
            "print('not reached', flush=True)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 128 + int(second), result.stderr
    assert "first noted True" in result.stdout
    assert f"second stop request (signal {int(second)}): exiting now" in result.stdout
    assert "not reached" not in result.stdout
