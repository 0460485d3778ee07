"""Pinned App Attest root certificates (data only; loaded by ``..anchors``)."""
