"""``spinemet certs``: the federation's CA, coordinator TLS certificate and site keys."""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import shutil
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
import typer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from typer.testing import CliRunner

from spinemet.common import certs
from spinemet.common.certs import (CaFiles, CoordinatorFiles, InvalidName, PkiExists,
                                   SiteFiles, SiteFolderError, add_site, check_site_folder,
                                   init_pki, load_enrolled_keys)
from spinemet.common.cli_certs import certs_app

SERVER_NAMES = "localhost,127.0.0.1,fl.hospital.org,::1"
SITES = ["A", "B", "C"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> certs.Pki:
    """One PKI shared by the read-only tests (tests that change files make their own)."""
    return init_pki(tmp_path_factory.mktemp("pki") / "out", SERVER_NAMES, ",".join(SITES))


@pytest.fixture
def cli():
    app = typer.Typer()
    app.add_typer(certs_app, name="certs")
    runner = CliRunner()

    def invoke(*args: str):
        res = runner.invoke(app, ["certs", *args])
        # Rich wraps and boxes messages: compare words, not layout.
        res.text = " ".join(res.output.replace("│", " ").split())
        return res

    return invoke


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ----------------------------------------------------------------------------- certificates


def test_server_certificate_verifies_against_the_ca_for_each_name(pki):
    from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

    ca = _cert(pki.ca.certificate)
    server = _cert(pki.coordinator.certificate)
    builder = PolicyBuilder().store(Store([ca])).time(dt.datetime.now(dt.timezone.utc))
    for name in (x509.DNSName("localhost"), x509.DNSName("fl.hospital.org"),
                 x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                 x509.IPAddress(ipaddress.ip_address("::1"))):
        chain = builder.build_server_verifier(name).verify(server, [])
        assert chain[-1] == ca
    with pytest.raises(VerificationError):
        builder.build_server_verifier(x509.DNSName("evil.example.org")).verify(server, [])


def test_server_certificate_holds_exactly_the_requested_sans(pki):
    san = _cert(pki.coordinator.certificate).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "fl.hospital.org"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"),
                                                        ipaddress.ip_address("::1")]
    assert len(list(san)) == 4
    assert pki.server_names == ["localhost", "127.0.0.1", "fl.hospital.org", "::1"]


def test_loopback_names_are_always_in_the_certificate(tmp_path):
    pki = init_pki(tmp_path / "pki", "fl.hospital.org", "A")
    san = _cert(pki.coordinator.certificate).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["fl.hospital.org", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]


def test_ca_is_a_path_length_zero_ca_valid_ten_years(pki):
    ca = _cert(pki.ca.certificate)
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and not ku.digital_signature
    assert isinstance(ca.signature_hash_algorithm, hashes.SHA256)
    years = (ca.not_valid_after_utc - ca.not_valid_before_utc).days / 365.25
    assert 9.9 < years < 10.1


def test_server_certificate_is_for_server_auth_only_valid_two_years(pki):
    server = _cert(pki.coordinator.certificate)
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(server.signature_hash_algorithm, hashes.SHA256)
    assert server.issuer == _cert(pki.ca.certificate).subject
    years = (server.not_valid_after_utc - server.not_valid_before_utc).days / 365.25
    assert 1.9 < years < 2.1


def test_server_key_matches_server_certificate(pki):
    key = serialization.load_pem_private_key(pki.coordinator.key.read_bytes(), None)
    assert key.public_key() == _cert(pki.coordinator.certificate).public_key()


def test_every_folder_holds_the_same_ca_certificate(pki):
    ca = pki.ca.certificate.read_bytes()
    assert pki.coordinator.ca_certificate.read_bytes() == ca
    assert all(s.ca_certificate.read_bytes() == ca for s in pki.sites.values())


def test_ca_folder_has_a_keep_offline_readme(pki):
    assert "OFFLINE" in (pki.ca.folder / "README.txt").read_text()


# ----------------------------------------------------------------------------- file modes


def test_private_keys_are_mode_0600_and_key_folders_0700(pki):
    keys = [pki.ca.key, pki.coordinator.key] + [s.private_key for s in pki.sites.values()]
    assert {_mode(k) for k in keys} == {0o600}
    folders = [pki.ca.folder, pki.coordinator.folder] + [s.folder for s in pki.sites.values()]
    assert {_mode(f) for f in folders} == {0o700}


def test_private_key_is_created_0600_not_chmodded_afterwards(tmp_path, monkeypatch):
    chmodded = []
    real_chmod = certs.os.chmod
    monkeypatch.setattr(certs.os, "chmod", lambda p, m, **kw: (chmodded.append(Path(p)),
                                                               real_chmod(p, m, **kw)))
    init_pki(tmp_path / "out", "localhost", "A")
    assert not [p for p in chmodded if "key" in p.name]


# ----------------------------------------------------------------------------- site folders


def test_site_folder_holds_only_its_own_key_pair_and_the_ca_certificate(pki):
    for name, site in pki.sites.items():
        assert sorted(p.name for p in site.folder.iterdir()) == [
            "README.txt", "ca.crt", "site_auth_key", "site_auth_key.pub"]
        text = b"".join(p.read_bytes() for p in site.folder.iterdir())
        assert pki.ca.key.read_bytes() not in text
        assert pki.coordinator.key.read_bytes() not in text
        for other in set(pki.sites) - {name}:
            assert pki.sites[other].private_key.read_bytes() not in text


def test_site_key_loads_with_flowers_supernode_loader_and_matches_enrolled_key(pki):
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes
    from flwr.supernode.cli.flower_supernode import _try_setup_client_authentication

    for name, site in pki.sites.items():
        args = argparse.Namespace(auth_supernode_private_key=str(site.private_key),
                                  auth_supernode_public_key=None)
        private, public = _try_setup_client_authentication(args)
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        assert isinstance(private.curve, ec.SECP384R1)
        # What `flwr supernode register coordinator/sites/<site>.pub` sends to the SuperLink:
        enrolled = try_load_public_key(pki.coordinator.site_public_key(name))
        assert enrolled == public_key_to_bytes(public)
        assert try_load_public_key(site.public_key) == enrolled


def test_enrolled_json_lists_each_site_with_its_pub_file(pki):
    keys = load_enrolled_keys(pki.coordinator.folder)
    assert sorted(keys) == SITES
    for name, key in keys.items():
        assert key.path == pki.coordinator.site_public_key(name)
        assert key.public_key == pki.sites[name].public_key.read_text().strip()
        assert key.public_key.startswith("ecdsa-sha2-nistp384 ")
        assert key.fingerprint.startswith("SHA256:")
    assert len({k.fingerprint for k in keys.values()}) == len(SITES)


def test_check_site_folder_accepts_a_written_site_folder(pki):
    files = check_site_folder(pki.sites["A"].folder)
    assert files.private_key == pki.sites["A"].private_key


def _copy_site(pki, tmp_path, site="A") -> Path:
    dst = tmp_path / site
    shutil.copytree(pki.sites[site].folder, dst)
    return dst


def test_check_site_folder_refuses_a_folder_holding_the_ca_key(pki, tmp_path):
    folder = _copy_site(pki, tmp_path)
    shutil.copy(pki.ca.key, folder / "ca.key")
    with pytest.raises(SiteFolderError, match="CA's private key"):
        check_site_folder(folder)


def test_check_site_folder_recognises_the_ca_key_under_another_name(pki, tmp_path):
    folder = _copy_site(pki, tmp_path)
    (folder / "backup").mkdir()
    shutil.copy(pki.ca.key, folder / "backup" / "old.pem")
    with pytest.raises(SiteFolderError, match="CA's private key"):
        check_site_folder(folder)


def test_check_site_folder_refuses_another_sites_key(pki, tmp_path):
    folder = _copy_site(pki, tmp_path)
    shutil.copy(pki.sites["B"].private_key, folder / "B_key")
    with pytest.raises(SiteFolderError, match="not this site's"):
        check_site_folder(folder)


def test_check_site_folder_refuses_a_mismatched_key_pair(pki, tmp_path):
    folder = _copy_site(pki, tmp_path)
    shutil.copy(pki.sites["B"].public_key, folder / "site_auth_key.pub")
    with pytest.raises(SiteFolderError, match="does not belong"):
        check_site_folder(folder)


def test_check_site_folder_refuses_a_key_readable_by_others(pki, tmp_path):
    folder = _copy_site(pki, tmp_path)
    (folder / "site_auth_key").chmod(0o644)
    with pytest.raises(SiteFolderError, match="chmod 600"):
        check_site_folder(folder)


def test_check_site_folder_refuses_the_coordinator_folder(pki):
    with pytest.raises(SiteFolderError, match="site_auth_key"):
        check_site_folder(pki.coordinator.folder)


# ----------------------------------------------------------------------------- add-site


def test_add_site_enrols_a_new_key_without_the_ca_key(tmp_path, cli):
    out = tmp_path / "out"
    init_pki(out, "localhost", "A,B")
    ca_before = {p.name: p.read_bytes() for p in (out / "ca").iterdir()}
    enrolled_before = load_enrolled_keys(out / "coordinator")
    shutil.move(out / "ca", tmp_path / "offline-ca")      # the CA is kept offline

    res = cli("add-site", "--out", str(out), "--site", "D")
    assert res.exit_code == 0, res.output
    keys = load_enrolled_keys(out / "coordinator")
    assert sorted(keys) == ["A", "B", "D"]
    assert {s: keys[s] for s in "AB"} == enrolled_before
    site = check_site_folder(out / "sites" / "D")
    assert site.public_key.read_text().strip() == keys["D"].public_key
    assert _mode(site.private_key) == 0o600
    assert {p.name: p.read_bytes() for p in (tmp_path / "offline-ca").iterdir()} == ca_before
    assert not [p for p in (out / "sites").iterdir() if p.name.startswith(".")]


def test_add_site_refuses_an_existing_site(tmp_path, cli):
    out = tmp_path / "out"
    init_pki(out, "localhost", "A,B")
    key_before = (out / "sites" / "A" / "site_auth_key").read_bytes()
    for name in ("A", "a"):          # folders would collide on case-insensitive disks
        res = cli("add-site", "--out", str(out), "--site", name)
        assert res.exit_code == 2
        assert "already exists" in res.text
    with pytest.raises(PkiExists, match="'B' already exists"):
        add_site(out, "B")
    assert (out / "sites" / "A" / "site_auth_key").read_bytes() == key_before
    assert sorted(load_enrolled_keys(out / "coordinator")) == ["A", "B"]


def test_add_site_needs_an_initialised_folder(tmp_path, cli):
    res = cli("add-site", "--out", str(tmp_path), "--site", "D")
    assert res.exit_code == 2
    assert "certs init" in res.text


# ----------------------------------------------------------------------------- bad input

BAD_SITE_NAMES = ["a b", "../x", "x" * 65, "é", "A/B", ""]


@pytest.mark.parametrize("name", BAD_SITE_NAMES)
def test_invalid_site_name_is_refused_naming_the_field(name, tmp_path, cli):
    with pytest.raises(InvalidName) as err:
        init_pki(tmp_path / "out", "localhost", ["A", name])
    assert err.value.field == "sites" and "site name" in str(err.value)
    res = cli("init", "--out", str(tmp_path / "out"), "--server-name", "localhost",
              "--sites", f"A,{name}")
    assert res.exit_code == 2
    assert "--sites" in res.text and "site name" in res.text
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["a b", "x" * 65, ""])
def test_add_site_refuses_an_invalid_name_naming_the_field(name, pki, cli):
    res = cli("add-site", "--out", str(pki.root), "--site", name)
    assert res.exit_code == 2
    assert "--site" in res.text and "site name" in res.text
    assert sorted(load_enrolled_keys(pki.coordinator.folder)) == SITES


def test_a_site_listed_twice_is_refused(tmp_path):
    with pytest.raises(InvalidName, match="listed twice"):
        init_pki(tmp_path / "out", "localhost", "A,B,a")


@pytest.mark.parametrize("names", ["", " ", "localhost,", "localhost,,127.0.0.1"])
def test_empty_server_name_is_refused_naming_the_field(names, tmp_path, cli):
    with pytest.raises(InvalidName) as err:
        init_pki(tmp_path / "out", names, "A")
    assert err.value.field == "server-name" and "empty" in str(err.value)
    res = cli("init", "--out", str(tmp_path / "out"), "--server-name", names, "--sites", "A")
    assert res.exit_code == 2
    assert "--server-name" in res.text and "empty" in res.text
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("names", ["bad_name.org", "*.hospital.org", "-x.org", "a..b"])
def test_invalid_server_name_is_refused(names):
    with pytest.raises(InvalidName, match="server-name"):
        certs.parse_server_names(names)


def test_server_names_are_parsed_into_dns_and_ip_entries():
    sans = certs.parse_server_names(" FL.Hospital.org , 10.0.0.5,localhost,10.0.0.5")
    assert sans == [x509.DNSName("fl.hospital.org"),
                    x509.IPAddress(ipaddress.ip_address("10.0.0.5")),
                    x509.DNSName("localhost")]


# ----------------------------------------------------------------------------- no clobbering


def test_init_refuses_to_overwrite_an_existing_ca(tmp_path, cli):
    out = tmp_path / "out"
    init_pki(out, "localhost", "A")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(PkiExists):
        init_pki(out, "localhost", "A")
    res = cli("init", "--out", str(out), "--server-name", "localhost", "--sites", "A")
    assert res.exit_code == 2
    assert "--force" in res.text
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_init_force_replaces_the_pki_and_keeps_the_old_one_aside(tmp_path, cli):
    out = tmp_path / "out"
    old = init_pki(out, "localhost", "A")
    old_ca = old.ca.key.read_bytes()
    res = cli("init", "--out", str(out), "--server-name", "localhost", "--sites", "A,B",
              "--force")
    assert res.exit_code == 0, res.output
    assert old.ca.key.read_bytes() != old_ca
    assert sorted(load_enrolled_keys(out / "coordinator")) == ["A", "B"]
    (backup,) = out.glob("replaced-*")
    assert (backup / "ca" / "ca.key").read_bytes() == old_ca
    assert _mode(backup) == 0o700


def test_a_failed_first_init_leaves_no_folder_behind(tmp_path, monkeypatch):
    monkeypatch.setattr(certs, "make_server_certificate",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        init_pki(tmp_path / "out", "localhost", "A")
    assert not (tmp_path / "out").exists()


def test_a_failed_init_leaves_earlier_files_untouched(tmp_path, monkeypatch):
    out = tmp_path / "out"
    init_pki(out, "localhost", "A")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(certs, "make_server_certificate", broken)
    with pytest.raises(OSError, match="disk full"):
        init_pki(out, "localhost", "A,B", force=True)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in out.iterdir()) == ["ca", "coordinator", "sites"]


# ----------------------------------------------------------------------------- real TLS


@pytest.fixture(scope="module")
def tls_server(pki):
    """A TLS server on 127.0.0.1 presenting the coordinator's certificate (as uvicorn would)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.coordinator.certificate, pki.coordinator.key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except (socket.timeout, OSError):
                continue
            conn.settimeout(5)
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"hello")
            except (ssl.SSLError, OSError):
                pass   # the client refused our certificate: expected in some tests

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(timeout=5)
    listener.close()


def _client_context(ca_file: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_file))   # this CA only
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


def _handshake(port: int, context: ssl.SSLContext, hostname: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=hostname) as tls:
            return tls.recv(5)


@pytest.mark.parametrize("hostname", ["localhost", "127.0.0.1"])
def test_tls_client_trusting_only_the_ca_accepts_the_coordinator(pki, tls_server, hostname):
    assert _handshake(tls_server, _client_context(pki.sites["A"].ca_certificate),
                      hostname) == b"hello"


def test_tls_client_refuses_a_hostname_not_in_the_certificate(pki, tls_server):
    with pytest.raises(ssl.SSLCertVerificationError, match="match|mismatch"):
        _handshake(tls_server, _client_context(pki.sites["A"].ca_certificate),
                   "fl.other-hospital.org")


def test_tls_client_with_another_federations_ca_refuses_the_coordinator(pki, tls_server,
                                                                         tmp_path):
    other = init_pki(tmp_path / "other", "localhost", "A")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(tls_server, _client_context(other.ca.certificate), "localhost")


# ----------------------------------------------------------------------------- help


def test_certs_help_lists_init_and_add_site(cli):
    res = cli("--help")
    assert res.exit_code == 0
    assert "init" in res.text and "add-site" in res.text
    res = cli("init", "--help")
    assert res.exit_code == 0
    assert all(opt in res.text for opt in ("--out", "--server-name", "--sites", "--force"))


def test_layout_dataclasses_name_the_documented_paths(tmp_path):
    assert CaFiles.under(tmp_path).key == tmp_path / "ca" / "ca.key"
    coord = CoordinatorFiles.under(tmp_path)
    assert coord.site_public_key("A") == tmp_path / "coordinator" / "sites" / "A.pub"
    assert coord.enrolled_json == tmp_path / "coordinator" / "enrolled.json"
    site = SiteFiles.under(tmp_path, "A")
    assert (site.private_key, site.public_key, site.ca_certificate) == (
        tmp_path / "sites/A/site_auth_key", tmp_path / "sites/A/site_auth_key.pub",
        tmp_path / "sites/A/ca.crt")
