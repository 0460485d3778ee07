"""Tests for platform_verifiers.apple (App Attest) and its CLI."""
