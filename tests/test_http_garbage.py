"""Bad input never yields a 5xx, never hangs, never echoes the caller's bytes."""

from __future__ import annotations

import json
import random

import httpx
import pytest

from tests.support import LiveServer

MARKER = "QmFkQnl0ZXNNYXJrZXI"  # would show up if a response echoed input


def _bodies(rng: random.Random) -> list[bytes]:
    shapes: list[object] = [
        {}, [], None, 0, "x", {"challenge": MARKER}, {"challenge": [MARKER]},
        {"certificate_chain": [MARKER, 5, None], "challenge": MARKER, "key_proof": MARKER},
        {"certificate_chain": MARKER, "challenge": {"a": MARKER}, "key_proof": 1.5},
        {"key_id": MARKER, "attestation_object": MARKER, "client_data": MARKER, "key_proof": MARKER},
        {"key_id": "", "attestation_object": "", "client_data": "", "key_proof": ""},
        {"key_thumbprint": MARKER * 2, "challenge": MARKER, "key_proof": MARKER + "." + MARKER + ".x"},
        {"key_thumbprint": "A" * 43, "challenge": "A" * 55, "key_proof": "a.b.c", "assertion": MARKER, "client_data": MARKER},
        {"certificate_chain": ["A" * 4000] * 12, "challenge": "A" * 55, "key_proof": "a.b.c"},
    ]
    bodies = [json.dumps(s).encode() for s in shapes]
    bodies += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400))) for _ in range(20)]
    bodies += [b'{"challenge": "' + MARKER.encode() + b'"', b"\xff\xfe{}", b"[" * 5000 + b"]" * 5000]
    return bodies


@pytest.fixture
def post_paths(server: LiveServer) -> list[str]:
    with httpx.Client(base_url=server.url) as http:
        meta = http.get("/.well-known/client-attester").json()
    paths = ["/v1/challenge", "/v1/attestations/renew"]
    paths += [url.removeprefix("https://attester.test") for url in meta["attestation_endpoints"].values()]
    return paths


def test_http_garbage_bodies_get_4xx_problem_without_echo(server: LiveServer, post_paths: list[str]) -> None:
    rng = random.Random(20261122)
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for path in post_paths:
            for body in _bodies(rng):
                response = http.post(path, content=body, headers={"content-type": "application/json"})
                if path == "/v1/challenge":
                    assert response.status_code == 200
                    continue
                assert 400 <= response.status_code < 500, (path, response.status_code, response.text)
                assert response.headers["content-type"].startswith("application/problem+json")
                assert MARKER not in response.text
                assert isinstance(response.json()["code"], str)
