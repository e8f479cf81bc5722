"""Reading the configuration file: the original format, our keys, precise errors."""

import re
from pathlib import Path

import pytest

from provbackup import config
from tests.shared import shared_file

PASSWORD = "s3cret-Passw0rd"

BASE = """\
[Global]
LOG_DEBUG = 0
LOG_INFO = 1
LOG_WARNING = 1
LOG_ERR = 1
ENVIRONMENT = node-01

[Database]
BACKEND = LDAP
SERVER = ldap.example.org
PORT = 389
ADMIN_USER = cn=admin,dc=stoney-cloud,dc=org
PASSWORD_FILE = {pwfile}
SERVICE_SUBTREE = ou=virtualization,ou=services,dc=stoney-cloud,dc=org
COOKIE_FILE = /var/lib/provbackup/cookie
DEFAULT_COOKIE = rid=001,csn=
SEARCH_FILTER = (&(entryCSN>=%entryCSN%)(objectClass=*))
STONEY_CLOUD_WIDE_CONFIGURATION = ou=backup,ou=configuration,ou=virtualization,ou=services,dc=stoney-cloud,dc=org
TLS = starttls
"""


def write_config(tmp_path: Path, text: str, pw_mode: int = 0o600) -> Path:
    """Write a config whose PASSWORD_FILE points at a real password file in tmp_path."""
    pwfile = tmp_path / "ldap.password"
    pwfile.write_text(PASSWORD + "\n")
    pwfile.chmod(pw_mode)
    path = tmp_path / "provbackup.conf"
    path.write_text(text.replace("{pwfile}", str(pwfile)))
    return path


def replace_line(text: str, key: str, new: str | None) -> str:
    """Replace (or with None delete) the line that sets `key`."""
    pattern = re.compile(rf"^{re.escape(key)} = .*$\n?", re.M)
    assert pattern.search(text), key
    return pattern.sub("" if new is None else new + "\n", text, count=1)


def test_valid_file_loads_into_a_typed_frozen_object(tmp_path):
    """A complete file yields typed values, the password from its file, and defaults."""
    cfg = config.load(write_config(tmp_path, BASE))
    assert cfg.node == "node-01"
    assert cfg.log_level == "INFO"
    assert cfg.ldap.port == 389 and isinstance(cfg.ldap.port, int)
    assert cfg.ldap.uri == "ldap://ldap.example.org:389"
    assert cfg.ldap.password.reveal() == PASSWORD
    assert cfg.ldap.cloud_wide_dn.startswith("ou=backup,ou=configuration")
    assert cfg.ldap.tls == "starttls" and cfg.ldap.tls_verify is True
    assert cfg.libvirt_uri == "qemu:///system"
    assert cfg.max_concurrent_steps == 2
    assert (cfg.reconnect_sleep, cfg.reconnect_attempts) == (30, 3)
    with pytest.raises(AttributeError):
        cfg.node = "other"  # type: ignore[misc]


BAD = [
    # (what is wrong, how to make it so, expected message)
    ("missing required key", lambda t: replace_line(t, "ENVIRONMENT", None),
     "[Global] ENVIRONMENT: is required but missing"),
    ("integer expected", lambda t: replace_line(t, "PORT", "PORT = ldap"),
     "[Database] PORT: expected a whole number from 1 to 65535, got 'ldap'"),
    ("integer out of range", lambda t: replace_line(t, "PORT", "PORT = 70000"),
     "[Database] PORT: expected a whole number from 1 to 65535, got '70000'"),
    ("boolean expected", lambda t: replace_line(t, "LOG_DEBUG", "LOG_DEBUG = maybe"),
     "[Global] LOG_DEBUG: expected a boolean (1 or 0), got 'maybe'"),
    ("unknown section", lambda t: t + "\n[Databse]\nX = 1\n",
     "[Databse]: unknown section; did you mean 'Database'?"),
    ("unknown key", lambda t: t.replace("TLS = starttls", "TLS = starttls\nSERVR = x"),
     "[Database] SERVR: unknown key; did you mean 'SERVER'?"),
    ("template placeholder", lambda t: replace_line(t, "ENVIRONMENT",
                                                    "ENVIRONMENT = <FOSS-CLOUD-NODE-NAME>"),
     "[Global] ENVIRONMENT: still holds the template placeholder <FOSS-CLOUD-NODE-NAME>"),
    ("both passwords", lambda t: t + "ADMIN_PASSWORD = other\n",
     "[Database] PASSWORD_FILE: and ADMIN_PASSWORD are both set; keep one"),
    ("no password", lambda t: replace_line(t, "PASSWORD_FILE", None),
     "[Database] PASSWORD_FILE: is required but missing (or set ADMIN_PASSWORD)"),
    ("password file absent", lambda t: replace_line(t, "PASSWORD_FILE",
                                                    "PASSWORD_FILE = /nonexistent/pw"),
     "[Database] PASSWORD_FILE: /nonexistent/pw: no such file"),
    ("bad DN", lambda t: replace_line(t, "SERVICE_SUBTREE", "SERVICE_SUBTREE = virtualization"),
     "[Database] SERVICE_SUBTREE: expected a distinguished name"),
    ("relative path", lambda t: replace_line(t, "COOKIE_FILE", "COOKIE_FILE = cookie.txt"),
     "[Database] COOKIE_FILE: expected an absolute path, got 'cookie.txt'"),
    ("dot-dot path", lambda t: replace_line(t, "COOKIE_FILE", "COOKIE_FILE = /var/../etc/c"),
     "[Database] COOKIE_FILE: expected an absolute path without '..'"),
    ("unknown TLS mode", lambda t: replace_line(t, "TLS", "TLS = sometimes"),
     "[Database] TLS: expected one of starttls, ldaps, none, got 'sometimes'"),
    ("CA file absent", lambda t: t + "TLS_CA_FILE = /nonexistent/ca.pem\n",
     "[Database] TLS_CA_FILE: expected an existing file, got '/nonexistent/ca.pem'"),
    ("server given as URI", lambda t: replace_line(t, "SERVER", "SERVER = ldaps://ldap.x"),
     "[Database] SERVER: expected a host name, not a URI"),
    ("cloud-wide spellings differ", lambda t: t + "FOSS_CLOUD_WIDE_CONFIGURATION = ou=x,dc=y\n",
     "[Database] STONEY_CLOUD_WIDE_CONFIGURATION: and FOSS_CLOUD_WIDE_CONFIGURATION are "
     "both set and differ"),
    ("no cloud-wide DN", lambda t: replace_line(t, "STONEY_CLOUD_WIDE_CONFIGURATION", None),
     "[Database] STONEY_CLOUD_WIDE_CONFIGURATION: is required but missing"),
    ("unsupported backend", lambda t: replace_line(t, "BACKEND", "BACKEND = SQL"),
     "[Database] BACKEND: expected one of LDAP, got 'SQL'"),
    ("concurrency zero", lambda t: t + "[Daemon]\nMAX_CONCURRENT_STEPS = 0\n",
     "[Daemon] MAX_CONCURRENT_STEPS: expected a whole number from 1 to 64, got '0'"),
    ("bad libvirt URI", lambda t: t + "[Hypervisor]\nLIBVIRT_URI = system\n",
     "[Hypervisor] LIBVIRT_URI: expected a libvirt URI like qemu:///system, got 'system'"),
    ("bad cookie", lambda t: replace_line(t, "DEFAULT_COOKIE", "DEFAULT_COOKIE = 001"),
     "[Database] DEFAULT_COOKIE: expected a syncrepl cookie like 'rid=001,csn='"),
    ("duplicate key", lambda t: t + "SERVER = other\n",
     "line 20: [Database] SERVER is set twice"),
    ("key before any section", lambda t: "ENVIRONMENT = x\n" + t,
     "line 1: a key before any [section]: 'ENVIRONMENT = x'"),
    ("not INI at all", lambda t: t + "this is not a key\n",
     "not INI syntax at line 20: 'this is not a key'"),
]


@pytest.mark.parametrize("what, mutate, expected", BAD, ids=[b[0] for b in BAD])
def test_bad_configuration_gets_a_precise_message(tmp_path, what, mutate, expected):
    """Each kind of mistake is reported with file, section, key and what was expected."""
    path = write_config(tmp_path, mutate(BASE))
    with pytest.raises(config.ConfigError) as caught:
        config.load(path)
    messages = [str(p) for p in caught.value.problems]
    assert any(m.startswith(str(path)) and expected in m for m in messages), messages


def test_password_file_readable_by_others_is_refused(tmp_path):
    """A password file with group or world access is an error naming its mode."""
    path = write_config(tmp_path, BASE, pw_mode=0o644)
    with pytest.raises(config.ConfigError, match=r"accessible by group or others \(mode 0644\)"):
        config.load(path)


def test_empty_password_file_is_refused(tmp_path):
    """An empty password file is reported, not used for an anonymous bind."""
    path = write_config(tmp_path, BASE)
    (tmp_path / "ldap.password").write_text("\n")
    with pytest.raises(config.ConfigError, match="is empty"):
        config.load(path)


def test_missing_file_and_directory_are_reported(tmp_path):
    """A missing path or a directory is one clear problem, not a traceback."""
    with pytest.raises(config.ConfigError, match="no such file"):
        config.load(tmp_path / "absent.conf")
    with pytest.raises(config.ConfigError, match="is a directory"):
        config.load(tmp_path)


def test_binary_file_is_reported(tmp_path):
    """A file that is not UTF-8 text is reported as such."""
    path = tmp_path / "x.conf"
    path.write_bytes(b"[Global]\nENVIRONMENT = \xff\xfe\n")
    with pytest.raises(config.ConfigError, match="is not UTF-8 text"):
        config.load(path)


def test_every_problem_is_reported_at_once(tmp_path):
    """Several mistakes give several problems in one error, so one edit fixes them all."""
    text = replace_line(replace_line(BASE, "PORT", "PORT = x"), "TLS", "TLS = maybe")
    with pytest.raises(config.ConfigError) as caught:
        config.load(write_config(tmp_path, text))
    keys = {p.key for p in caught.value.problems}
    assert keys == {"PORT", "TLS"}


def test_secret_never_appears_in_errors_or_repr(tmp_path):
    """The password is masked in repr, in the rendered config and in error messages."""
    text = replace_line(BASE, "PASSWORD_FILE", None) + f"ADMIN_PASSWORD = {PASSWORD}\n"
    cfg = config.load(write_config(tmp_path, text))
    assert cfg.ldap.password.reveal() == PASSWORD
    assert PASSWORD not in repr(cfg)
    assert PASSWORD not in config.render(cfg)
    bad = text.replace("PORT = 389", "PORT = nope")
    with pytest.raises(config.ConfigError) as caught:
        config.load(write_config(tmp_path, bad))
    assert PASSWORD not in str(caught.value)


def test_placeholder_password_is_not_echoed(tmp_path):
    """A wrong secret value is described, never quoted."""
    text = replace_line(BASE, "PASSWORD_FILE", None) + "ADMIN_PASSWORD = bad\x01pw\n"
    with pytest.raises(config.ConfigError) as caught:
        config.load(write_config(tmp_path, text))
    assert "bad" not in str(caught.value)
    assert "a value (not shown)" in str(caught.value)


def test_older_cloud_wide_key_is_accepted(tmp_path):
    """FOSS_CLOUD_WIDE_CONFIGURATION works alone, and beside an equal STONEY_ value."""
    old = BASE.replace("STONEY_CLOUD_WIDE", "FOSS_CLOUD_WIDE")
    assert config.load(write_config(tmp_path, old)).ldap.cloud_wide_dn.startswith("ou=backup")
    both = BASE + "FOSS_CLOUD_WIDE_CONFIGURATION = ou=backup,ou=configuration," \
                  "ou=virtualization,ou=services,dc=stoney-cloud,dc=org\n"
    assert config.load(write_config(tmp_path, both)).ldap.cloud_wide_dn.startswith("ou=backup")


def test_unknown_keys_tolerated_on_request(tmp_path):
    """With IGNORE_UNKNOWN_KEYS = 1 unknown keys and sections become warnings."""
    text = BASE.replace("TLS = starttls", "TLS = starttls\nOTHER_TOOL = 1")
    text += "[OtherTool]\nX = 1\n[Daemon]\nIGNORE_UNKNOWN_KEYS = 1\n"
    cfg = config.load(write_config(tmp_path, text))
    assert len(cfg.warnings) == 2
    assert any("[Database] OTHER_TOOL: unknown key, ignored" in w for w in cfg.warnings)
    assert any("[OtherTool]: unknown section, ignored" in w for w in cfg.warnings)


def test_port_follows_tls_mode_when_unset(tmp_path):
    """Without PORT, ldaps means 636 and the URI scheme is ldaps."""
    text = replace_line(replace_line(BASE, "PORT", None), "TLS", "TLS = ldaps")
    cfg = config.load(write_config(tmp_path, text))
    assert cfg.ldap.port == 636
    assert cfg.ldap.uri == "ldaps://ldap.example.org:636"
    assert "PORT = 636  # default" in config.render(cfg)


def test_ipv6_server_is_bracketed_in_uri(tmp_path):
    """An IPv6 literal server gets brackets in the URI."""
    cfg = config.load(write_config(tmp_path, replace_line(BASE, "SERVER", "SERVER = ::1")))
    assert cfg.ldap.uri == "ldap://[::1]:389"


@pytest.mark.parametrize("flags, level", [
    ((1, 1, 1, 1), "DEBUG"), ((0, 1, 1, 1), "INFO"), ((0, 0, 1, 1), "WARNING"),
    ((0, 0, 0, 1), "ERROR"), ((0, 0, 0, 0), "CRITICAL")])
def test_log_switches_set_the_level(tmp_path, flags, level):
    """The lowest LOG_* switch that is on decides the log level."""
    text = BASE
    for key, flag in zip(("LOG_DEBUG", "LOG_INFO", "LOG_WARNING", "LOG_ERR"), flags):
        text = replace_line(text, key, f"{key} = {flag}")
    assert config.load(write_config(tmp_path, text)).log_level == level


def test_shipped_example_is_valid():
    """etc/provbackup.conf.example loads as it is shipped."""
    example = Path(__file__).resolve().parents[2] / "etc" / "provbackup.conf.example"
    cfg = config.load(example)
    assert cfg.node and cfg.ldap.tls == "starttls" and cfg.warnings == ()


def test_original_template_filled_in_is_accepted(tmp_path):
    """The original KVM.conf template, placeholders filled, is a valid provbackup config."""
    template = shared_file("stoney-ldap/KVM.conf.template").read_text(encoding="utf-8")
    filled = {
        "<FOSS-CLOUD-NODE-NAME>": "node-01", "<FOSS-CLOUD-LDAP-SERVER>": "ldap.foss-cloud.org",
        "<FOSS-CLOUD-LDAP-PORT>": "636", "<FOSS-CLOUD-LDAP-BINDDN>": "cn=Manager,dc=foss-cloud,dc=org",
        "<FOSS-CLOUD-LDAP-BIND-PASSWORD>": PASSWORD,
        "<FOSS-CLOUD-LDAP-SERVICE-SUBTREE>": "ou=virtualization,ou=services,dc=foss-cloud,dc=org",
        "<FOSS-CLOUD-LDAP-COOKIE-FILE>": "/var/lib/provbackup/cookie",
        "<FOSS-CLOUD-LDAP-PROV-BACKUP-KVM-DEFAULT-CONFIGURATION>":
            "ou=backup,ou=configuration,ou=virtualization,ou=services,dc=foss-cloud,dc=org",
    }
    for placeholder, value in filled.items():
        assert placeholder in template, placeholder
        template = template.replace(placeholder, value)
    path = tmp_path / "KVM.conf"
    path.write_text(template, encoding="utf-8")
    cfg = config.load(path)
    assert cfg.node == "node-01" and cfg.ldap.port == 636
    assert cfg.ldap.cloud_wide_dn.startswith("ou=backup,ou=configuration")
    assert cfg.log_level == "DEBUG"
