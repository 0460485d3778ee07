"""Pinned Google hardware attestation roots, with provenance.

Source: https://developer.android.com/privacy-and-security/security-key-attestation
("Root certificates"), the same set Google publishes at
https://android.googleapis.com/attestation/root and that android/keyattestation ships
as ``roots.json``. Chains are matched to an anchor by public key: the four RSA-4096
certificates carry one and the same key, so any of them anchors a chain that was
issued under an older certificate of that key.
"""

from __future__ import annotations

import functools
from importlib import resources

from platform_verifiers.anchors import TrustAnchor, load_anchor

_DOC_SOURCE = "https://developer.android.com/privacy-and-security/security-key-attestation"
_AOSP_SOURCE = (
    "https://github.com/android/keyattestation/blob/47f970d044ae4da7b00da068e7e1a4e952b0fd2f"
    "/src/main/kotlin/SoftwareRoot.kt"
)

# (name, file, pinned SHA-256 of the certificate DER). Expiry is in each comment; the
# anchor set matches by key, so an expired certificate of a still-used key is harmless.
_GOOGLE_ROOTS: tuple[tuple[str, str, str], ...] = (
    # RSA-4096, serialNumber=f92009e853b6b045; current certificate, expires 2042-03-15.
    (
        "google_hw_rsa4096_2022",
        "google_hw_root_rsa4096_2022_f1c172a699eaf51d.pem",
        "cedb1cb6dc896ae5ec797348bce9286753c2b38ee71ce0fbe34a9a1248800dfc",
    ),
    # Same key, expires 2036-11-13.
    (
        "google_hw_rsa4096_2021",
        "google_hw_root_rsa4096_2021_c36b7c44b9ae1831.pem",
        "ab6641178a36e179aa0c1cdddf9a16eb45fa20943e2b8cd7c7c05c26cf8b487a",
    ),
    # Same key, expires 2034-11-18.
    (
        "google_hw_rsa4096_2019",
        "google_hw_root_rsa4096_2019_d50ff25ba3f2d6b3.pem",
        "1ef1a04b8ba58ab94589ac498c8982a783f24ea7307e0159a0c3a73b377d87cc",
    ),
    # Same key, expires 2026-05-24; terminates most factory-provisioned chains.
    (
        "google_hw_rsa4096_2016",
        "google_hw_root_rsa4096_2016_e8fa196314d2fa18.pem",
        "c1984a3ef45c1e2a918551de10603c86f7051b2249c4891cae3230eabd0c97d5",
    ),
    # EC P-384 "Key Attestation CA1"; RKP chains move to it from February 2026
    # (exclusively from 2026-04-10). Expires 2035-07-15.
    (
        "google_hw_ec_p384_2025",
        "google_hw_root_ecp384_2025_key_attestation_ca1.pem",
        "6d9db4ce6c5c0b293166d08986e05774a8776ceb525d9e4329520de12ba4bcc0",
    ),
)

# The AOSP software attestation roots: their private keys are published in AOSP, so
# they prove nothing. Only an explicit, test-only setting may pass them to the verifier.
_AOSP_ROOTS: tuple[tuple[str, str, str], ...] = (
    # EC, expires 2036-01-06.
    (
        "aosp_software_ec",
        "aosp_software_attestation_root_ec_NOT_A_TRUST_ANCHOR.pem",
        "51d496ad4664190fbdaf1ad987278efa35d6fbf52e50a9c34ded8395477ede5c",
    ),
    # RSA, expires 2035-12-30.
    (
        "aosp_software_rsa",
        "aosp_software_attestation_root_rsa_NOT_A_TRUST_ANCHOR.pem",
        "4e42730efd521b21d77b109b7532a0b664ddfefc73e129111936200c5e58cce0",
    ),
)


def _load(entries: tuple[tuple[str, str, str], ...], source: str) -> tuple[TrustAnchor, ...]:
    folder = resources.files("platform_verifiers.android").joinpath("roots")
    return tuple(
        load_anchor(name, folder.joinpath(file).read_bytes(), source=source, sha256=digest)
        for name, file, digest in entries
    )


@functools.cache
def google_hardware_roots() -> tuple[TrustAnchor, ...]:
    """The production trust anchors: Google's RSA-4096 roots and the EC P-384 2025 root."""
    return _load(_GOOGLE_ROOTS, _DOC_SOURCE)


@functools.cache
def aosp_software_roots() -> tuple[TrustAnchor, ...]:
    """AOSP software attestation roots. NOT trust anchors: tests and emulators only."""
    return _load(_AOSP_ROOTS, _AOSP_SOURCE)


def __getattr__(name: str) -> tuple[TrustAnchor, ...]:
    # ``GOOGLE_HARDWARE_ROOTS`` reads like a constant but loads on first use, so that
    # importing this module never touches package data.
    if name == "GOOGLE_HARDWARE_ROOTS":
        return google_hardware_roots()
    raise AttributeError(name)
