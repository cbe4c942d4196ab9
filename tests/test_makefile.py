"""The Makefile's set-up options, read from what `make -n` would run (nothing is installed)."""

import subprocess

from conftest import REPO

CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def setup_commands(*options: str) -> str:
    """The commands `make setup` would run were requirements.txt newer than the install."""
    result = subprocess.run(
        ["make", "-n", "-W", "requirements.txt", "setup", *options], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_cpu_only_torch_comes_from_the_index_given_and_the_default_adds_none():
    assert f"pip install --quiet --extra-index-url {CPU_INDEX} --requirement requirements.txt" in setup_commands(
        f"TORCH_INDEX={CPU_INDEX}"
    )
    assert "--extra-index-url" not in setup_commands() and "--requirement requirements.txt" in setup_commands()
