"""What every stage shares: SIGTERM ends the stage like Ctrl-C, and never reaches its pool workers' handlers;
a fault of the machine (no space, read-only, forbidden) ends it in one line."""

import errno
import os
import subprocess
import sys

import pytest

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


KILLED_AT_BIRTH = """
import os, signal, time
from faceage.stage import stop_on_sigterm

stop_on_sigterm()
lost = 0
for _ in range(20):
    child = os.fork()
    if child == 0:  # lives on unless SIGTERM ends it
        time.sleep(2)
        os._exit(0)
    os.kill(child, signal.SIGTERM)  # at once: the child may not have run yet, as when a pool ends early
    _, status = os.waitpid(child, 0)
    lost += not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM)
print("lost", lost)
"""


def test_a_sigterm_sent_to_a_child_as_it_is_forked_still_ends_it():
    result = subprocess.run([sys.executable, "-c", KILLED_AT_BIRTH], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "lost 0"


FAULTY_STAGE = """
import errno, os, sys
from pathlib import Path
from faceage.stage import run_stage, write_json

def main():
    if sys.argv[1] == "full":  # writing to /dev/full fails as a full disk does
        os.symlink("/dev/full", "report.json")
        write_json({"a": 1}, "report.json")
    raise OSError(int(sys.argv[1]), os.strerror(int(sys.argv[1])), "data/ingested/images.npy")

run_stage(main)
"""


@pytest.mark.parametrize("fault", ["full", errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT])
def test_environment_faults_end_a_stage_in_one_line_naming_the_path_and_cause(tmp_path, fault):
    command = [sys.executable, "-c", FAULTY_STAGE, str(fault)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    path, cause = ("report.json", "No space left on device") if fault == "full" else ("data/ingested/images.npy", "")
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"error: {path}: {cause or os.strerror(fault)}")


def test_other_errors_keep_their_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-c", FAULTY_STAGE, str(errno.ENOENT)], capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" in result.stderr  # a bug to see, not a machine's fault
