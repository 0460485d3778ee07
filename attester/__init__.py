"""Client attester service: verifies platform evidence and issues Client Attestation JWTs."""
