"""The `provbackup` command line: the ONLY place where exceptions become exit codes."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import re
import stat
import sys
import traceback
from pathlib import Path
from typing import Sequence

from provbackup import __version__, config, locking, logs
from provbackup.exitcodes import ExitCode

# daemon.DEFAULT_STOP_TIMEOUT, repeated so that --help and check-config need not import
# the daemon (ldap3, libvirt); systemd/provbackup.service's TimeoutStopSec is above it.
STOP_TIMEOUT = 300.0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="provbackup",
        description="Backup daemon for the KVM nodes of a stoney cloud / FOSS-Cloud "
                    "installation: follows the LDAP directory and runs backup and "
                    "restore steps through libvirt.")
    parser.add_argument("-V", "--version", action="version", version=f"provbackup {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    check = commands.add_parser(
        "check-config", help="validate a configuration file and print the effective settings",
        description="Read the configuration file, report every problem in it (file, section, "
                    "key and what was expected), or print the effective configuration with "
                    "defaults filled in and the password masked.")
    _add_config_option(check)
    check.add_argument("-q", "--quiet", action="store_true",
                       help="print nothing when the file is valid")
    check.set_defaults(handler=_check_config)

    run = commands.add_parser(
        "run", help="run the daemon (in the foreground unless --detach)",
        description="Follow the directory and run this node's backup and restore steps "
                    "until SIGTERM or SIGINT. In the foreground by default, for systemd "
                    "(Type=notify); see docs/daemon.md.")
    _add_config_option(run)
    run.add_argument("--detach", action="store_true",
                     help="become a background daemon (for init systems without systemd)")
    run.add_argument("--pid-file", metavar="P", type=Path,
                     help="write the daemon's pid to this file (removed at exit)")
    run.add_argument("--lock-file", metavar="P", type=Path, default=locking.DEFAULT_LOCK_FILE,
                     help=f"the one-instance-per-node lock (default: {locking.DEFAULT_LOCK_FILE})")
    run.add_argument("--stop-timeout", metavar="SECONDS", type=_seconds,
                     default=STOP_TIMEOUT,
                     help="on SIGTERM, how long running steps may take to finish before "
                          "they are abandoned (default: %(default).0f)")
    run.add_argument("--journal", action="store_true",
                     help="log to the systemd journal even when not started by systemd")
    run.set_defaults(handler=_run)
    _add_operator_commands(commands)
    return parser


_NEEDS_DAEMON = ("It acts as the control instance: it writes each request into the leaf and "
                 "waits for the answer, so `provbackup run` must be active on the VM's node "
                 "(sstNode). It stops at the first step that fails.")


def _add_operator_commands(commands) -> None:
    """status, explain, backup, restore and verify (issue 6 item 6; docs/operator.md)."""
    status = commands.add_parser(
        "status", help="the newest backup of each VM of this node",
        description="One line per VM whose sstNode is this node's ENVIRONMENT: its newest "
                    "backup leaf, mode, return value and how long ago it was answered.")
    _add_config_option(status)
    status.set_defaults(handler=_status)

    explain = commands.add_parser(
        "explain", help="a VM's disks, DHCP entry and resolved backup configuration",
        description="Show the VM's disks and DHCP entry and its effective backup "
                    "configuration, each value with the entry it came from (or 'default').")
    _add_config_option(explain)
    explain.add_argument("vm", metavar="VM", help="the VM's name (sstVirtualMachine)")
    explain.set_defaults(handler=_explain)

    backup = commands.add_parser(
        "backup", help="back a VM up now through the daemon of its node",
        description="Create a backup leaf and request snapshot, merge and retain on it. "
                    + _NEEDS_DAEMON)
    _add_config_option(backup)
    backup.add_argument("vm", metavar="VM", help="the VM's name (sstVirtualMachine)")
    backup.add_argument("--date", type=_backup_date, metavar="YYYYmmddTHHMMSSZ",
                        help="the leaf's name (default: local time, seconds 00, a literal Z, "
                             "as the broker writes it)")
    _add_timeout_option(backup)
    backup.set_defaults(handler=_backup)

    restore = commands.add_parser(
        "restore", help="restore a VM from a backup through the daemon of its node",
        description="Request unretainSmallFiles and unretainLargeFiles on the leaf DATE, "
                    "destroy and undefine the domain (through LIBVIRT_URI), then request "
                    "restore. " + _NEEDS_DAEMON)
    _add_config_option(restore)
    restore.add_argument("vm", metavar="VM", help="the VM's name (sstVirtualMachine)")
    restore.add_argument("date", type=_backup_date, metavar="DATE",
                         help="the backup leaf (its ou, YYYYmmddTHHMMSSZ)")
    _add_timeout_option(restore)
    restore.set_defaults(handler=_restore)

    verify = commands.add_parser(
        "verify", help="check a backup directory against its checksum manifest",
        description="Recompute the SHA-256 of every file the manifest of the backup lists. "
                    "Without DATE: the newest leaf whose mode is retained or finished.")
    _add_config_option(verify)
    verify.add_argument("vm", metavar="VM", help="the VM's name (sstVirtualMachine)")
    verify.add_argument("date", type=_backup_date, metavar="DATE", nargs="?",
                        help="the backup leaf (its ou, YYYYmmddTHHMMSSZ)")
    verify.set_defaults(handler=_verify)


def _add_timeout_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", metavar="SECONDS", type=_seconds, default=3600.0,
                        help="how long to wait for the answer to each step "
                             "(default: %(default).0f)")


def _backup_date(text: str) -> str:
    if not re.fullmatch(r"\d{8}T\d{6}Z", text):
        raise argparse.ArgumentTypeError(f"expected YYYYmmddTHHMMSSZ, got {text!r}")
    return text


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 <= value <= 86400:
        raise argparse.ArgumentTypeError("expected seconds from 0 to 86400")
    return value


def _add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", metavar="FILE", default=str(config.DEFAULT_PATH),
                        help=f"configuration file (default: {config.DEFAULT_PATH})")


def _check_config(args: argparse.Namespace) -> ExitCode:
    cfg = config.load(args.config)
    for warning in cfg.warnings + _exposure_warnings(cfg):
        print(f"provbackup: warning: {warning}", file=sys.stderr)
    if not args.quiet:
        print(f"# effective configuration of {cfg.path} (node {cfg.node})")
        print(config.render(cfg), end="")
    return ExitCode.OK


def _exposure_warnings(cfg: config.Config) -> tuple[str, ...]:
    """A password kept in a file that others may read deserves a word."""
    if cfg.ldap.password_file is not None:
        return ()
    mode = stat.S_IMODE(os.stat(cfg.path).st_mode)
    if mode & 0o077:
        return (f"{cfg.path}: [Database] ADMIN_PASSWORD is in a file accessible by group or "
                f"others (mode {mode:04o}); prefer PASSWORD_FILE with mode 0600",)
    return ()


def _run(args: argparse.Namespace) -> ExitCode:
    """`provbackup run`: lock, maybe detach, log, and run the daemon until a signal."""
    # Imported here: check-config must work without libvirt and systemd bindings.
    from provbackup.daemon import Daemon, UnavailableError

    cfg = config.load(args.config)
    for warning in cfg.warnings + _exposure_warnings(cfg):
        print(f"provbackup: warning: {warning}", file=sys.stderr)
    # Absolute before --detach changes the working directory to /.
    lock_path = args.lock_file.absolute()
    pid_path = args.pid_file.absolute() if args.pid_file else None
    # The lock comes before detaching, so that "already running" reaches the terminal
    # and its exit code the caller; the detached child inherits the flock().
    with locking.InstanceLock(lock_path) as lock:
        with _detached(lock) if args.detach else contextlib.nullcontext():
            lock.write_pid()  # the pid may have changed
            # Logging only now: DaemonContext closes every descriptor it does not
            # know, and a journal socket opened before would be among them.
            logs.setup(cfg.log_level, journal=True if args.journal else None)
            with locking.PidFile(pid_path) if pid_path else contextlib.nullcontext():
                try:
                    Daemon(cfg, stop_timeout=args.stop_timeout).run()
                except UnavailableError as e:
                    print(f"provbackup: unavailable: {e}", file=sys.stderr)
                    return ExitCode.UNAVAILABLE
    return ExitCode.OK


def _operator(args: argparse.Namespace, command) -> ExitCode:
    """Load the configuration, open ONE directory connection and run `command` on it."""
    # Imported here: check-config must work without the directory's dependencies.
    from provbackup.directory.reader import DirectoryReader

    cfg = config.load(args.config)
    with DirectoryReader.open(cfg.ldap) as reader:
        command(reader, cfg)
    return ExitCode.OK


def _status(args: argparse.Namespace) -> ExitCode:
    from provbackup.commands import report

    now = datetime.datetime.now(datetime.timezone.utc)
    return _operator(args, lambda reader, cfg: report.status(reader, cfg, sys.stdout, now))


def _explain(args: argparse.Namespace) -> ExitCode:
    from provbackup.commands import report

    return _operator(args, lambda reader, cfg: report.explain(reader, cfg, args.vm, sys.stdout))


def _verify(args: argparse.Namespace) -> ExitCode:
    from provbackup.commands import report

    return _operator(args, lambda reader, cfg: report.verify(reader, cfg, args.vm, args.date,
                                                             sys.stdout))


def _backup(args: argparse.Namespace) -> ExitCode:
    from provbackup.commands import control

    date = args.date or control.default_backup_date(datetime.datetime.now())
    return _operator(args, lambda reader, cfg: control.backup(reader, cfg, args.vm, date,
                                                              sys.stdout, args.timeout))


def _restore(args: argparse.Namespace) -> ExitCode:
    from provbackup.commands import control
    from provbackup.hypervisor.libvirt import LibvirtHypervisor

    def run(reader, cfg: config.Config) -> None:
        hypervisor = LibvirtHypervisor(cfg.libvirt_uri)
        try:
            control.restore(reader, cfg, args.vm, args.date, sys.stdout, hypervisor,
                            args.timeout)
        finally:
            hypervisor.close()
    return _operator(args, run)


def _failure_code(e: BaseException) -> ExitCode | None:
    """The exit code of an operator command's failure, None if it is not one (a bug)."""
    from provbackup.commands import CommandFailed
    from provbackup.errors import StepError

    if isinstance(e, (CommandFailed, StepError)):
        return ExitCode.COMMAND_FAILED
    # Imported only now: the module needs ldap3, which check-config does not.
    from provbackup.directory.connection import (DirectoryAuthError, DirectoryError,
                                                 DirectoryTLSError, DirectoryUnavailable)

    if isinstance(e, (DirectoryUnavailable, DirectoryAuthError, DirectoryTLSError)):
        return ExitCode.UNAVAILABLE
    if isinstance(e, DirectoryError):
        return ExitCode.COMMAND_FAILED
    return None


def _detached(lock: locking.InstanceLock):
    """python-daemon's DaemonContext: fork, setsid, cwd /, umask 027, stdin/stdout null."""
    import daemon  # python-daemon

    # stderr stays where the caller (an init script) pointed it: the log goes there
    # unless --journal. Our handlers replace its SIGTERM mapping after it opens.
    return daemon.DaemonContext(working_directory="/", umask=0o027,
                                files_preserve=[lock.fileno()], stderr=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except config.ConfigError as e:
        print("provbackup: configuration error:", file=sys.stderr)
        for problem in e.problems:
            print(f"  {problem}", file=sys.stderr)
        return ExitCode.CONFIG_ERROR
    except locking.AlreadyRunningError as e:
        print(f"provbackup: {e}", file=sys.stderr)
        return ExitCode.ALREADY_RUNNING
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except BaseException as e:  # noqa: BLE001 - the one place that turns crashes into a code
        if isinstance(e, SystemExit):
            raise
        code = _failure_code(e) if isinstance(e, Exception) else None
        if code is not None:
            print(f"provbackup: {e}", file=sys.stderr)
            return code
        print(f"provbackup: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        traceback.print_exc(file=sys.stderr)
        return ExitCode.INTERNAL_ERROR
