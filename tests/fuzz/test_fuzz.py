"""Property-based fuzzing of the pure parsers and verifiers (issue 8, item 4).

Each target must either accept its input or raise the project's own error type; any
other exception fails the test (hypothesis shrinks it to a small reproducer). The
example count is bounded so that the normal suite stays fast; ``scripts/fuzz.py`` runs
the same targets for millions of inputs.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from tests.fuzz.targets import TARGETS, seeds

# Enough to catch a regression in any branch a mutation reaches quickly; the long runs
# belong to scripts/fuzz.py.
EXAMPLES = 60


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_fuzz_target_any_input_verifies_or_raises_own_error(name: str) -> None:
    target, strategy = TARGETS[name]
    seeds()  # built outside the timed examples

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy())
    def run(value: Any) -> None:
        target(value)

    run()


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_fuzz_seed_inputs_reach_the_verifier(name: str) -> None:
    # The mutations start from genuine evidence: a target whose seed pool is empty
    # would fuzz nothing but the first length check.
    s = seeds()
    pools = {
        "key_description": s.key_descriptions,
        "certificate": s.certificates,
        "android_chain": s.chains,
        "apple_attestation": s.attestations,
        "apple_assertion": s.assertions,
        "apple_receipt": s.receipts,
        "key_proof": (s.key_proof,),
    }
    assert len(pools[name]) >= 1
