"""What every stage shares: SIGTERM ends the stage like Ctrl-C, and never reaches its pool workers' handlers."""

import subprocess
import sys

STAGE_WITH_POOLS = """
import multiprocessing, signal
from faceage.stage import stop_on_sigterm

def handler(_):
    return signal.getsignal(signal.SIGTERM) == signal.SIG_DFL

stop_on_sigterm()
assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None)
for _ in range(20):  # each pool's exit terminates its workers with SIGTERM
    with multiprocessing.get_context("fork").Pool(2) as pool:
        assert all(pool.map(handler, range(8)))
try:
    signal.raise_signal(signal.SIGTERM)
except SystemExit as stopped:
    print("stopped", stopped.code)
"""


def test_sigterm_stops_the_stage_as_an_exit_and_pool_workers_keep_the_default():
    result = subprocess.run([sys.executable, "-c", STAGE_WITH_POOLS], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "stopped 143"
