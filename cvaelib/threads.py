"""How many threads torch uses and how they wait: chosen once, when ``cvaelib`` is imported, before torch loads.

A thread of torch's OpenMP pool (libgomp) that waits for work spins on its core for a while (about
3 ms) before it sleeps, and torch starts one thread per core. On a machine of its own that is
fastest. Beside another busy process (a classroom laptop, a shared server) one of those threads
shares its core with the other process, every parallel region waits for it, and the spinning of the
others takes the core from it too: chapter 1's smoke run went from about a minute to more than seven.
So ``cvaelib`` looks at the machine when it is imported: if other processes keep half a core or more
busy, torch uses only the cores left free (``OMP_NUM_THREADS``) and its threads sleep at once while
they wait (``OMP_WAIT_POLICY=PASSIVE``); on an idle machine it changes nothing, since passive waiting
alone slowed an idle chapter 1 by half. ``benchmarks/contention.py`` measures these choices. OpenMP
reads the variables when torch loads, so they only matter before the first ``import torch``; a
value the user set (``OMP_NUM_THREADS``, ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``) is always kept.
"""

import os
import sys
import time

BUSY_CORES = 0.5  # other processes' load, in cores, from which torch keeps to the free cores and waits passively


def busy_cores(seconds: float = 0.1) -> float | None:
    """Cores kept busy by the machine's processes over the next ``seconds`` (None without Linux's /proc/stat).

    This process sleeps meanwhile, so what is measured is everybody else.
    """

    def read():  # the first line of /proc/stat: user nice system idle iowait irq softirq steal ... (ticks)
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
        return sum(ticks), ticks[3] + ticks[4]

    try:
        total, idle = read()
        time.sleep(seconds)
        total_after, idle_after = read()
    except (OSError, ValueError, IndexError):
        return None
    if total_after <= total:
        return None
    return (os.cpu_count() or 1) * (1 - (idle_after - idle) / (total_after - total))


def choose_threads() -> dict:
    """On a busy machine, and where nobody chose yet: the free cores and passive waiting; what was set."""
    chosen = {"OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & set(os.environ)
    if chosen or "torch" in sys.modules:
        return {}  # the user's choice, or too late: OpenMP has read its settings
    busy = busy_cores()
    if busy is None or busy < BUSY_CORES:
        return {}
    cores = os.cpu_count() or 1
    settings = {"OMP_NUM_THREADS": str(max(1, round(cores - busy))), "OMP_WAIT_POLICY": "PASSIVE"}
    os.environ.update(settings)
    return settings
