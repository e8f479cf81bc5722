"""The daemon's configuration file: the original KVM.conf INI format, plus our keys.

`load(path)` returns a frozen `Config` or raises `ConfigError` listing every problem
found, each naming the file, the section, the key and what was expected. The keys
and their types are declared once, in `KEYS` (provbackup/configkeys.py); this module
only reads, checks and assembles.
"""

from __future__ import annotations

import ast
import configparser
import dataclasses
import difflib
import os
import re
import stat
from pathlib import Path

from provbackup.configkeys import KEYS, KNOWN_SECTIONS, REQUIRED, Key

DEFAULT_PATH = Path("/etc/provbackup/provbackup.conf")

# The original template's placeholders look like <FOSS-CLOUD-NODE-NAME>; a value that
# still holds one was never filled in, and would otherwise fail much later and obscurely.
_PLACEHOLDER = re.compile(r"<[A-Z0-9][A-Z0-9_-]*>")

# Stands for a value that was given but is wrong (already reported), so that the
# checks across keys neither use it nor report it again as missing.
_INVALID = object()


class Secret(str):
    """A string that never shows itself in repr, str() of containers or logs."""

    def __repr__(self) -> str:
        return "Secret('********')"

    def reveal(self) -> str:
        """The real value, for the one place that needs it (the LDAP bind)."""
        return str.__str__(self)


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong with the configuration file."""

    path: Path
    section: str | None
    key: str | None
    message: str

    def __str__(self) -> str:
        where = str(self.path)
        if self.section is not None:
            where += f": [{self.section}]"
        if self.key is not None:
            where += f" {self.key}"
        return f"{where}: {self.message}"


class ConfigError(Exception):
    """The configuration file cannot be used; `problems` says every reason."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclasses.dataclass(frozen=True)
class LdapSettings:
    """How to reach and follow the directory."""

    server: str
    port: int
    tls: str  # none | starttls | ldaps
    tls_ca_file: Path | None
    tls_verify: bool
    bind_dn: str
    password: Secret = dataclasses.field(repr=False)
    password_file: Path | None
    timeout: int
    service_subtree: str
    cloud_wide_dn: str
    cookie_file: Path
    default_cookie: str
    search_filter: str

    @property
    def uri(self) -> str:
        """The LDAP URI of the server (ldaps:// only with TLS = ldaps)."""
        scheme = "ldaps" if self.tls == "ldaps" else "ldap"
        host = f"[{self.server}]" if ":" in self.server else self.server
        return f"{scheme}://{host}:{self.port}"


@dataclasses.dataclass(frozen=True)
class Config:
    """The whole effective configuration of one node's daemon."""

    path: Path
    node: str
    log_level: str  # DEBUG | INFO | WARNING | ERROR | CRITICAL
    ldap: LdapSettings
    libvirt_uri: str
    max_concurrent_steps: int
    state_directory: Path
    reconnect_sleep: int
    reconnect_attempts: int
    values: dict = dataclasses.field(repr=False, compare=False)
    #: (section, key) pairs not in the file, whose value is the default
    defaulted: frozenset = frozenset()
    warnings: tuple[str, ...] = ()


def load(path: str | os.PathLike) -> Config:
    """Read, check and assemble the configuration file at `path`."""
    path = Path(path)
    parser = _read(path)
    problems: list[Problem] = []
    warnings: list[str] = []
    tolerate = _tolerate_unknown(parser)
    _check_names(path, parser, tolerate, problems, warnings)
    values: dict[tuple[str, str], object] = {}
    defaulted = set()
    for key in KEYS:
        raw = _raw_value(parser, key)
        if raw is None:
            if key.default is REQUIRED:
                problems.append(Problem(path, key.section, key.name, "is required but missing"))
            values[key.section, key.name] = None if key.default is REQUIRED else key.default
            defaulted.add((key.section, key.name))
            continue
        values[key.section, key.name] = _INVALID
        match = _PLACEHOLDER.search(raw)
        if match and not key.ignored:
            problems.append(Problem(
                path, key.section, key.name,
                f"still holds the template placeholder {match.group(0)}; "
                f"put this node's real value there"))
            continue
        try:
            values[key.section, key.name] = key.parse(raw)
        except ValueError as e:
            problems.append(Problem(path, key.section, key.name, f"{e}, got {_shown(key, raw)}"))
    cloud_wide = _one_of(path, values, problems, "Database",
                         "STONEY_CLOUD_WIDE_CONFIGURATION", "FOSS_CLOUD_WIDE_CONFIGURATION")
    password, password_file = _password(path, values, problems)
    if problems:
        raise ConfigError(problems)
    return _assemble(path, values, frozenset(defaulted), cloud_wide, password, password_file,
                     tuple(warnings))


def _read(path: Path) -> configparser.ConfigParser:
    """Parse the INI text; syntax errors become one precise Problem."""
    # No interpolation: SEARCH_FILTER holds a literal %entryCSN%. Keys keep their case,
    # as in the original (Config::IniFiles is case-sensitive).
    parser = configparser.ConfigParser(interpolation=None, strict=True,
                                       default_section="\x00no-default\x00")
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([Problem(path, None, None, "no such file")]) from None
    except IsADirectoryError:
        raise ConfigError([Problem(path, None, None, "is a directory, not a file")]) from None
    except PermissionError:
        raise ConfigError([Problem(path, None, None, "permission denied")]) from None
    except UnicodeDecodeError as e:
        raise ConfigError([Problem(path, None, None, f"is not UTF-8 text ({e.reason})")]) from None
    try:
        parser.read_string(text, source=str(path))
    except configparser.MissingSectionHeaderError as e:
        raise ConfigError([Problem(
            path, None, None,
            f"line {e.lineno}: a key before any [section]: {e.line.strip()!r}")]) from None
    except (configparser.DuplicateSectionError, configparser.DuplicateOptionError) as e:
        raise ConfigError([Problem(path, None, None, _duplicate_message(e))]) from None
    except configparser.ParsingError as e:
        lines = "; ".join(f"line {n}: {_unquote(line)!r}" for n, line in e.errors)
        raise ConfigError([Problem(path, None, None, f"not INI syntax at {lines}")]) from None
    return parser


def _unquote(line: str) -> str:
    """configparser hands over repr() of the offending line; show the line itself."""
    try:
        value = ast.literal_eval(line)
    except (ValueError, SyntaxError):
        return line.strip()
    return value.strip() if isinstance(value, str) else line.strip()


def _duplicate_message(e: configparser.Error) -> str:
    if isinstance(e, configparser.DuplicateOptionError):
        return f"line {e.lineno}: [{e.section}] {e.option} is set twice"
    return f"line {e.lineno}: section [{e.section}] appears twice"  # type: ignore[attr-defined]


def _tolerate_unknown(parser: configparser.ConfigParser) -> bool:
    """Whether the file opts in to keys and sections provbackup does not know."""
    raw = parser.get("Daemon", "IGNORE_UNKNOWN_KEYS", fallback="0")
    return raw.strip().lower() in ("1", "true", "yes", "on")


def _check_names(path: Path, parser: configparser.ConfigParser, tolerate: bool,
                 problems: list[Problem], warnings: list[str]) -> None:
    """Every section and key must be one we know, unless the file opts out."""
    known_keys = {(k.section, k.name) for k in KEYS}
    for section in parser.sections():
        if section not in KNOWN_SECTIONS:
            _unknown(path, section, None, _hint(section, KNOWN_SECTIONS),
                     tolerate, problems, warnings)
            continue
        names = [k.name for k in KEYS if k.section == section]
        for name in parser.options(section):
            if (section, name) not in known_keys:
                _unknown(path, section, name, _hint(name, names), tolerate, problems, warnings)


def _unknown(path: Path, section: str, key: str | None, hint: str, tolerate: bool,
             problems: list[Problem], warnings: list[str]) -> None:
    what = "unknown key" if key else "unknown section"
    if tolerate:
        warnings.append(str(Problem(path, section, key, f"{what}, ignored")))
    else:
        problems.append(Problem(
            path, section, key,
            f"{what}{hint} (set [Daemon] IGNORE_UNKNOWN_KEYS = 1 if other tools share this file)"))


def _hint(name: str, candidates) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    if not close:
        close = [c for c in candidates if c.lower() == name.lower()]
    return f"; did you mean {close[0]!r}?" if close else ""


def _raw_value(parser: configparser.ConfigParser, key: Key) -> str | None:
    if not parser.has_option(key.section, key.name):
        return None
    raw = parser.get(key.section, key.name).strip()
    # An empty value (e.g. the template's "DSA_FILE =") means "not set".
    return raw or None


def _shown(key: Key, raw: str) -> str:
    return "a value (not shown)" if key.secret else repr(raw)


def _one_of(path: Path, values: dict, problems: list[Problem], section: str,
            name: str, old_name: str) -> str | None:
    """The value of a key that also has an older spelling; both must agree."""
    new, old = values.get((section, name)), values.get((section, old_name))
    if _INVALID in (new, old):
        return None
    if new is not None and old is not None and new != old:
        problems.append(Problem(path, section, name,
                                f"and {old_name} are both set and differ; keep one"))
    elif new is None and old is None:
        problems.append(Problem(path, section, name,
                                f"is required but missing (the older name {old_name} "
                                f"is accepted too)"))
    return new if new is not None else old


def _password(path: Path, values: dict, problems: list[Problem]) -> tuple[Secret, Path | None]:
    """The bind password, from ADMIN_PASSWORD or from PASSWORD_FILE (exactly one)."""
    inline = values.get(("Database", "ADMIN_PASSWORD"))
    pwfile = values.get(("Database", "PASSWORD_FILE"))
    if _INVALID in (inline, pwfile):
        return Secret(""), None
    if inline is not None and pwfile is not None:
        problems.append(Problem(path, "Database", "PASSWORD_FILE",
                                "and ADMIN_PASSWORD are both set; keep one (the file is safer)"))
        return Secret(""), None
    if pwfile is None:
        if inline is None:
            problems.append(Problem(path, "Database", "PASSWORD_FILE",
                                    "is required but missing (or set ADMIN_PASSWORD)"))
            return Secret(""), None
        return Secret(inline), None
    problem = _password_file_problem(pwfile)
    if problem:
        problems.append(Problem(path, "Database", "PASSWORD_FILE", f"{pwfile}: {problem}"))
        return Secret(""), None
    text = pwfile.read_text(encoding="utf-8").rstrip("\r\n")
    if not text:
        problems.append(Problem(path, "Database", "PASSWORD_FILE", f"{pwfile}: is empty"))
    return Secret(text), pwfile


def _password_file_problem(pwfile: Path) -> str | None:
    try:
        st = pwfile.stat()
    except FileNotFoundError:
        return "no such file"
    except PermissionError:
        return "permission denied"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if st.st_mode & 0o077:
        return (f"is accessible by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
                f"run chmod 600 on it")
    if not os.access(pwfile, os.R_OK):
        return "permission denied"
    return None


_LOG_LEVELS = (("LOG_DEBUG", "DEBUG"), ("LOG_INFO", "INFO"),
               ("LOG_WARNING", "WARNING"), ("LOG_ERR", "ERROR"))


def _assemble(path: Path, values: dict, defaulted: frozenset, cloud_wide: str,
              password: Secret, password_file: Path | None,
              warnings: tuple[str, ...]) -> Config:
    def get(section: str, name: str):
        return values[section, name]

    # The original logs every class whose flag is set; the lowest set flag decides.
    log_level = next((level for key, level in _LOG_LEVELS if get("Global", key)), "CRITICAL")
    tls = get("Database", "TLS")
    port = get("Database", "PORT") or (636 if tls == "ldaps" else 389)
    values = {**values, ("Database", "PORT"): port}
    ldap = LdapSettings(
        server=get("Database", "SERVER"), port=port, tls=tls,
        tls_ca_file=get("Database", "TLS_CA_FILE"), tls_verify=get("Database", "TLS_VERIFY"),
        bind_dn=get("Database", "ADMIN_USER"), password=password, password_file=password_file,
        timeout=get("Database", "TIMEOUT"), service_subtree=get("Database", "SERVICE_SUBTREE"),
        cloud_wide_dn=cloud_wide, cookie_file=get("Database", "COOKIE_FILE"),
        default_cookie=get("Database", "DEFAULT_COOKIE"),
        search_filter=get("Database", "SEARCH_FILTER"))
    return Config(
        path=path, node=get("Global", "ENVIRONMENT"), log_level=log_level, ldap=ldap,
        libvirt_uri=get("Hypervisor", "LIBVIRT_URI"),
        max_concurrent_steps=get("Daemon", "MAX_CONCURRENT_STEPS"),
        state_directory=get("Daemon", "STATE_DIRECTORY"),
        reconnect_sleep=get("Operation Mode", "SLEEP"),
        reconnect_attempts=get("Operation Mode", "ATTEMPTS"),
        values=values, defaulted=defaulted, warnings=warnings)


def render(config: Config) -> str:
    """The effective configuration as INI text, secrets masked, defaults marked."""
    lines: list[str] = []
    section = None
    for key in KEYS:
        if key.section != section:
            section = key.section
            lines.append(f"\n[{section}]" if lines else f"[{section}]")
        value = config.values.get((key.section, key.name))
        if value is None:
            lines.append(f"# {key.name} is not set")
            continue
        shown = "********" if key.secret else key.format(value)
        note = "  # default" if (key.section, key.name) in config.defaulted else ""
        note += "  # read but not used by provbackup" if key.ignored else ""
        lines.append(f"{key.name} = {shown}{note}")
    return "\n".join(lines) + "\n"
