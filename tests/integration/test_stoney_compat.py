"""The project's schema subset and sample data against the REAL stoney schema.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import ldap3
import pytest

from tests.rig.ldap_fixtures import (
    PROJECT_SCHEMA_FILES, SAMPLE_LDIF, SERVICE_DN, SUFFIX)

SEED_SUFFIX = "dc=foss-cloud,dc=org"
SERVICES_OU = (f"dn: ou=services,{SUFFIX}\nobjectClass: top\n"
               "objectClass: organizationalUnit\nou: services\n")
# Plausible values for the installer's placeholders in the seed templates
# (the examples the templates themselves give in their comments).
PLACEHOLDERS = {
    "FOSS-CLOUD-ADMIN-VLAN-ID": "110",
    "FOSS-CLOUD-ADMIN-NETWORK-ADDRESS": "10.1.110.0",
    "FOSS-CLOUD-ADMIN-NETMASK": "24",
    "FOSS-CLOUD-ADMIN-BROADCAST": "10.1.110.255",
    "FOSS-CLOUD-ADMIN-DOMAIN": "admin.example.org",
    "FOSS-CLOUD-DATA-VLAN-ID": "130",
    "FOSS-CLOUD-DATA-NETWORK-ADDRESS": "10.1.130.0",
    "FOSS-CLOUD-DATA-NETMASK": "24",
    "FOSS-CLOUD-DATA-BROADCAST": "10.1.130.255",
    "FOSS-CLOUD-DATA-DOMAIN": "data.example.org",
    "FOSS-CLOUD-INT-VLAN-ID": "120",
    "FOSS-CLOUD-INT-NETWORK-ADDRESS": "10.1.120.0",
    "FOSS-CLOUD-INT-NETMASK": "24",
    "FOSS-CLOUD-INT-BROADCAST": "10.1.120.255",
    "FOSS-CLOUD-INT-DOMAIN": "int.example.org",
    "FOSS-CLOUD-PUB-VLAN-ID": "140",
    "FOSS-CLOUD-PUB-NETWORK-ADDRESS": "192.168.140.0",
    "FOSS-CLOUD-PUB-NETMASK": "24",
    "FOSS-CLOUD-PUB-DEFAULT-GATEWAY": "192.168.140.1",
    "FOSS-CLOUD-PUB-BROADCAST": "192.168.140.255",
    "FOSS-CLOUD-PUB-DOMAIN": "example.org",
    # Appended to a domain name line; the installer may add NTP/DNS hosts.
    "FOSS-CLOUD-NTP-INFO": "",
    "FOSS-CLOUD-DNS-INFO": "",
    "FOSS-CLOUD-ID": "5f1d3c8e-2b7a-4c61-9e0f-8a4b6c2d1e37",
    "FOSS-CLOUD-NODE-NAME": "node-01",
}
SEED_SERVICE = "06_services_virtualization.ldif"
SEED_CONFIGURATION = (
    "08_configuration_services_virtualization.template-primary-master")
SEED_POOLS = "14_vm-pools_services_virtualization.template-primary-master"
SEED_VMS = "15_vms_services_virtualization.ldif"
CLOUD_WIDE_BACKUP_DN = f"ou=backup,ou=configuration,{SERVICE_DN}"


# -- a small parser for OpenLDAP .schema files --------------------------------

_DEFINITION_RE = re.compile(
    r"^[ \t]*(attributetype|objectclass|objectidentifier)\b", re.I | re.M)
_TOKEN_RE = re.compile(r"'[^']*'|[()$]|[^\s()$']+")
_FLAGS = {"SINGLE-VALUE", "COLLECTIVE", "NO-USER-MODIFICATION", "OBSOLETE",
          "STRUCTURAL", "AUXILIARY", "ABSTRACT"}


@dataclass
class SchemaDef:
    """One attribute type or object class as written in a .schema file."""

    kind: str
    oid: str
    names: tuple[str, ...]
    fields: dict = field(default_factory=dict)

    def get(self, key: str, default=None):
        """Return a keyword's value (a str, a tuple, or True for a flag)."""
        return self.fields.get(key, default)


def _strip_comments(text: str) -> str:
    """Drop the lines that are comments in .schema and LDIF files."""
    return "\n".join(line for line in text.splitlines()
                     if not line.lstrip().startswith("#"))


def _resolve_oid(oid: str, macros: dict[str, str]) -> str:
    """Expand an objectidentifier macro such as sstAttributeType:16."""
    prefix, colon, rest = oid.partition(":")
    if colon and prefix in macros:
        return f"{_resolve_oid(macros[prefix], macros)}.{rest}"
    return macros.get(oid, oid)


def _parse_fields(tokens: list[str]) -> dict:
    """Turn the tokens between the outer parentheses into keyword values."""
    fields, i = {}, 0
    while i < len(tokens):
        key = tokens[i].upper()
        if key in _FLAGS:
            fields[key], i = True, i + 1
        elif i + 1 < len(tokens) and tokens[i + 1] == "(":
            end = tokens.index(")", i + 2)
            fields[key] = tuple(t.strip("'") for t in tokens[i + 2:end]
                                if t != "$")
            i = end + 1
        else:
            fields[key], i = tokens[i + 1].strip("'"), i + 2
    return fields


def parse_schema(text: str) -> list[SchemaDef]:
    """Return the attribute types and object classes of a .schema text."""
    text = _strip_comments(text)
    macros: dict[str, str] = {}
    definitions = []
    for match in _DEFINITION_RE.finditer(text):
        kind = match.group(1).lower()
        if kind == "objectidentifier":
            name, value = text[match.end():].split("\n", 1)[0].split()[:2]
            macros[name] = _resolve_oid(value, macros)
            continue
        tokens, depth = [], 0
        for token in _TOKEN_RE.finditer(text, match.end()):
            tokens.append(token.group(0))
            depth += {"(": 1, ")": -1}.get(token.group(0), 0)
            if depth == 0:
                break
        body = tokens[1:-1]
        fields = _parse_fields(body[1:])
        names = fields.pop("NAME")
        names = (names,) if isinstance(names, str) else names
        definitions.append(SchemaDef(kind, _resolve_oid(body[0], macros),
                                     tuple(names), fields))
    return definitions


def _index(definitions: list[SchemaDef]) -> dict[tuple[str, str], SchemaDef]:
    """Index definitions by (kind, lower-case name) for every name."""
    return {(d.kind, name.lower()): d for d in definitions
            for name in d.names}


def _names(values) -> set[str]:
    """Lower-case set of a MUST/MAY/SUP value (absent, one name, or a list)."""
    if values is None:
        return set()
    return {v.lower() for v in ((values,) if isinstance(values, str)
                                else values)}


def _kind(definition: SchemaDef) -> str:
    """Return an object class's kind; without a keyword it is STRUCTURAL."""
    for kind in ("AUXILIARY", "ABSTRACT"):
        if definition.get(kind):
            return kind
    return "STRUCTURAL"


def _project_definitions() -> list[SchemaDef]:
    """Parse etc/ldap/provbackup*.schema."""
    return [d for path in PROJECT_SCHEMA_FILES
            for d in parse_schema(path.read_text())]


def _real_index(stoney_ldap_dir: Path) -> dict:
    """Parse and index the real sst.schema and dhcp.schema."""
    texts = [(stoney_ldap_dir / name).read_text()
             for name in ("sst.schema", "dhcp.schema")]
    return _index([d for text in texts for d in parse_schema(text)])


# -- LDIF helpers -------------------------------------------------------------

def _seed(stoney_ldap_dir: Path, name: str) -> str:
    """Return a seed file moved to the test suffix, placeholders filled."""
    text = _strip_comments((stoney_ldap_dir / name).read_text())
    text = re.sub(r"<(FOSS-CLOUD-[A-Z-]+)>",
                  lambda m: PLACEHOLDERS[m.group(1)], text)
    return text.replace(SEED_SUFFIX, SUFFIX) + "\n"


def _records(ldif: str) -> list[dict]:
    """Split LDIF text into records: {'dn': str, 'objectclass': [...]}."""
    text = re.sub(r"\n ", "", _strip_comments(ldif))  # unfold lines
    records = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line for line in block.splitlines() if line.strip()]
        if not lines or not lines[0].lower().startswith("dn:"):
            continue
        classes = [line.split(":", 1)[1].strip() for line in lines
                   if line.lower().startswith("objectclass:")]
        records.append({"dn": lines[0][3:].strip(), "objectclass": classes,
                        "text": "\n".join(lines)})
    return records


def _server_dns(server) -> set[str]:
    """Every DN below and including the suffix, lower case."""
    conn = server.connection()
    try:
        conn.search(SUFFIX, "(objectClass=*)", ldap3.SUBTREE, attributes=[])
        return {e.entry_dn.lower() for e in conn.entries}
    finally:
        conn.unbind()


def _load_fresh(server, *ldifs: str) -> None:
    """Empty the server below the suffix and add the LDIF texts in order."""
    server.wipe(SUFFIX, keep_base=True)
    for ldif in ldifs:
        server.add_ldif(ldif)


# -- the parser itself --------------------------------------------------------

@pytest.mark.integration
def test_schema_parser_reads_every_definition(stoney_ldap_dir):
    """The test's schema parser finds every definition of the real and the
    project files, so the comparisons below cannot pass vacuously."""
    for path in [stoney_ldap_dir / "sst.schema",
                 stoney_ldap_dir / "dhcp.schema", *PROJECT_SCHEMA_FILES]:
        text = path.read_text()
        definitions = parse_schema(text)
        for kind in ("attributetype", "objectclass"):
            written = len(re.findall(rf"^[ \t]*{kind}\b",
                                     _strip_comments(text), re.I | re.M))
            parsed = [d for d in definitions if d.kind == kind]
            assert len(parsed) == written > 0, (path, kind)
            assert all(re.fullmatch(r"\d+(\.\d+)+", d.oid) for d in parsed)
    sst = _real_index(stoney_ldap_dir)
    mode = sst[("attributetype", "sstprovisioningmode")]
    assert mode.oid == "1.3.6.1.4.1.22621.1.1.16"
    assert mode.get("SYNTAX") == "1.3.6.1.4.1.1466.115.121.1.15{8}"
    disk = sst[("objectclass", "sstvirtualizationvirtualmachinedisk")]
    assert _names(disk.get("MUST")) == {
        "sstdevice", "sstdisk", "sstsourcefile", "ssttargetbus", "ssttype"}


# -- definitions: the subset agrees with the real schema ----------------------

@pytest.mark.integration
def test_project_attribute_types_match_real_schema(stoney_ldap_dir):
    """Every attribute type in etc/ldap/provbackup*.schema exists in the real
    schema with the same name, OID, syntax, matching rules and SINGLE-VALUE."""
    real = _real_index(stoney_ldap_dir)
    mine = [d for d in _project_definitions() if d.kind == "attributetype"]
    assert len(mine) > 50
    problems = []
    for ours in mine:
        theirs = real.get(("attributetype", ours.names[0].lower()))
        if theirs is None:
            problems.append(f"{ours.names[0]}: not in the real schema")
            continue
        checks = {
            "NAME": (ours.names, theirs.names),
            "OID": (ours.oid, theirs.oid),
            "SYNTAX": (ours.get("SYNTAX"), theirs.get("SYNTAX")),
            "SINGLE-VALUE": (bool(ours.get("SINGLE-VALUE")),
                             bool(theirs.get("SINGLE-VALUE"))),
        }
        for rule in ("EQUALITY", "ORDERING", "SUBSTR", "SUP"):
            checks[rule] = (_names(ours.get(rule)), _names(theirs.get(rule)))
        problems += [f"{ours.names[0]} {key}: {a!r} != real {b!r}"
                     for key, (a, b) in checks.items() if a != b]
    assert problems == []


@pytest.mark.integration
def test_project_object_classes_match_real_schema(stoney_ldap_dir):
    """Every object class in etc/ldap/provbackup*.schema exists in the real
    schema with the same name, OID, kind, SUP and MUST list, and a MAY list
    that is a subset."""
    real = _real_index(stoney_ldap_dir)
    mine = [d for d in _project_definitions() if d.kind == "objectclass"]
    assert len(mine) > 10
    problems = []
    for ours in mine:
        theirs = real.get(("objectclass", ours.names[0].lower()))
        if theirs is None:
            problems.append(f"{ours.names[0]}: not in the real schema")
            continue
        checks = {
            "NAME": (ours.names, theirs.names),
            "OID": (ours.oid, theirs.oid),
            "kind": (_kind(ours), _kind(theirs)),
            "SUP": (_names(ours.get("SUP")), _names(theirs.get("SUP"))),
            "MUST": (_names(ours.get("MUST")), _names(theirs.get("MUST"))),
        }
        problems += [f"{ours.names[0]} {key}: {a!r} != real {b!r}"
                     for key, (a, b) in checks.items() if a != b]
        extra = _names(ours.get("MAY")) - _names(theirs.get("MAY"))
        if extra:
            problems.append(f"{ours.names[0]} MAY not in real: {extra}")
    assert problems == []


# -- data: the sample directory under the real schema -------------------------

@pytest.mark.integration
def test_sample_ldif_is_valid_under_real_schema(stoney_slapd):
    """slapd with the real sst.schema and dhcp.schema accepts every entry of
    etc/ldap/sample.ldif."""
    _load_fresh(stoney_slapd, SAMPLE_LDIF.read_text())
    expected = {r["dn"].lower() for r in _records(SAMPLE_LDIF.read_text())}
    assert len(expected) > 20
    assert _server_dns(stoney_slapd) == expected | {SUFFIX.lower()}


@pytest.mark.integration
def test_seed_service_and_vm_subtrees_load(stoney_slapd, stoney_ldap_dir):
    """The stoney seeds 06 (service subtree) and 15 (virtual machines) load
    under the test suffix."""
    seeds = [_seed(stoney_ldap_dir, SEED_SERVICE),
             _seed(stoney_ldap_dir, SEED_VMS)]
    _load_fresh(stoney_slapd, SERVICES_OU, *seeds)
    assert _server_dns(stoney_slapd) == {
        SUFFIX.lower(), f"ou=services,{SUFFIX}".lower(), SERVICE_DN.lower(),
        f"ou=virtual machines,{SERVICE_DN}".lower()}


@pytest.mark.integration
def test_seed_templates_load_with_plausible_values(stoney_slapd,
                                                   stoney_ldap_dir):
    """The seed templates 08 (configuration) and 14 (VM pools), filled with
    plausible installer values, load; the cloud-wide backup entry has both
    backup classes."""
    seeds = [_seed(stoney_ldap_dir, name) for name in
             (SEED_SERVICE, SEED_CONFIGURATION, SEED_POOLS, SEED_VMS)]
    _load_fresh(stoney_slapd, SERVICES_OU, *seeds)
    expected = {r["dn"].lower() for seed in seeds for r in _records(seed)}
    assert len(expected) > 50
    assert _server_dns(stoney_slapd) == expected | {
        SUFFIX.lower(), f"ou=services,{SUFFIX}".lower()}
    conn = stoney_slapd.connection()
    conn.search(CLOUD_WIDE_BACKUP_DN, "(objectClass=*)", ldap3.BASE,
                attributes=["objectClass", "sstBackupNumberOfIterations"])
    entry = conn.entries[0]
    assert {"sstVirtualizationBackupObjectClass", "sstCronObjectClass"} <= set(
        entry.objectClass.values)
    assert int(str(entry.sstBackupNumberOfIterations)) == 1
    conn.unbind()


# -- data: real seed entries under the project schema -------------------------

@pytest.mark.integration
def test_seed_entries_of_known_classes_load_into_project_schema(
        slapd, stoney_ldap_dir):
    """Seed entries that use only classes the project schema knows (the cloud-
    wide backup entry, the pools) load into the project's slapd unchanged."""
    server = ldap3.Server(slapd.ldap_uri, get_info=ldap3.SCHEMA)
    conn = ldap3.Connection(server, auto_bind=True)
    known = {name.lower() for name in server.schema.object_classes}
    conn.unbind()
    kept, dropped = [], set()
    for name in (SEED_SERVICE, SEED_CONFIGURATION, SEED_POOLS, SEED_VMS):
        for record in _records(_seed(stoney_ldap_dir, name)):
            dn = record["dn"].lower()
            parent = dn.split(",", 1)[1]
            if parent in dropped or not {
                    c.lower() for c in record["objectclass"]} <= known:
                dropped.add(dn)
            else:
                kept.append(record)
    kept_dns = {r["dn"].lower() for r in kept}
    pools = {dn for dn in kept_dns if dn.startswith("sstvirtualmachinepool=")}
    assert CLOUD_WIDE_BACKUP_DN.lower() in kept_dns
    assert len(pools) == 2 and dropped
    try:
        _load_fresh(slapd, SERVICES_OU,
                    "\n\n".join(r["text"] for r in kept) + "\n")
        assert kept_dns <= _server_dns(slapd)
    finally:
        slapd.wipe(SUFFIX, keep_base=True)
