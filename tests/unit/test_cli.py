"""The installed `provbackup` command: help, check-config, exit codes."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from provbackup.exitcodes import ExitCode

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "etc" / "provbackup.conf.example"


def provbackup(*args: str) -> subprocess.CompletedProcess:
    """Run the console script that `pip install .` put beside this interpreter."""
    script = Path(sys.executable).parent / "provbackup"
    command = str(script) if script.exists() else shutil.which("provbackup")
    assert command, "the provbackup console script is not installed (pip install .)"
    return subprocess.run([command, *args], capture_output=True, text=True, timeout=60,
                          check=False)


@pytest.mark.parametrize("args", [("--help",), ("check-config", "--help")])
def test_help_works(args):
    """`--help` of the command and of check-config print usage and exit 0."""
    result = provbackup(*args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: provbackup")


def test_check_config_of_the_example_succeeds_and_masks_the_password():
    """check-config prints the effective settings with the password masked."""
    result = provbackup("check-config", "-c", str(EXAMPLE))
    assert result.returncode == ExitCode.OK, result.stderr
    assert "ADMIN_PASSWORD = ********" in result.stdout
    assert "change-me" not in result.stdout + result.stderr
    assert "LIBVIRT_URI = qemu:///system\n" in result.stdout
    assert "TIMEOUT = 30\n" in result.stdout and "TLS_VERIFY = 1\n" in result.stdout


def test_check_config_reports_problems_with_the_config_exit_code(tmp_path):
    """A wrong file exits 78 with one line per problem and no traceback."""
    bad = tmp_path / "bad.conf"
    bad.write_text(EXAMPLE.read_text().replace("PORT = 389", "PORT = many")
                   .replace("TLS = starttls", "TLS = always"))
    result = provbackup("check-config", "-c", str(bad))
    assert result.returncode == ExitCode.CONFIG_ERROR
    assert "Traceback" not in result.stderr
    assert f"{bad}: [Database] PORT: expected a whole number" in result.stderr
    assert f"{bad}: [Database] TLS: expected one of" in result.stderr


def test_missing_config_file_is_a_config_error(tmp_path):
    """A path that does not exist is a configuration error, not a crash."""
    result = provbackup("check-config", "-c", str(tmp_path / "nope.conf"))
    assert result.returncode == ExitCode.CONFIG_ERROR
    assert "nope.conf: no such file" in result.stderr


def test_unknown_command_is_a_usage_error():
    """An unknown subcommand exits with the usage code."""
    result = provbackup("frobnicate")
    assert result.returncode == ExitCode.USAGE
    assert "invalid choice" in result.stderr


def test_version():
    """--version names the program and its version."""
    result = provbackup("--version")
    assert result.returncode == 0 and result.stdout.startswith("provbackup ")
