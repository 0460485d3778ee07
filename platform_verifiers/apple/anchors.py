"""The pinned trust anchor for App Attest attestation certificate chains.

Apple publishes one root for App Attest, listed on its private certificate authority page:
https://www.apple.com/certificateauthority/private/ (file ``Apple_App_Attestation_Root_CA.pem``).

- Subject: ``CN=Apple App Attestation Root CA, O=Apple Inc., ST=California`` (EC P-384)
- SHA-256 of the DER: ``1cb9823ba28ba6ad2d33a006941de2ae4f513ef1d4e831b9f7e0fa7b6242c932``
- Valid 2020-03-18T18:32:53Z .. 2045-03-15T00:00:00Z. The intermediate below it,
  "Apple App Attestation CA 1", expires 2030-03-13: Apple must ship a new intermediate
  before then; the root itself needs no change until 2045.

The PEM ships inside the package (``roots/``) so the verifier never touches the network.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from ..anchors import TrustAnchor, load_anchor

APPLE_APP_ATTESTATION_ROOT_CA_SOURCE = (
    "https://www.apple.com/certificateauthority/Apple_App_Attestation_Root_CA.pem"
)
APPLE_APP_ATTESTATION_ROOT_CA_SHA256 = (
    "1cb9823ba28ba6ad2d33a006941de2ae4f513ef1d4e831b9f7e0fa7b6242c932"
)
_PEM_NAME = "apple_app_attestation_root_ca.pem"
#: the pinned root's anchor name (stored with each instance, checked again on renewal)
APP_ATTEST_ROOT_NAME = "Apple App Attestation Root CA"


@cache  # immutable packaged data: parsing it once is not hidden mutable state
def apple_app_attest_roots() -> tuple[TrustAnchor, ...]:
    """Return the pinned App Attest trust anchors (today exactly one root).

    Loading fails with ``ValueError`` if the packaged PEM does not hash to the pinned
    SHA-256, so a tampered or swapped file can never become a trust anchor.
    """
    pem = resources.files("platform_verifiers.apple.roots").joinpath(_PEM_NAME).read_bytes()
    return (
        load_anchor(
            APP_ATTEST_ROOT_NAME,
            pem,
            source=APPLE_APP_ATTESTATION_ROOT_CA_SOURCE,
            sha256=APPLE_APP_ATTESTATION_ROOT_CA_SHA256,
        ),
    )


# -- receipts ----------------------------------------------------------------------------
# App Attest receipts (PKCS#7) are signed under **Apple Root CA - G3**, not under the App
# Attestation root. Apple publishes it at https://www.apple.com/certificateauthority/
# (``AppleRootCA-G3.cer``). It is not in ../shared/vectors/roots; the PEM here was taken
# from the certificate set of the real receipts in ../shared/vectors/apple (all fourteen
# carry the same copy) and is pinned to the SHA-256 Apple publishes for it:
# 63343abfb89a6a03ebb57e9b3f5fa7be7c4f5c756f3017b3a8c488c3653e9179
# (subject CN=Apple Root CA - G3, EC P-384, valid 2014-04-30 .. 2039-04-30).
APPLE_ROOT_CA_G3_SOURCE = "https://www.apple.com/certificateauthority/AppleRootCA-G3.cer"
APPLE_ROOT_CA_G3_SHA256 = "63343abfb89a6a03ebb57e9b3f5fa7be7c4f5c756f3017b3a8c488c3653e9179"
_G3_PEM_NAME = "apple_root_ca_g3.pem"


@cache  # immutable packaged data
def apple_receipt_roots() -> tuple[TrustAnchor, ...]:
    """The pinned trust anchor for App Attest receipts (Apple Root CA - G3)."""
    pem = resources.files("platform_verifiers.apple.roots").joinpath(_G3_PEM_NAME).read_bytes()
    return (
        load_anchor(
            "Apple Root CA - G3",
            pem,
            source=APPLE_ROOT_CA_G3_SOURCE,
            sha256=APPLE_ROOT_CA_G3_SHA256,
        ),
    )
