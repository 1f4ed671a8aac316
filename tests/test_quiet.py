"""`tools/quiet.py`, which `make test` and `make bench` run their commands through: start-up noise written to
file descriptor 2 by a child, or by the child's own child, is dropped; other lines and the exit status are not."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOISE = "E0000 00:00:1796327290.504931    6123 cuda_platform.cc:52] failed call to cuInit: UNKNOWN ERROR (303)"
REAL = "E0000 00:00:1796327290.504931    6123 some_op.cc:12] a real native error"


def quiet(*command):
    return subprocess.run([sys.executable, str(ROOT / "tools" / "quiet.py"), *command],
                          capture_output=True, text=True, timeout=120)


def test_drops_noise_of_children_and_grandchildren_keeps_the_rest_and_the_exit_status():
    grandchild = f"import os; os.write(2, b'{NOISE}\\n')"
    child = (f"import os, subprocess, sys; os.write(2, b'{NOISE}\\n{REAL}\\n'); print('out');"
             f"subprocess.run([sys.executable, '-c', {grandchild!r}]); sys.exit(3)")
    run = quiet(sys.executable, "-c", child)
    assert run.returncode == 3
    assert run.stdout == "out\n"
    assert run.stderr.splitlines() == [REAL]  # the glog-style error that is not start-up noise stays


def test_without_a_command_it_says_how_to_use_it():
    run = quiet()
    assert run.returncode == 2 and "usage: python tools/quiet.py COMMAND" in run.stderr
