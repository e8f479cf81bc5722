"""Run the benchmarks and write docs/performance.md (`make bench`).

    .venv/bin/python bench/report.py [--quick] [--only NAME] [--output PATH]

Runs, in order, bench/bench_directory.py, bench_backup.py, bench_restore.py and
bench_copy.py, each as a subprocess with the project's virtualenv python: its stdout
(Markdown) is captured and goes verbatim into the report, its stderr (progress) passes
through. The report starts with what a reader needs to judge the figures - date, machine,
versions, the provbackup commit - because each bench measures against a baseline taken in
the same run on the same machine, and the ratios only mean something on that machine.

--quick passes each bench its small sizes (a check that everything works, not figures to
keep); --only runs some of them (may be repeated). A bench that fails still gets its
section, with what it printed and its exit code; report.py then exits 1 after writing the
report.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
CHILDREN: list[subprocess.Popen] = []  # the bench running now, for forward_and_stop


@dataclass(frozen=True)
class Benchmark:
    name: str
    script: str
    title: str
    quick: tuple[str, ...]  # the arguments of a quick run


BENCHMARKS = (
    Benchmark("directory", "bench_directory.py",
              "Directory: reaction latency, initial refresh, restart, noise", ("--quick",)),
    Benchmark("backup", "bench_backup.py",
              "Backup: guest downtime, merge cost, node I/O", ("--quick",)),
    Benchmark("restore", "bench_restore.py", "Restore throughput",
              ("--disk-mib", "64", "--state-mib", "16", "--repeat", "1")),
    Benchmark("copy", "bench_copy.py", "Copy throughput",
              ("--size-mib", "64", "--repeat", "1")),
)


@dataclass(frozen=True)
class Result:
    bench: Benchmark
    args: list[str]
    stdout: str
    returncode: int
    seconds: float


def python() -> str:
    """The virtualenv's python (the benches import provbackup, ldap3, libvirt)."""
    return str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable


def first_line(argv: list[str]) -> str:
    """The first non-empty line a version command prints (stdout or stderr)."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unknown ({e})"
    lines = [line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    return lines[0] if lines else "unknown"


def program(name: str) -> str:
    """A program's path, also from sbin (slapd)."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin") \
        or name


def cpu_model() -> str:
    found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
    return found[1].strip() if found else platform.machine()


def ram_gib() -> float:
    found = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
    return int(found[1]) / 1024 ** 2


def debian() -> str:
    release = Path("/etc/os-release")
    pretty = re.search(r'^PRETTY_NAME="?([^"\n]*)', release.read_text(), re.M) \
        if release.exists() else None
    version = Path("/etc/debian_version")
    point = version.read_text().strip() if version.exists() else "?"
    return f"{pretty[1] if pretty else 'unknown'} ({point})"


def python_packages() -> str:
    """Versions of the Python side, as the virtualenv's python sees them."""
    code = ("import importlib.metadata as m, platform\n"
            "print(f'Python {platform.python_version()}, ldap3 {m.version(\"ldap3\")}, '"
            "      f'libvirt-python {m.version(\"libvirt-python\")}')")
    return first_line([python(), "-c", code])


def slapd_version() -> str:
    line = first_line([program("slapd"), "-VV"])
    # "@(#) $OpenLDAP: slapd 2.5.13+dfsg-5 (Feb  8 2023 01:56:12) $"
    return re.sub(r"^@\(#\) \$OpenLDAP: |\s*\$$", "", line)


def commit() -> str:
    done = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO,
                          capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def header(quick: bool, names: list[str]) -> list[str]:
    """The top of the report: what it is, then the machine and the versions."""
    now = datetime.datetime.now(datetime.timezone.utc)
    lines = [
        "# Performance",
        "",
        f"Written by `bench/report.py` (`make bench`) on {now:%Y-%m-%d %H:%M} UTC; run it "
        "again rather than editing this file. Each benchmark measures provbackup against a "
        "baseline taken in the same run on the same machine (these machines are noisy) and "
        "gives the ratio; the sections below are the benchmarks' own output, verbatim. "
        "How the backup benchmark measures, and what its figures mean, is explained in "
        "[performance-backup.md](performance-backup.md).",
        "",
    ]
    if quick:
        lines += ["**Quick run** (`--quick`: small sizes, single runs): it shows that the "
                  "benchmarks work, its figures are not the ones to quote.", ""]
    if len(names) < len(BENCHMARKS):
        lines += [f"Only: {', '.join(names)}.", ""]
    lines += [
        "## Machine and versions",
        "",
        f"- machine: {cpu_model()}, {os.cpu_count()} cores, {ram_gib():.1f} GiB RAM",
        f"- system: {debian()}, Linux {platform.release()}",
        f"- {python_packages()}",
        f"- slapd: {slapd_version()}",
        f"- libvirt: {Path(first_line([program('libvirtd'), '--version'])).name}",
        f"- QEMU: {first_line(['qemu-system-x86_64', '--version'])}",
        f"- qemu-img: {first_line(['qemu-img', '--version'])}",
        f"- provbackup: {commit()} (`git describe --always --dirty`)",
        "",
    ]
    return lines


def run(bench: Benchmark, quick: bool) -> Result:
    """One benchmark as a subprocess: stdout captured, stderr straight to ours.

    On Ctrl-C the bench got the same SIGINT (same process group) and cleans up; we wait
    for that rather than kill it, which would leave its slapd or libvirtd behind.
    """
    args = list(bench.quick if quick else ())
    argv = [python(), str(BENCH / bench.script), *args]
    print(f"report.py: running bench/{bench.script} {' '.join(args)}", file=sys.stderr,
          flush=True)
    start = time.monotonic()
    proc = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            text=True)
    CHILDREN.append(proc)
    try:
        stdout, _ = proc.communicate()
    except KeyboardInterrupt:
        print(f"report.py: interrupted; waiting for {bench.script} to clean up",
              file=sys.stderr, flush=True)
        proc.communicate()
        raise
    finally:
        CHILDREN.remove(proc)
    seconds = time.monotonic() - start
    print(f"report.py: {bench.script} exited with {proc.returncode} after {seconds:.0f} s",
          file=sys.stderr, flush=True)
    return Result(bench, args, stdout, proc.returncode, seconds)


def section(result: Result) -> list[str]:
    command = " ".join(["python", f"bench/{result.bench.script}", *result.args])
    lines = [f"## {result.bench.title}", "",
             f"`{command}`, {result.seconds / 60:.1f} min"
             + ("" if result.returncode == 0 else
                f"; **it exited with {result.returncode}**: the measurement failed (see "
                "its output below, and its stderr)"), ""]
    lines += [result.stdout.rstrip() or "(it printed nothing)", ""]
    return lines


def reproduce() -> list[str]:
    return [
        "## How to reproduce",
        "",
        "As root on a Debian 12 machine, from a clone of this repository:",
        "",
        "```sh",
        "make bench                                  # installs what it needs, runs all, "
        "writes docs/performance.md",
        "make bench BENCH_ARGS=--quick               # small sizes: does everything work",
        ".venv/bin/python bench/report.py --only directory   # some of them (directory, "
        "backup, restore, copy)",
        ".venv/bin/python bench/bench_directory.py --only latency   # one bench, one figure, "
        "to stdout",
        "```",
        "",
        "Each bench removes everything it started (slapd, libvirtd, guests, the daemon, "
        "scratch directories under /var/tmp), also after Ctrl-C or a failure.",
        "",
    ]


def forward_and_stop(signum, _frame):
    """SIGTERM or SIGHUP: pass it on to the running bench (it cleans up), then stop."""
    for child in CHILDREN:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    names = [b.name for b in BENCHMARKS]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--quick", action="store_true",
                        help="pass each bench its small sizes: a check that all works")
    parser.add_argument("--only", choices=names, action="append",
                        help="run only this benchmark (may be repeated)")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "performance.md")
    args = parser.parse_args()
    chosen = [b for b in BENCHMARKS if b.name in (args.only or names)]
    lines = header(args.quick, [b.name for b in chosen])
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward_and_stop)
    results = []
    try:
        for bench in chosen:
            results.append(run(bench, args.quick))
            lines += section(results[-1])
    except KeyboardInterrupt as e:
        print(f"report.py: interrupted ({e or 'Ctrl-C'}); {args.output} left as it was",
              file=sys.stderr)
        return 130
    lines += reproduce()
    temporary = args.output.with_name(args.output.name + ".tmp")
    temporary.write_text("\n".join(lines))
    temporary.replace(args.output)
    failed = [r.bench.script for r in results if r.returncode != 0]
    print(f"report.py: wrote {args.output}" + (f"; FAILED: {', '.join(failed)}" if failed
                                              else ""), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
