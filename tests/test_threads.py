import os
import subprocess
import sys
import time

import pytest

from cvaelib import threads

VARIABLES = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


@pytest.fixture
def before_torch(monkeypatch):
    """As at the first ``import cvaelib`` of a process: torch not loaded, nothing chosen, 4 cores."""
    monkeypatch.delitem(sys.modules, "torch")
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 4)
    return monkeypatch


def test_on_a_busy_machine_torch_uses_the_free_cores_and_waits_passively(before_torch):
    before_torch.setattr(threads, "busy_cores", lambda: 1.1)  # one other process, and a little more
    assert threads.choose_threads() == {"OMP_NUM_THREADS": "3", "OMP_WAIT_POLICY": "PASSIVE"}
    assert os.environ["OMP_NUM_THREADS"] == "3" and os.environ["OMP_WAIT_POLICY"] == "PASSIVE"


def test_at_least_one_thread_when_every_core_is_busy(before_torch):
    before_torch.setattr(threads, "busy_cores", lambda: 4.0)
    assert threads.choose_threads()["OMP_NUM_THREADS"] == "1"


def test_an_idle_machine_is_left_as_torch_sets_it(before_torch):
    before_torch.setattr(threads, "busy_cores", lambda: 0.2)
    assert threads.choose_threads() == {} and not set(VARIABLES) & set(os.environ)


@pytest.mark.parametrize(
    "name, value", [("OMP_NUM_THREADS", "2"), ("OMP_WAIT_POLICY", "ACTIVE"), ("GOMP_SPINCOUNT", "0")]
)
def test_the_users_choice_is_kept(before_torch, name, value):
    before_torch.setattr(threads, "busy_cores", lambda: 2.0)
    before_torch.setenv(name, value)
    assert threads.choose_threads() == {} and set(VARIABLES) & set(os.environ) == {name}


def test_nothing_is_set_once_torch_has_loaded(monkeypatch):
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(threads, "busy_cores", lambda: 2.0)
    assert "torch" in sys.modules and threads.choose_threads() == {}  # OpenMP has read its settings
    assert not set(VARIABLES) & set(os.environ)


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="busy_cores reads Linux's /proc/stat")
def test_a_process_spinning_on_one_core_is_measured_and_a_fresh_process_leaves_it_its_core():
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        assert threads.busy_cores(0.5) >= 0.7  # one core, less what the scheduler gives others
        env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
        code = "import os, cvaelib, torch; print(os.environ.get('OMP_WAIT_POLICY'), torch.get_num_threads())"
        printed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.split()
        assert printed[0] == "PASSIVE" and 1 <= int(printed[1]) <= max(1, (os.cpu_count() or 1) - 1)
    finally:
        spinner.kill()
        spinner.wait()
