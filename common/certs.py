"""The federation's certificates and keys: one CA, one coordinator, one key pair per site.

Two mechanisms protect a deployment, and this module makes the files for both:

* **TLS** (the channel): the coordinator (Flower SuperLink) presents a server certificate
  signed by the federation CA; sites trust that CA alone (``--root-certificates``).
* **SuperNode authentication** (who may join): each site holds an EC key pair in OpenSSH
  format; the coordinator enrols the public key (``flwr supernode register``) and the
  SuperLink, started with ``--enable-supernode-auth``, accepts only enrolled sites.

Flower 1.42 loads the site key with ``cryptography``'s ``load_ssh_private_key(data, None)``
and requires an ``EllipticCurvePrivateKey`` (flwr/supernode/cli/flower_supernode.py:454-458),
so the key is an **unencrypted OpenSSH private key**; ``flwr supernode register`` loads the
``.pub`` with ``load_ssh_public_key`` and accepts NIST curves only
(flwr/cli/supernode/register.py:165-171, flwr/supercore/primitives/asymmetric.py:112). We use
**ECDSA P-384** (``ecdsa-sha2-nistp384``), the curve Flower itself generates
(flwr/supercore/primitives/asymmetric.py:29) and names in ``flwr supernode register --help``.

Folder layout written by :func:`init_pki` and :func:`add_site` under ``OUT``::

    OUT/
      ca/                       0700  keep OFFLINE (not needed by add_site)
        ca.key                  0600  CA private key, PEM PKCS#8, EC P-384
        ca.crt                        self-signed CA certificate (10 years, path length 0)
        README.txt
      coordinator/              0700  copy to the coordinator (SuperLink) host
        server.crt                    TLS server certificate with the SANs -> --ssl-certfile
        server.key              0600  its private key, PEM PKCS#8, EC P-384 -> --ssl-keyfile
        ca.crt                        the CA certificate                    -> --ssl-ca-certfile
        sites/<site>.pub              enrolled site keys, OpenSSH -> `flwr supernode register`
        enrolled.json                 {site: {"public_key": "<OpenSSH line>",
                                              "fingerprint": "SHA256:..."}}
        README.txt
      sites/                    0700
        <site>/                 0700  give to that site only
          site_auth_key         0600  SuperNode auth key, OpenSSH, EC P-384, unencrypted
                                      -> --auth-supernode-private-key
          site_auth_key.pub           its public key (one OpenSSH line)
          ca.crt                      the CA certificate                  -> --root-certificates
          README.txt

A site folder never holds the CA key, the server key or another site's key;
:func:`check_site_folder` refuses one that does. Private keys are created with mode 0600
(``os.open`` with ``O_EXCL``, never chmod afterwards), and every change is staged in a
temporary folder and renamed into place, so an error leaves earlier files as they were.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CURVE = ec.SECP384R1
CA_VALIDITY = dt.timedelta(days=3650)
SERVER_VALIDITY = dt.timedelta(days=730)
CLOCK_SKEW = dt.timedelta(minutes=5)    # certificates start slightly in the past
ORGANISATION = "SpineMet-FL"

SITE_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_DNS_LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_PRIVATE_KEY_MARKER = b"PRIVATE KEY-----"
_SCAN_LIMIT = 1 << 20    # bytes read per file when looking for stray private keys

CA_README = """\
SpineMet-FL federation CA
=========================

ca.key signs the coordinator's TLS certificate. Whoever holds it can impersonate the
coordinator to every site.

* Keep this folder OFFLINE (an encrypted USB stick in a safe, not the coordinator host).
* It is needed again only to issue a new coordinator certificate (new host name, expiry
  after {server_years} years) or to rebuild the federation (`spinemet certs init --force`).
  Adding a site (`spinemet certs add-site`) does not need it.
* Never copy ca.key into coordinator/ or into a site folder; sites refuse a folder holding it.

CA certificate valid until {ca_until} (UTC).
"""

COORDINATOR_README = """\
SpineMet-FL coordinator (Flower SuperLink)
==========================================

Copy this folder to the coordinator host; server.key is its TLS private key (mode 0600).

    flower-superlink --ssl-certfile server.crt --ssl-keyfile server.key \\
        --ssl-ca-certfile ca.crt --enable-supernode-auth ...

Enrol each site's public key (sites/<site>.pub; list in enrolled.json):

    flwr supernode register sites/<site>.pub <connection> --name <site>

TLS server certificate names: {names}; valid until {server_until} (UTC).
"""

SITE_README = """\
SpineMet-FL site {site}
{underline}

For this site only. site_auth_key is the site's private key (mode 0600): it proves to the
coordinator that this SuperNode is {site}. It never leaves this site; the coordinator holds
only the public key (site_auth_key.pub, fingerprint {fingerprint}).

    flower-supernode --root-certificates ca.crt \\
        --auth-supernode-private-key site_auth_key --superlink <coordinator>:<port> ...

ca.crt is the federation CA: the SuperNode trusts a coordinator only if its certificate is
signed by it.
"""


# ----------------------------------------------------------------------------- errors


class PkiError(Exception):
    """A federation PKI operation cannot proceed; the message says why and what to do."""


class InvalidName(PkiError, ValueError):
    """A site or server name is not acceptable; ``field`` names the input at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


class PkiExists(PkiError):
    """The output folder already holds a PKI (or the site already exists)."""


class SiteFolderError(PkiError):
    """A site folder is incomplete, inconsistent or holds keys it must not hold."""


# ----------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class CaFiles:
    """``OUT/ca``: the CA key and certificate (keep offline)."""

    folder: Path
    key: Path
    certificate: Path

    @classmethod
    def under(cls, out: Path) -> CaFiles:
        folder = Path(out) / "ca"
        return cls(folder, folder / "ca.key", folder / "ca.crt")


@dataclass(frozen=True)
class CoordinatorFiles:
    """``OUT/coordinator``: what the SuperLink host needs."""

    folder: Path
    certificate: Path
    key: Path
    ca_certificate: Path
    enrolled_json: Path
    site_keys: Path

    @classmethod
    def under(cls, out: Path) -> CoordinatorFiles:
        return cls.at(Path(out) / "coordinator")

    @classmethod
    def at(cls, folder: Path) -> CoordinatorFiles:
        folder = Path(folder)
        return cls(folder, folder / "server.crt", folder / "server.key", folder / "ca.crt",
                   folder / "enrolled.json", folder / "sites")

    def site_public_key(self, site: str) -> Path:
        return self.site_keys / f"{site}.pub"


@dataclass(frozen=True)
class SiteFiles:
    """``OUT/sites/<site>``: what one site needs, and nothing else."""

    name: str
    folder: Path
    private_key: Path
    public_key: Path
    ca_certificate: Path

    @classmethod
    def at(cls, folder: Path, name: str | None = None) -> SiteFiles:
        folder = Path(folder)
        return cls(name or folder.name, folder, folder / "site_auth_key",
                   folder / "site_auth_key.pub", folder / "ca.crt")

    @classmethod
    def under(cls, out: Path, site: str) -> SiteFiles:
        return cls.at(Path(out) / "sites" / site, site)


@dataclass(frozen=True)
class EnrolledKey:
    """A site's public key as enrolled at the coordinator."""

    site: str
    public_key: str          # one OpenSSH line: "ecdsa-sha2-nistp384 AAAA... comment"
    fingerprint: str         # "SHA256:<base64>", as `ssh-keygen -l` prints it
    path: Path               # coordinator/sites/<site>.pub


@dataclass(frozen=True)
class Pki:
    """What :func:`init_pki` wrote."""

    root: Path
    ca: CaFiles
    coordinator: CoordinatorFiles
    sites: dict[str, SiteFiles]
    server_names: list[str]
    replaced: Path | None    # where an earlier PKI was moved by ``force=True``


# ----------------------------------------------------------------------------- names


def validate_site_name(name: str, field: str = "site") -> str:
    """``name`` if it is 1-64 of ``[A-Za-z0-9_-]`` (it becomes a folder and file name)."""
    if not isinstance(name, str) or not SITE_NAME_RE.fullmatch(name):
        raise InvalidName(field, f"site name {name!r} is not allowed: use 1-64 letters, "
                                 "digits, '_' or '-'")
    return name


def parse_site_names(sites: str | Iterable[str], field: str = "sites") -> list[str]:
    """Site names from ``"A,B,C"`` (or a list), validated; duplicates are refused."""
    items = sites.split(",") if isinstance(sites, str) else list(sites)
    names = [validate_site_name(s.strip(), field) for s in items]
    if not names:
        raise InvalidName(field, "give at least one site name")
    seen: dict[str, str] = {}
    for n in names:
        # Folders must not collide on case-insensitive file systems either.
        if n.lower() in seen:
            raise InvalidName(field, f"site {n!r} is listed twice (as {seen[n.lower()]!r})")
        seen[n.lower()] = n
    return names


LOOPBACK_NAMES = ("localhost", "127.0.0.1")


def parse_server_names(names: str | Iterable[str], field: str = "server-name"
                       ) -> list[x509.GeneralName]:
    """Subject alternative names from ``"localhost,127.0.0.1,fl.hospital.org"``.

    IPv4/IPv6 addresses become ``IPAddress`` entries, everything else must be a DNS host
    name (ASCII; internationalised names in their ``xn--`` form) and becomes ``DNSName``.
    Repeated names are kept once; empty ones are refused.
    """
    items = names.split(",") if isinstance(names, str) else list(names)
    sans: list[x509.GeneralName] = []
    for i, raw in enumerate(items, 1):
        text = raw.strip()
        if not text:
            raise InvalidName(field, "a server name is empty" + (
                f" (entry {i} of {len(items)})" if len(items) > 1 else "") +
                ": give host names or IP addresses, e.g. localhost,127.0.0.1,fl.hospital.org")
        try:
            san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(text))
        except ValueError:
            san = x509.DNSName(_dns_name(text, field))
        if san not in sans:
            sans.append(san)
    if not sans:
        raise InvalidName(field, "give at least one host name or IP address")
    return sans


def _dns_name(text: str, field: str) -> str:
    name = text.rstrip(".").lower()
    labels = name.split(".")
    if (not name.isascii() or len(name) > 253
            or not all(_DNS_LABEL_RE.fullmatch(label) for label in labels)):
        raise InvalidName(field, f"{text!r} is neither an IP address nor a valid DNS host name "
                                 "(letters, digits, '-' and dots; no wildcards; "
                                 "internationalised names in xn-- form)")
    return name


def _san_text(san: x509.GeneralName) -> str:
    return str(san.value)


# ----------------------------------------------------------------------------- keys, certs


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANISATION),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(CURVE())


def _pem_private(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_ca(now: dt.datetime | None = None
            ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new CA key and self-signed certificate: CA, path length 0, signs certificates only."""
    now = now or _now()
    key = _new_key()
    subject = _name("SpineMet-FL federation CA")
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def make_server_certificate(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
                            sans: Sequence[x509.GeneralName], now: dt.datetime | None = None
                            ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A TLS server key and certificate for ``sans``, signed by the CA (serverAuth only)."""
    if not sans:
        raise InvalidName("server-name", "give at least one host name or IP address")
    now = now or _now()
    key = _new_key()
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    # Never outlive the CA: a chain with an expired root fails anyway, and confusingly.
    not_after = min(now + SERVER_VALIDITY, ca_cert.not_valid_after_utc)
    cert = (x509.CertificateBuilder()
            .subject_name(_name("SpineMet-FL coordinator"))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW).not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                ca_ski), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def openssh_public_line(public_key: ec.EllipticCurvePublicKey, comment: str = "") -> str:
    """``"ecdsa-sha2-nistp384 AAAA... comment"``: the format ``flwr supernode register`` reads."""
    line = public_key.public_bytes(serialization.Encoding.OpenSSH,
                                   serialization.PublicFormat.OpenSSH).decode("ascii")
    return f"{line} {comment}" if comment else line


def ssh_fingerprint(public_line: str) -> str:
    """OpenSSH's SHA256 fingerprint of a public key line (as ``ssh-keygen -l`` prints it)."""
    blob = base64.b64decode(public_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _site_key_pair(site: str) -> tuple[bytes, str]:
    key = _new_key()
    private = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    return private, openssh_public_line(key.public_key(), f"spinemet-site-{site}")


def load_site_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Load a site key the way Flower's SuperNode does (unencrypted OpenSSH, EC)."""
    try:
        key = serialization.load_ssh_private_key(Path(path).read_bytes(), None)
    except (ValueError, UnsupportedAlgorithm, TypeError) as exc:
        raise SiteFolderError(f"{path} is not an unencrypted OpenSSH private key, as Flower's "
                              f"--auth-supernode-private-key needs: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SiteFolderError(f"{path} is a {type(key).__name__}; Flower's SuperNode "
                              "authentication needs an ECDSA (NIST curve) key")
    return key


# ----------------------------------------------------------------------------- file writing


def _write_private(path: Path, data: bytes) -> None:
    # Created 0600 from the first byte: no window where another user can read the key.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _write_public(path: Path, data: bytes | str) -> None:
    if isinstance(data, str):
        data = data.encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _replace_file(path: Path, data: bytes | str) -> None:
    """Write ``path`` atomically (temporary file in the same folder, then rename)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)   # a public file; mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _mkdir_private(path: Path) -> None:
    path.mkdir(mode=0o700)


def _write_site_folder(folder: Path, site: str, ca_pem: bytes) -> str:
    """Make ``folder`` (must not exist) with a new key pair; the public key's OpenSSH line."""
    private, public_line = _site_key_pair(site)
    _mkdir_private(folder)
    files = SiteFiles.at(folder, site)
    _write_private(files.private_key, private)
    _write_public(files.public_key, public_line + "\n")
    _write_public(files.ca_certificate, ca_pem)
    fingerprint = ssh_fingerprint(public_line)
    _write_public(folder / "README.txt", SITE_README.format(
        site=site, underline="=" * (len("SpineMet-FL site ") + len(site)),
        fingerprint=fingerprint))
    return public_line


def _enrolled_json(keys: Iterable[EnrolledKey]) -> str:
    return json.dumps({k.site: {"public_key": k.public_key, "fingerprint": k.fingerprint}
                       for k in sorted(keys, key=lambda k: k.site)}, indent=2) + "\n"


# ----------------------------------------------------------------------------- operations


def init_pki(out: Path, server_names: str | Sequence[str], sites: str | Sequence[str], *,
             force: bool = False) -> Pki:
    """Create the CA, the coordinator's TLS certificate and one key pair per site.

    Parameters
    ----------
    out
        Folder to write ``ca/``, ``coordinator/`` and ``sites/`` into (created if missing).
    server_names
        Host names and IP addresses the coordinator is reached by, as ``"a,b"`` or a list;
        they become the certificate's subject alternative names, with ``localhost`` and
        ``127.0.0.1`` always added (the coordinator's own processes connect on loopback).
    sites
        Site names, as ``"A,B,C"`` or a list (1-64 of ``[A-Za-z0-9_-]`` each).
    force
        Replace an existing PKI in ``out``. The old ``ca/``, ``coordinator/`` and ``sites/``
        are moved into ``out/replaced-<UTC time>/``, not deleted.

    Returns
    -------
    Pki
        The paths written.

    Raises
    ------
    InvalidName
        A bad site or server name (``.field`` is ``"sites"`` or ``"server-name"``).
    PkiExists
        ``out`` already holds a PKI and ``force`` is false.
    """
    requested = server_names.split(",") if isinstance(server_names, str) else list(server_names)
    parse_server_names(requested, "server-name")          # refuses bad or empty names
    # The coordinator's own processes (the SuperLink's executor, the Fleet API proxy, the
    # Control API client of `flower-server`) reach the SuperLink on loopback and check its
    # certificate there too.
    sans = parse_server_names(requested + list(LOOPBACK_NAMES), "server-name")
    site_names = parse_site_names(sites, "sites")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PkiError(f"{out} exists and is not a folder")
    parts = ("ca", "coordinator", "sites")
    existing = [p for p in parts if (out / p).exists()]
    if existing and not force:
        raise PkiExists(f"{out} already holds a PKI ({', '.join(p + '/' for p in existing)}); "
                        "re-initialising would replace the CA and every site key. Use "
                        "`add-site` to add a site, or --force to replace it all (the old "
                        "folders are moved aside, not deleted)")
    created_out = not out.exists()
    out.mkdir(parents=True, exist_ok=True)

    staging = Path(tempfile.mkdtemp(prefix=".spinemet-certs-", dir=out))   # mode 0700
    try:
        now = _now()
        ca_key, ca_cert = make_ca(now)
        server_key, server_cert = make_server_certificate(ca_key, ca_cert, sans, now)
        ca_pem = _pem_cert(ca_cert)

        ca = CaFiles.under(staging)
        _mkdir_private(ca.folder)
        _write_private(ca.key, _pem_private(ca_key))
        _write_public(ca.certificate, ca_pem)
        _write_public(ca.folder / "README.txt", CA_README.format(
            server_years=SERVER_VALIDITY.days // 365,
            ca_until=ca_cert.not_valid_after_utc.isoformat()))

        enrolled = []
        (staging / "sites").mkdir(mode=0o700)
        for site in site_names:
            line = _write_site_folder(staging / "sites" / site, site, ca_pem)
            enrolled.append(EnrolledKey(site, line, ssh_fingerprint(line),
                                        CoordinatorFiles.under(out).site_public_key(site)))

        coord = CoordinatorFiles.under(staging)
        _mkdir_private(coord.folder)
        _write_public(coord.certificate, _pem_cert(server_cert))
        _write_private(coord.key, _pem_private(server_key))
        _write_public(coord.ca_certificate, ca_pem)
        coord.site_keys.mkdir()
        for k in enrolled:
            _write_public(coord.site_public_key(k.site), k.public_key + "\n")
        _write_public(coord.enrolled_json, _enrolled_json(enrolled))
        _write_public(coord.folder / "README.txt", COORDINATOR_README.format(
            names=", ".join(_san_text(s) for s in sans),
            server_until=server_cert.not_valid_after_utc.isoformat()))

        replaced = _swap_in(staging, out, [p for p in parts if (out / p).exists()], parts)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created_out and not any(out.iterdir()):
            out.rmdir()
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return Pki(out, CaFiles.under(out), CoordinatorFiles.under(out),
               {s: SiteFiles.under(out, s) for s in site_names},
               [_san_text(s) for s in sans], replaced)


def _swap_in(staging: Path, out: Path, old: list[str], parts: Sequence[str]) -> Path | None:
    """Move ``staging/<part>`` to ``out/<part>``; earlier parts go to ``out/replaced-*``.

    Renames within one file system; if one fails, the earlier state is put back.
    """
    backup = None
    done: list[tuple[Path, Path]] = []
    try:
        if old:
            stamp = _now().strftime("%Y%m%dT%H%M%SZ")
            backup, n = out / f"replaced-{stamp}", 1
            while backup.exists():
                n += 1
                backup = out / f"replaced-{stamp}-{n}"
            backup.mkdir(mode=0o700)
            for p in old:
                os.rename(out / p, backup / p)
                done.append((out / p, backup / p))
        for p in parts:
            os.rename(staging / p, out / p)
            done.append((staging / p, out / p))
    except BaseException:
        for src, dst in reversed(done):
            os.rename(dst, src)
        if backup is not None:
            backup.rmdir()
        raise
    return backup


def add_site(out: Path, site: str) -> SiteFiles:
    """Add a site to an existing PKI: a new key pair, enrolled at the coordinator.

    Needs ``out/coordinator`` (its ``ca.crt`` is copied to the site); the CA key is not
    used, so ``out/ca`` may be offline. Writes ``out/sites/<site>/``,
    ``out/coordinator/sites/<site>.pub`` and updates ``out/coordinator/enrolled.json``.

    Raises
    ------
    InvalidName
        ``site`` is not 1-64 of ``[A-Za-z0-9_-]`` (``.field == "site"``).
    PkiExists
        The site already exists (folder, enrolled key or enrolled.json entry).
    PkiError
        ``out`` holds no coordinator folder (run ``init`` first).
    """
    site = validate_site_name(site, "site")
    out = Path(out)
    coord = CoordinatorFiles.under(out)
    if not coord.ca_certificate.is_file():
        raise PkiError(f"{coord.ca_certificate} not found: {out} is not a folder written by "
                       "`spinemet certs init` (run that first)")
    enrolled = load_enrolled_keys(coord.folder)
    sites_dir = out / "sites"
    taken = {s.lower() for s in enrolled}
    if sites_dir.is_dir():
        taken |= {p.name.lower() for p in sites_dir.iterdir()}
    if coord.site_keys.is_dir():
        taken |= {p.stem.lower() for p in coord.site_keys.glob("*.pub")}
    if site.lower() in taken:
        raise PkiExists(f"site {site!r} already exists in {out} (names are compared "
                        "ignoring case); choose another name. Replacing a site's key means "
                        "revoking the old one at the SuperLink first")
    ca_pem = coord.ca_certificate.read_bytes()
    sites_dir.mkdir(mode=0o700, exist_ok=True)

    target = SiteFiles.under(out, site)
    staging = Path(tempfile.mkdtemp(prefix=f".{site}-", dir=sites_dir))
    pub_tmp: Path | None = None
    try:
        line = _write_site_folder(staging / site, site, ca_pem)
        key = EnrolledKey(site, line, ssh_fingerprint(line), coord.site_public_key(site))
        coord.site_keys.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{site}.", suffix=".tmp", dir=coord.site_keys)
        pub_tmp = Path(tmp)
        with os.fdopen(fd, "w") as f:
            f.write(line + "\n")
        os.chmod(pub_tmp, 0o644)   # a public key; mkstemp creates 0600
        # Publish the site folder first, then the enrolment: a failure in between leaves a
        # site nobody enrolled (harmless), never an enrolled key without its site.
        os.rename(staging / site, target.folder)
        linked = False
        try:
            os.link(pub_tmp, key.path)   # unlike rename, refuses to replace an existing key
            linked = True
            _replace_file(coord.enrolled_json, _enrolled_json([*enrolled.values(), key]))
        except BaseException:
            if linked:
                key.path.unlink()
            shutil.rmtree(target.folder, ignore_errors=True)
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if pub_tmp is not None:
            pub_tmp.unlink(missing_ok=True)
    return target


def load_enrolled_keys(coordinator_dir: Path) -> dict[str, EnrolledKey]:
    """The enrolled sites' public keys, checked against ``enrolled.json``.

    Raises
    ------
    PkiError
        ``enrolled.json`` and ``sites/*.pub`` disagree, or a key is unreadable or not an
        EC key on a NIST curve (what ``flwr supernode register`` accepts).
    """
    coord = CoordinatorFiles.at(coordinator_dir)
    record: dict = {}
    if coord.enrolled_json.exists():
        try:
            record = json.loads(coord.enrolled_json.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise PkiError(f"cannot read {coord.enrolled_json}: {exc}") from exc
        if not isinstance(record, dict):
            raise PkiError(f"{coord.enrolled_json} is not a JSON object {{site: key}}")
    files = {p.stem: p for p in coord.site_keys.glob("*.pub")} if coord.site_keys.is_dir() \
        else {}
    if set(record) != set(files):
        raise PkiError(f"{coord.enrolled_json} lists {sorted(record)} but {coord.site_keys} "
                       f"holds keys for {sorted(files)}: the enrolment record is inconsistent")
    keys: dict[str, EnrolledKey] = {}
    for site in sorted(files):
        line = files[site].read_text("utf-8").strip()
        try:
            public = serialization.load_ssh_public_key(line.encode("ascii"))
        except (ValueError, UnsupportedAlgorithm, UnicodeEncodeError) as exc:
            raise PkiError(f"{files[site]} is not an OpenSSH public key: {exc}") from exc
        if not isinstance(public, ec.EllipticCurvePublicKey) or not isinstance(
                public.curve, (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)):
            raise PkiError(f"{files[site]} is not an ECDSA key on a NIST curve, which Flower's "
                           "SuperNode authentication requires")
        fingerprint = ssh_fingerprint(line)
        entry = record[site]
        # Our own record is {"public_key", "fingerprint"}; a bare line or fingerprint is
        # accepted too, for a record kept by hand.
        listed = ({entry.get("public_key"), entry.get("fingerprint")}
                  if isinstance(entry, dict) else {entry})
        if not listed & {line, fingerprint}:
            raise PkiError(f"{coord.enrolled_json} and {files[site]} disagree on the key of "
                           f"site {site!r}")
        keys[site] = EnrolledKey(site, line, fingerprint, files[site])
    return keys


def check_site_folder(path: Path) -> SiteFiles:
    """Check a site folder before a SuperNode uses it; its files if it is sound.

    A site folder must hold exactly this site's key pair (the private key readable by its
    owner only) and a CA certificate, and no other private key: not the CA's, not the
    coordinator's, not another site's.

    Raises
    ------
    SiteFolderError
        With a message saying what is wrong and what to do.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise SiteFolderError(f"{folder} is not a folder: point at the site folder written by "
                              "`spinemet certs init/add-site` (OUT/sites/<site>)")
    files = SiteFiles.at(folder)
    for needed, what in ((files.private_key, "the site's private key"),
                         (files.public_key, "the site's public key"),
                         (files.ca_certificate, "the federation CA certificate")):
        if not needed.is_file():
            raise SiteFolderError(f"{folder} lacks {needed.name} ({what}): this is not a "
                                  "site folder written by `spinemet certs`")
    try:
        ca_cert = x509.load_pem_x509_certificate(files.ca_certificate.read_bytes())
        ca_ok = ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except (ValueError, x509.ExtensionNotFound):
        ca_ok = False
    if not ca_ok:
        raise SiteFolderError(f"{files.ca_certificate} is not a CA certificate")

    _refuse_foreign_private_keys(folder, files, ca_cert)

    if os.name == "posix" and files.private_key.stat().st_mode & 0o077:
        raise SiteFolderError(f"{files.private_key} is readable by other users (mode "
                              f"{files.private_key.stat().st_mode & 0o777:o}): run "
                              f"`chmod 600 {files.private_key}`")
    key = load_site_private_key(files.private_key)
    try:
        public = serialization.load_ssh_public_key(files.public_key.read_bytes().strip())
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise SiteFolderError(f"{files.public_key} is not an OpenSSH public key: {exc}") from exc
    if public != key.public_key():
        raise SiteFolderError(f"{files.public_key} does not belong to {files.private_key}: "
                              "the folder mixes two sites' keys")
    return files


def _refuse_foreign_private_keys(folder: Path, files: SiteFiles,
                                 ca_cert: x509.Certificate) -> None:
    for p in sorted(folder.rglob("*")):
        if p.is_symlink():
            raise SiteFolderError(f"{p} is a symbolic link; a site folder holds plain files "
                                  "only")
        if not p.is_file() or p == files.private_key:
            continue
        if p.name == "ca.key":
            raise SiteFolderError(_ca_key_message(p))
        with p.open("rb") as f:
            head = f.read(_SCAN_LIMIT)
        if _PRIVATE_KEY_MARKER not in head:
            continue
        try:
            key = serialization.load_pem_private_key(head, None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            key = None
        if key is not None and key.public_key() == ca_cert.public_key():
            raise SiteFolderError(_ca_key_message(p))
        raise SiteFolderError(f"{p} holds a private key that is not this site's: a site folder "
                              "must never hold the CA key, the coordinator's key or another "
                              "site's key. Remove it, and treat that key as exposed")


def _ca_key_message(p: Path) -> str:
    return (f"{p} is the federation CA's private key: it must never be on a site. Remove it, "
            "and since the CA key has left its offline store, re-issue the PKI "
            "(`spinemet certs init --force`) and redistribute the site folders")
