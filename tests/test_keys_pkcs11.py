"""Signing keys in a PKCS#11 token (SoftHSM2): generation in the token, ES256, rotation,
concurrency across threads and forked workers, and a coded error for each wrong setting."""

from __future__ import annotations

import json
import multiprocessing
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pkcs11.exceptions as p11e
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from jwcrypto import jwk, jwt
from pkcs11 import Attribute, KeyType, ObjectClass

from attester.cli import main
from attester.service import build_service
from attester.settings import AppConfig, ConfigError
from attester.signing_keys import build_key_store
from keys.pkcs11 import Pkcs11Config, Pkcs11Error, Pkcs11Token
from keys.store import KeyRecord, KeyStore, KeyStoreError
from tests.softhsm import TOKENS, SoftHsm
from tests.support import MutableClock, new_instance_key, public_jwk

T0 = datetime(2026, 11, 1, tzinfo=UTC)
RETENTION = timedelta(hours=24, seconds=60)
APP = AppConfig(client_id="client-1")


def _token(hsm: SoftHsm, **overrides: Any) -> Pkcs11Token:
    config: dict[str, Any] = {
        "module": hsm.module,
        "pin": TOKENS["attester"],
        "token_label": "attester",
    }
    config.update(overrides)
    return Pkcs11Token(Pkcs11Config(**config))


@pytest.fixture
def hsm_store(softhsm: SoftHsm, tmp_path: Path) -> KeyStore:
    store = KeyStore(tmp_path / "keys", retention=RETENTION, token=_token(softhsm))
    store.ensure_initialised(T0)
    return store


def _verify_raw(public: ec.EllipticCurvePublicKey, data: bytes, raw: bytes) -> None:
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    public.verify(der, data, ec.ECDSA(hashes.SHA256()))


def _verify_jwt(jwks_body: bytes, token: str) -> dict[str, Any]:
    parsed = jwt.JWT(jwt=token, key=jwk.JWKSet.from_json(jwks_body), check_claims=False)
    claims: dict[str, Any] = json.loads(parsed.claims)
    return claims


# -- keys are made and kept in the token --------------------------------------------------
def test_pkcs11_store_first_key_generated_in_token_not_on_disk(hsm_store: KeyStore) -> None:
    (record,) = json.loads((hsm_store.directory / "keys.json").read_text())["keys"]
    assert record["backend"] == "pkcs11" and len(bytes.fromhex(record["key_ref"])) == 16
    assert not list(hsm_store.directory.glob("*.pem"))  # no private key file
    signer = hsm_store.active_signer(T0)
    assert type(signer).__name__ == "Pkcs11Signer" and signer.kid == record["kid"]


def test_pkcs11_key_is_sensitive_and_never_extractable(hsm_store: KeyStore) -> None:
    record = KeyRecord.from_json(
        json.loads((hsm_store.directory / "keys.json").read_text())["keys"][0]
    )
    assert hsm_store.token is not None and record.key_ref is not None
    with hsm_store.token._session("inspect") as pooled:
        private = pooled.session.get_key(
            object_class=ObjectClass.PRIVATE_KEY, id=bytes.fromhex(record.key_ref)
        )
        assert private[Attribute.SENSITIVE] and not private[Attribute.EXTRACTABLE]
        assert private[Attribute.NEVER_EXTRACTABLE] and private[Attribute.LOCAL]
        with pytest.raises(p11e.AttributeSensitive):
            private[Attribute.VALUE]


def test_pkcs11_signature_is_raw_r_s_and_verifies(hsm_store: KeyStore) -> None:
    signer = hsm_store.active_signer(T0)
    raw = signer.sign(b"header.payload")
    assert len(raw) == 64
    _verify_raw(signer.public_key(), b"header.payload", raw)
    with pytest.raises(InvalidSignature):
        _verify_raw(signer.public_key(), b"header.payload!", raw)


def test_pkcs11_issued_jwt_verifies_with_jwks(
    make_settings: Any, softhsm: SoftHsm, clock: MutableClock
) -> None:
    svc = build_service(make_settings(pkcs11=softhsm.settings()), clock=clock)
    try:
        issued = svc.issuer.issue(app=APP, instance_jwk=public_jwk(new_instance_key()), now=clock())
        claims = _verify_jwt(svc.jwks().body, issued.jwt)
        assert claims["sub"] == "client-1"
        assert svc.key_store.public_key(issued.kid) is not None
    finally:
        svc.store.dispose()


def test_pkcs11_rotation_creates_next_key_in_token(hsm_store: KeyStore) -> None:
    old = hsm_store.active_signer(T0).kid
    record = hsm_store.rotate(T0, delay=timedelta(seconds=360))
    assert record.backend == "pkcs11" and record.kid != old
    later = T0 + timedelta(seconds=360)
    signer = hsm_store.active_signer(later)
    assert signer.kid == record.kid
    header = json.dumps({"alg": "ES256", "kid": signer.kid})
    _verify_raw(signer.public_key(), header.encode(), signer.sign(header.encode()))
    published = {k["kid"] for k in json.loads(hsm_store.jwks(later).body)["keys"]}
    assert published == {old, record.kid}


def test_pkcs11_cli_rotate_makes_token_key(
    softhsm: SoftHsm, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _write_config(tmp_path, softhsm.settings())
    assert main(["keys", "rotate", "--config", str(config), "--data-dir", str(tmp_path / "d")]) == 0
    rotated = json.loads(capsys.readouterr().out)
    assert rotated["backend"] == "pkcs11" and rotated["state"] == "next"
    assert main(["keys", "list", "--config", str(config), "--data-dir", str(tmp_path / "d")]) == 0
    rows = json.loads(capsys.readouterr().out)["keys"]
    assert [r["backend"] for r in rows] == ["pkcs11", "pkcs11"]
    assert rows[-1]["kid"] == rotated["kid"] and rows[-1]["state"] == "next"


def test_pkcs11_file_keys_keep_signing_after_token_configured(
    softhsm: SoftHsm, tmp_path: Path
) -> None:
    """Migration: the file key stays active; the next key is made in the token."""
    directory = tmp_path / "keys"
    file_store = KeyStore(directory, retention=RETENTION)
    file_store.ensure_initialised(T0)
    file_kid = file_store.active_signer(T0).kid
    hsm = KeyStore(directory, retention=RETENTION, token=_token(softhsm))
    hsm.reload(force=True)
    assert hsm.active_signer(T0).kid == file_kid
    new = hsm.rotate(T0, delay=timedelta(seconds=360))
    assert new.backend == "pkcs11"
    assert type(hsm.active_signer(T0 + timedelta(seconds=360))).__name__ == "Pkcs11Signer"


# -- concurrency ------------------------------------------------------------------------------
def test_pkcs11_concurrent_signing_threads_all_verify(softhsm: SoftHsm, tmp_path: Path) -> None:
    token = _token(softhsm, pool_size=3)
    store = KeyStore(tmp_path / "keys", retention=RETENTION, token=token)
    store.ensure_initialised(T0)
    signer = store.active_signer(T0)
    results: list[tuple[bytes, bytes]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work(n: int) -> None:
        try:
            for i in range(40):
                data = f"thread {n} message {i}".encode()
                raw = signer.sign(data)
                with lock:
                    results.append((data, raw))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert len(results) == 8 * 40
    for data, raw in results:
        _verify_raw(signer.public_key(), data, raw)
    assert token._open <= 3  # never more sessions than the pool allows


def _sign_in_child(store: KeyStore, queue: Any, n: int) -> None:
    try:
        signer = store.active_signer(T0)
        queue.put(
            [(f"child {n} {i}".encode(), signer.sign(f"child {n} {i}".encode())) for i in range(10)]
        )
    except BaseException as exc:  # noqa: BLE001 - the parent asserts on it
        queue.put(repr(exc))


def test_pkcs11_forked_workers_open_their_own_sessions(hsm_store: KeyStore) -> None:
    signer = hsm_store.active_signer(T0)
    signer.sign(b"parent first")  # the parent holds sessions before forking
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    children = [
        context.Process(target=_sign_in_child, args=(hsm_store, queue, n)) for n in range(2)
    ]
    for child in children:
        child.start()
    outputs = [queue.get(timeout=60) for _ in children]
    for child in children:
        child.join(timeout=30)
        assert child.exitcode == 0
    for output in outputs:
        assert isinstance(output, list), output
        for data, raw in output:
            _verify_raw(signer.public_key(), data, raw)
    _verify_raw(signer.public_key(), b"parent after", signer.sign(b"parent after"))


def test_pkcs11_pool_exhausted_coded(softhsm: SoftHsm, tmp_path: Path) -> None:
    token = _token(softhsm, pool_size=1, pool_timeout=0.2)
    store = KeyStore(tmp_path / "keys", retention=RETENTION, token=token)
    store.ensure_initialised(T0)
    signer = store.active_signer(T0)
    with token._session("held"):
        caught: list[Pkcs11Error] = []

        def sign() -> None:
            try:
                signer.sign(b"x")
            except Pkcs11Error as exc:
                caught.append(exc)

        thread = threading.Thread(target=sign)
        thread.start()
        thread.join(timeout=10)
    assert [e.code for e in caught] == ["pkcs11_pool_exhausted"]
    assert len(signer.sign(b"x")) == 64  # free again


# -- wrong configuration: coded errors, exit 2 -------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"module": Path("/nonexistent/libpkcs11.so")}, "pkcs11_module_unavailable"),
        ({"token_label": "no-such-token"}, "pkcs11_token_not_found"),
        ({"token_label": None, "slot": 987654}, "pkcs11_token_not_found"),
        ({"token_label": "other", "pin": "000000"}, "pkcs11_pin_incorrect"),
    ],
)
def test_pkcs11_wrong_setting_rejected_with_code(
    softhsm: SoftHsm, overrides: dict[str, Any], code: str
) -> None:
    with pytest.raises(Pkcs11Error) as caught:
        _token(softhsm, **overrides).check()
    assert caught.value.code == code
    assert "000000" not in str(caught.value)  # never echo the PIN


def test_pkcs11_second_token_object_wrong_pin_while_logged_in_refused(
    softhsm: SoftHsm,
) -> None:
    holder = _token(softhsm)
    holder.check()  # holds the process-wide login of token "attester"
    try:
        with pytest.raises(Pkcs11Error) as caught:
            _token(softhsm, pin="000000").check()
        assert caught.value.code == "pkcs11_pin_incorrect"
        _token(softhsm).check()  # the right PIN still shares the login
    finally:
        holder.close()


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"module": "/nonexistent/libpkcs11.so"}, "pkcs11_module_unavailable"),
        ({"token_label": "no-such-token"}, "pkcs11_token_not_found"),
        ({"token_label": "other", "pin": "000000"}, "pkcs11_pin_incorrect"),
    ],
)
@pytest.mark.parametrize("command", [["keys", "rotate"], ["keys", "list"], ["serve"]])
def test_pkcs11_cli_wrong_setting_exits_2(
    softhsm: SoftHsm,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    overrides: dict[str, Any],
    code: str,
    command: list[str],
) -> None:
    config = _write_config(tmp_path, {**softhsm.settings(), **overrides})
    assert main([*command, "--config", str(config), "--data-dir", str(tmp_path / "d")]) == 2
    assert f"error: {code}:" in capsys.readouterr().err


def test_pkcs11_key_missing_from_token_coded(softhsm: SoftHsm, hsm_store: KeyStore) -> None:
    _rewrite_record(hsm_store, key_ref="00" * 16)
    fresh = KeyStore(hsm_store.directory, retention=RETENTION, token=_token(softhsm))
    with pytest.raises(Pkcs11Error) as caught:
        fresh.reload(force=True)
    assert caught.value.code == "pkcs11_key_not_found"


def test_pkcs11_key_of_other_kid_coded(softhsm: SoftHsm, hsm_store: KeyStore) -> None:
    other = hsm_store.rotate(T0, delay=timedelta(seconds=360))
    _rewrite_record(hsm_store, key_ref=other.key_ref)  # first record points at the second key
    fresh = KeyStore(hsm_store.directory, retention=RETENTION, token=_token(softhsm))
    with pytest.raises(Pkcs11Error) as caught:
        fresh.reload(force=True)
    assert caught.value.code == "pkcs11_key_mismatch"


def test_pkcs11_extractable_key_refused(softhsm: SoftHsm, hsm_store: KeyStore) -> None:
    """A key that was imported or can be exported is not an HSM key: refused."""
    assert hsm_store.token is not None
    from pkcs11.util.ec import encode_named_curve_parameters

    with hsm_store.token._session("make exportable key"):
        rw = hsm_store.token._token.open(rw=True)
        params = rw.create_domain_parameters(
            KeyType.EC,
            {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
            local=True,
        )
        params.generate_keypair(
            store=True,
            id=b"exportable-key-1",
            private_template={Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True},
        )
        rw.close()
    with pytest.raises(Pkcs11Error) as caught:
        hsm_store.token.signer("kid", b"exportable-key-1".hex())
    assert caught.value.code == "pkcs11_key_exportable"


def test_pkcs11_token_record_without_token_configured_refused(hsm_store: KeyStore) -> None:
    fresh = KeyStore(hsm_store.directory, retention=RETENTION)
    with pytest.raises(KeyStoreError, match="no \\[pkcs11\\] token"):
        fresh.reload(force=True)


def test_pkcs11_unknown_backend_in_metadata_refused(hsm_store: KeyStore) -> None:
    _rewrite_record(hsm_store, backend="cloud-kms")
    with pytest.raises(KeyStoreError):
        KeyStore(hsm_store.directory, retention=RETENTION).reload(force=True)


def test_pkcs11_key_destroyed_in_token_issuance_503(
    make_settings: Any, softhsm: SoftHsm, clock: MutableClock
) -> None:
    """The HSM loses the key while the service runs: 503 signing_key_unavailable, no 500."""
    from attester.app import create_app
    from tests.support import live_server

    app = create_app(make_settings(pkcs11=softhsm.settings()), clock=clock)
    service = app.state.service
    signer = service.key_store.active_signer(clock())
    signer.sign(b"warm the session cache")
    record = KeyRecord.from_json(
        json.loads((service.key_store.directory / "keys.json").read_text())["keys"][0]
    )
    assert record.key_ref is not None
    with service.key_store.token._session("destroy"):
        rw = service.key_store.token._token.open(rw=True)
        for obj in rw.get_objects({Attribute.ID: bytes.fromhex(record.key_ref)}):
            obj.destroy()
        rw.close()
    with pytest.raises(Exception) as caught:
        service.issuer.issue(app=APP, instance_jwk=public_jwk(new_instance_key()), now=clock())
    assert getattr(caught.value, "code", None) == "signing_key_unavailable"
    assert getattr(caught.value, "status", None) == 503
    with live_server(app) as live:
        import httpx

        response = httpx.get(f"{live.url}/healthz")
        assert response.status_code in (200, 503)  # the key object is cached; no 500 either way
    service.store.dispose()


# -- settings -------------------------------------------------------------------------------
def test_pkcs11_settings_need_one_token_selector(make_settings: Any, softhsm: SoftHsm) -> None:
    with pytest.raises(ConfigError, match="token_label or slot"):
        make_settings(pkcs11={**softhsm.settings(), "slot": 1})


def test_pkcs11_settings_pin_file_readable_by_others_refused(
    make_settings: Any, softhsm: SoftHsm, tmp_path: Path
) -> None:
    pin_file = tmp_path / "pin"
    pin_file.write_text(TOKENS["attester"] + "\n")
    pin_file.chmod(0o644)
    settings = make_settings(
        pkcs11={"module": softhsm.module, "token_label": "attester", "pin_file": pin_file}
    )
    with pytest.raises(ConfigError, match="readable by others"):
        build_key_store(settings)
    pin_file.chmod(0o600)
    assert build_key_store(settings).token is not None


def test_pkcs11_settings_pin_not_in_repr(make_settings: Any, softhsm: SoftHsm) -> None:
    settings = make_settings(pkcs11=softhsm.settings())
    assert TOKENS["attester"] not in repr(settings)
    assert TOKENS["attester"] not in repr(build_key_store(settings).token)


# -- helpers -------------------------------------------------------------------------------
def _rewrite_record(store: KeyStore, **changes: Any) -> None:
    path = store.directory / "keys.json"
    data = json.loads(path.read_text())
    data["keys"][0].update(changes)
    path.write_text(json.dumps(data))


def _write_config(tmp_path: Path, pkcs11: dict[str, Any]) -> Path:
    from tests.e2e.e2e_support import write_config

    table = {k: v for k, v in pkcs11.items() if v is not None}
    return write_config(
        tmp_path / "attester.toml",
        {"issuer": "https://attester.test", "pkcs11": table, "apps": [{"client_id": "client-1"}]},
    )
