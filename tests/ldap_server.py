"""A throwaway OpenLDAP server for the tests: Debian's slapd on a free port, its own config and
database in a temporary directory, loaded from a small LDIF. No system-wide service is used.

The directory (base ``dc=example,dc=org``):
- ``ou=people``: alice, bob (staff), erin (``employeeType: former``);
- ``ou=contractors``: dave, outside the search base the tests configure;
- ``cn=im-service``: the service account that searches (passwords are in :data:`PASSWORDS`).
Anonymous clients may only bind; the service account and logged-in users may read entries.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from conftest import free_port, require_service

BASE = "dc=example,dc=org"
PEOPLE = f"ou=people,{BASE}"
SERVICE_DN = f"cn=im-service,{BASE}"
PASSWORDS = {
    "alice": "wonderland",
    "bob": "can-we-fix-it",
    "dave": "contract-pw",
    "erin": "gone-away-pw",
    "im-service": "service-secret",
}
SCHEMA_DIR = Path("/etc/ldap/schema")
MODULE_DIR = Path("/usr/lib/ldap")


def _ssha(password: str) -> str:
    salt = os.urandom(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def _person(uid: str, ou: str, cn: str, extra: str = "") -> str:
    return (
        f"dn: uid={uid},ou={ou},{BASE}\n"
        "objectClass: inetOrgPerson\n"
        f"uid: {uid}\ncn: {cn}\nsn: {cn.split()[-1]}\nmail: {uid}@example.org\n"
        f"userPassword: {_ssha(PASSWORDS[uid])}\n{extra}\n"
    )


def _ldif() -> str:
    return (
        f"dn: {BASE}\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n\n"
        f"dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people\n\n"
        f"dn: ou=contractors,{BASE}\nobjectClass: organizationalUnit\nou: contractors\n\n"
        f"dn: {SERVICE_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n"
        f"cn: im-service\nuserPassword: {_ssha(PASSWORDS['im-service'])}\n\n"
        + _person("alice", "people", "Alice Liddell", "employeeType: staff\n")
        + _person("bob", "people", "Bob Builder", "employeeType: staff\n")
        + _person("erin", "people", "Erin Former", "employeeType: former\n")
        + _person("dave", "contractors", "Dave Contractor")
    )


def _config(root: Path) -> str:
    return f"""
include {SCHEMA_DIR}/core.schema
include {SCHEMA_DIR}/cosine.schema
include {SCHEMA_DIR}/inetorgperson.schema
modulepath {MODULE_DIR}
moduleload back_mdb
pidfile {root}/slapd.pid
database mdb
maxsize 10485760
suffix "{BASE}"
rootdn "cn=admin,{BASE}"
directory {root}/db
access to attrs=userPassword by anonymous auth by * none
access to * by users read by * none
"""


@dataclass
class Slapd:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _find(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")


def start_slapd(root: Path) -> Slapd:
    """Start slapd in ``root``; skip (fail in CI) when slapd is not installed."""
    slapd, slapadd = _find("slapd"), _find("slapadd")
    if slapd is None or slapadd is None or not (SCHEMA_DIR / "inetorgperson.schema").exists():
        require_service("slapd", "OpenLDAP server not installed (Debian: apt-get install slapd)")
    (root / "db").mkdir(parents=True)
    conf = root / "slapd.conf"
    conf.write_text(_config(root))
    (root / "data.ldif").write_text(_ldif())
    subprocess.run(
        [slapadd, "-f", str(conf), "-l", str(root / "data.ldif")], check=True, capture_output=True
    )
    port = free_port()
    url = f"ldap://127.0.0.1:{port}"
    log = root / "slapd.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [slapd, "-f", str(conf), "-h", url + "/", "-d", "0"], stdout=out, stderr=out
        )
    server = Slapd(url, proc, log)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return server
        except OSError:
            time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"slapd did not start: {log.read_text(errors='replace')[-2000:]}")
