"""End-to-end tests against node-oidc-provider (see conftest.py)."""
