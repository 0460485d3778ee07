"""Certificates for signing keys: CSR signed by the key (file or HSM), chain import with its
checks, expiry in ``keys list``, and a receiver that trusts only a CA verifying a JWT by x5c."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.verification import (
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)
from jwcrypto import jwk, jws

from attester.cli import main
from attester.service import build_service
from attester.settings import AppConfig
from keys.certs import CertificateError, build_csr, check_chain
from keys.signer import FileSigner
from tests.ca import NOW, LocalCa
from tests.ca import make_cert as _cert
from tests.ca import name as _name
from tests.e2e.e2e_support import write_config
from tests.softhsm import SoftHsm
from tests.support import MutableClock, new_instance_key, public_jwk

APP = AppConfig(client_id="client-1")


def _config(tmp_path: Path, **extra: Any) -> list[str]:
    config = write_config(
        tmp_path / "attester.toml",
        {"issuer": "https://attester.test", **extra, "apps": [{"client_id": "client-1"}]},
    )
    return ["--config", str(config), "--data-dir", str(tmp_path / "data")]


def _init_keys(args: list[str]) -> str:
    """Create the first key as ``attester serve`` does on first start; return its kid."""
    from attester.settings import load_settings
    from attester.signing_keys import build_key_store

    store = build_key_store(load_settings(Path(args[1]), data_dir=Path(args[3])))
    created = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)  # before `clock`
    store.ensure_initialised(created)
    return store.active_signer(created).kid


# -- the CSR ------------------------------------------------------------------------------------
def test_csr_file_key_is_valid_pkcs10_for_the_key() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = build_csr(FileSigner("kid", key), _name("attester.example"))
    parsed = x509.load_der_x509_csr(csr.public_bytes(serialization.Encoding.DER))
    assert parsed.is_signature_valid
    assert parsed.subject == _name("attester.example")
    assert parsed.public_key() == key.public_key()
    assert parsed.signature_hash_algorithm is not None
    assert parsed.signature_hash_algorithm.name == "sha256"


def test_csr_signature_by_another_key_invalid() -> None:
    """The check above can fail: a request whose signature is not by its key is invalid."""
    key, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())

    class Mixed(FileSigner):
        def public_key(self) -> ec.EllipticCurvePublicKey:
            return other.public_key()

    assert not build_csr(Mixed("kid", key), _name("x")).is_signature_valid


@pytest.mark.parametrize("backend", ["file", "pkcs11"])
def test_cli_csr_import_then_receiver_trusting_only_ca_verifies_jwt_by_x5c(
    backend: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    clock: MutableClock,
    capsys: pytest.CaptureFixture[str],
) -> None:
    extra: dict[str, Any] = {}
    if backend == "pkcs11":
        extra["pkcs11"] = request.getfixturevalue("softhsm").settings()
    args = _config(tmp_path, **extra)
    kid = _init_keys(args)
    csr_file = tmp_path / "key.csr"
    assert (
        main(
            [
                "keys",
                "csr",
                f"--kid={kid}",  # a kid may start with "-"
                "--subject",
                "CN=attester.test,O=Test",
                "--out",
                str(csr_file),
                *args,
            ]
        )
        == 0
    )
    csr = x509.load_pem_x509_csr(csr_file.read_bytes())
    ca = LocalCa.make()
    chain = tmp_path / "chain.pem"
    chain.write_bytes(ca.chain_pem(ca.sign_csr(csr)))
    assert main(["keys", "import-cert", f"--kid={kid}", str(chain), *args]) == 0
    assert json.loads(capsys.readouterr().out)["certificates"] == 2
    assert (tmp_path / "data" / "keys" / f"{kid}.x5c.pem").exists()

    from attester.settings import load_settings

    settings = load_settings(Path(args[1]), data_dir=tmp_path / "data")
    svc = build_service(settings, clock=clock)
    try:
        token = svc.issuer.issue(
            app=APP, instance_jwk=public_jwk(new_instance_key()), now=clock()
        ).jwt
    finally:
        svc.store.dispose()

    # the receiver: knows only the root CA, never fetches a JWKS
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    certs = [x509.load_der_x509_certificate(base64.b64decode(c)) for c in header["x5c"]]
    verifier = (
        PolicyBuilder()
        .store(Store([ca.root]))
        .time(datetime.now(UTC))
        .extension_policies(
            ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ExtensionPolicy.permit_all()
        )
        .build_client_verifier()
    )
    verified = verifier.verify(certs[0], certs[1:])
    assert verified.chain[-1] == ca.root
    leaf_jwk = jwk.JWK.from_pyca(certs[0].public_key())
    checked = jws.JWS()
    checked.deserialize(token)
    checked.verify(leaf_jwk)  # raises if the leaf's key did not sign the JWT
    assert json.loads(checked.payload)["sub"] == "client-1"

    other_ca = LocalCa.make()  # a receiver trusting another CA refuses the chain
    with pytest.raises(VerificationError):
        (
            PolicyBuilder()
            .store(Store([other_ca.root]))
            .time(datetime.now(UTC))
            .extension_policies(
                ca_policy=ExtensionPolicy.webpki_defaults_ca(),
                ee_policy=ExtensionPolicy.permit_all(),
            )
            .build_client_verifier()
            .verify(certs[0], certs[1:])
        )


# -- import checks: one test per code -----------------------------------------------------------
@pytest.fixture
def keyed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[list[str], str, x509.CertificateSigningRequest]:
    args = _config(tmp_path)
    kid = _init_keys(args)
    assert main(["keys", "csr", f"--kid={kid}", *args]) == 0  # PEM on standard output
    csr = x509.load_pem_x509_csr(capsys.readouterr().out.encode())
    return args, kid, csr


def _import(
    tmp_path: Path, args: list[str], kid: str, pem: bytes, capsys: pytest.CaptureFixture[str]
) -> tuple[int, dict[str, Any]]:
    path = tmp_path / "import.pem"
    path.write_bytes(pem)
    capsys.readouterr()
    status = main(["keys", "import-cert", f"--kid={kid}", str(path), *args])
    out = capsys.readouterr().out
    return status, json.loads(out) if out.strip() else {}


def _bad_chains(ca: LocalCa, csr: x509.CertificateSigningRequest) -> dict[str, bytes]:
    leaf = ca.sign_csr(csr)
    stranger = ec.generate_private_key(ec.SECP256R1())
    other_ca = LocalCa.make()
    # same name and key as the issuing CA, but its certificate says it is not a CA
    not_ca_issuer = _cert(
        ca.inter.subject, ca.inter_key.public_key(), _name("test root"), ca.root_key
    )
    return {
        "certificate_chain_malformed": b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
        "certificate_key_mismatch": ca.chain_pem(
            _cert(csr.subject, stranger.public_key(), ca.inter.subject, ca.inter_key)
        ),
        "certificate_chain_broken": b"".join(
            c.public_bytes(serialization.Encoding.PEM) for c in (leaf, other_ca.inter)
        ),
        "certificate_issuer_not_ca": b"".join(
            c.public_bytes(serialization.Encoding.PEM) for c in (leaf, not_ca_issuer)
        ),
        "certificate_chain_includes_anchor": ca.chain_pem(leaf, ca.root),
        "certificate_expired": ca.chain_pem(
            ca.sign_csr(csr, days=1, not_before=NOW - timedelta(days=3))
        ),
        "certificate_not_yet_valid": ca.chain_pem(
            ca.sign_csr(csr, days=30, not_before=NOW + timedelta(days=2))
        ),
    }


@pytest.mark.parametrize(
    "code",
    [
        "certificate_chain_malformed",
        "certificate_key_mismatch",
        "certificate_chain_broken",
        "certificate_issuer_not_ca",
        "certificate_chain_includes_anchor",
        "certificate_expired",
        "certificate_not_yet_valid",
    ],
)
def test_import_cert_bad_chain_refused_with_code(
    code: str,
    keyed: tuple[list[str], str, x509.CertificateSigningRequest],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args, kid, csr = keyed
    status, out = _import(tmp_path, args, kid, _bad_chains(LocalCa.make(), csr)[code], capsys)
    assert status == 1 and out["error"] == code
    assert not (tmp_path / "data" / "keys" / f"{kid}.x5c.pem").exists()


def test_import_cert_unknown_kid_refused(
    keyed: tuple[list[str], str, x509.CertificateSigningRequest],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args, _, csr = keyed
    ca = LocalCa.make()
    status, _ = _import(tmp_path, args, "no-such-kid", ca.chain_pem(ca.sign_csr(csr)), capsys)
    assert status == 1


def test_check_chain_without_now_ignores_dates() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    ca = LocalCa.make()
    leaf = _cert(
        _name("k"),
        key.public_key(),
        ca.inter.subject,
        ca.inter_key,
        days=1,
        not_before=NOW - timedelta(days=5),
    )
    check_chain([leaf, ca.inter], key.public_key(), now=None)
    with pytest.raises(CertificateError):
        check_chain([leaf, ca.inter], key.public_key(), now=NOW)


# -- expiry in keys list ------------------------------------------------------------------------
@pytest.mark.parametrize(("days", "warned"), [(10, True), (90, False)])
def test_keys_list_shows_certificate_expiry_and_warns_before(
    days: int,
    warned: bool,
    keyed: tuple[list[str], str, x509.CertificateSigningRequest],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args, kid, csr = keyed
    ca = LocalCa.make()
    leaf = ca.sign_csr(csr, days=days)
    assert _import(tmp_path, args, kid, ca.chain_pem(leaf), capsys)[0] == 0
    assert main(["keys", "list", *args]) == 0
    captured = capsys.readouterr()
    (row,) = json.loads(captured.out)["keys"]
    assert row["certificate_expires_at"] == leaf.not_valid_after_utc.isoformat()
    assert (f"warning: the certificate of key {kid} expires" in captured.err) is warned


def test_running_service_picks_up_imported_chain(
    keyed: tuple[list[str], str, x509.CertificateSigningRequest],
    tmp_path: Path,
    clock: MutableClock,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from attester.settings import load_settings

    args, kid, csr = keyed
    svc = build_service(load_settings(Path(args[1]), data_dir=tmp_path / "data"), clock=clock)
    try:
        jwk_ = public_jwk(new_instance_key())
        first = svc.issuer.issue(app=APP, instance_jwk=jwk_, now=clock()).jwt
        assert "x5c" not in json.loads(base64.urlsafe_b64decode(first.split(".")[0] + "=="))
        ca = LocalCa.make()
        assert _import(tmp_path, args, kid, ca.chain_pem(ca.sign_csr(csr)), capsys)[0] == 0
        time.sleep(1.1)  # issuance looks at keys.json at most once a second (KeyStore.reload)
        second = svc.issuer.issue(app=APP, instance_jwk=jwk_, now=clock()).jwt
        assert len(json.loads(base64.urlsafe_b64decode(second.split(".")[0] + "=="))["x5c"]) == 2
    finally:
        svc.store.dispose()


def test_csr_hsm_key_is_valid_pkcs10(softhsm: SoftHsm, tmp_path: Path) -> None:
    from keys.pkcs11 import Pkcs11Config, Pkcs11Token
    from keys.store import KeyStore

    token = Pkcs11Token(
        Pkcs11Config(module=softhsm.module, pin=softhsm.settings()["pin"], token_label="attester")
    )
    store = KeyStore(tmp_path / "keys", retention=timedelta(days=1), token=token)
    store.ensure_initialised(NOW)
    signer = store.active_signer(NOW)
    csr = build_csr(signer, _name("hsm key"))
    assert csr.is_signature_valid and csr.public_key() == signer.public_key()


@pytest.mark.parametrize(("days", "omitted"), [(0.05, True), (90, False)])
def test_keys_list_warns_when_chain_does_not_cover_a_jwt_x5c_omitted(
    days: float,
    omitted: bool,
    keyed: tuple[list[str], str, x509.CertificateSigningRequest],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args, kid, csr = keyed
    ca = LocalCa.make()
    public = csr.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    # valid now, but ends about 12 minutes from now: shorter than the 1 h JWT lifetime
    leaf = _cert(csr.subject, public, ca.inter.subject, ca.inter_key, days=days)  # type: ignore[arg-type]
    assert _import(tmp_path, args, kid, ca.chain_pem(leaf), capsys)[0] == 0
    assert main(["keys", "list", *args]) == 0
    err = capsys.readouterr().err
    assert ("JWTs are sent without x5c" in err) is omitted
