"""The `provbackup` command line: the ONLY place where exceptions become exit codes."""

from __future__ import annotations

import argparse
import os
import stat
import sys
import traceback
from typing import Sequence

from provbackup import __version__, config
from provbackup.exitcodes import ExitCode


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
    return parser


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
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except BaseException as e:  # noqa: BLE001 - the one place that turns crashes into a code
        if isinstance(e, SystemExit):
            raise
        print(f"provbackup: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        traceback.print_exc(file=sys.stderr)
        return ExitCode.INTERNAL_ERROR
