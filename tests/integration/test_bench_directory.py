"""bench/bench_directory.py runs on a fresh clone and measures what issue 7 asks.

A small run (200 VMs, few requests): the figures themselves are not checked (no timed
assertions), but each of the four is made and its correctness checks hold - the
daemon wrote nothing on other nodes' leaves, and a restart after 100 changes made
while it was stopped delivered exactly those 100.
"""

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def short_dir():
    """A scratch directory with a short path: the libvirtd socket lives below it."""
    path = Path(tempfile.mkdtemp(prefix="pbb-", dir="/var/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_directory_bench_makes_all_four_figures(short_dir):
    tmp_path = short_dir
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_directory.py"), "--vms", "200",
         "--sizes", "200", "--requests", "10", "--noise", "50", "--rounds", "1",
         "--dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = done.stdout
    for heading in ("### 1. Reaction latency: 10 requests, 200 VMs",
                    "### 2. Initial refresh from no cookie: 200 VMs",
                    "### 3. Restart with a cookie: 200 VMs",
                    "### 4. Noise from other nodes: 50 requests at once, 1 rounds, 200 VMs"):
        assert heading in report
    assert "Measurement failed" not in report
    assert "- target no write by this node on the 50 leaves of other nodes: met" in report
    assert "- target 100 changes while stopped, exactly those delivered: met " \
           "(100 added or changed, 0 deleted)" in report
    # Every figure has its baseline beside it.
    assert "**floor**: a plain syncrepl client" in report
    assert "baseline: `ldapsearch -E sync=ro/<the daemon's cookie>`" in report
    assert list(tmp_path.iterdir()) == [], "the bench left its scratch directory behind"
