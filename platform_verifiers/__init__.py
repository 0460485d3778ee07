"""Pure verification of platform evidence (Android Key Attestation, Apple App Attest).

Nothing in this package reads the clock, the network, the environment or a global:
every verifier takes its evidence, policy, trust anchors, revocation data and ``now``
as arguments (see ../shared/docs/STYLE.md).
"""
