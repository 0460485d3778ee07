"""One base exception for every verification failure, each with a stable code."""

from __future__ import annotations

from typing import Any

from pyasn1.error import PyAsn1Error

#: What pyasn1 decoding of hostile bytes can raise besides ``PyAsn1Error``: the fuzz suite
#: (tests/fuzz) found ``OverflowError`` from a huge length; the others are defensive.
ASN1_DECODE_ERRORS: tuple[type[Exception], ...] = (
    PyAsn1Error,
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    OverflowError,
    RecursionError,
)


class VerificationError(Exception):
    """Evidence was rejected.

    ``code`` is stable and machine readable (callers switch on it); ``message`` is a
    short human sentence that never contains the caller's bytes; ``detail`` carries
    structured, safe facts (rule names, what was seen and required, indices).
    """

    code: str = "verification_failed"

    def __init__(self, code: str, message: str, **detail: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.detail: dict[str, Any] = detail

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.message!r})"


class PolicyViolation(VerificationError):
    """Evidence was genuine but the app's policy refuses it.

    ``rule`` names the policy rule; ``seen`` and ``required`` say why.
    """

    def __init__(self, rule: str, *, seen: Any, required: Any, message: str | None = None) -> None:
        super().__init__(
            "policy_violation",
            message or f"policy rule {rule!r} not met",
            rule=rule,
            seen=seen,
            required=required,
        )
        self.rule = rule
        self.seen = seen
        self.required = required
