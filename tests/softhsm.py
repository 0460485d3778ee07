"""A throw-away SoftHSM2 installation for the PKCS#11 tests (Debian package ``softhsm2``).

SoftHSM2 reads ``SOFTHSM2_CONF`` when the module is initialised, and a process initialises it
once, so one configuration directory with every token the suite needs is made per test
session (``softhsm`` fixture in tests/conftest.py), before anything loads the module.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODULE_CANDIDATES = (
    Path("/usr/lib/softhsm/libsofthsm2.so"),
    Path("/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so"),
    Path("/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so"),
)
# label -> user PIN; "attester" holds the keys, "other" is only ever logged in to wrongly
TOKENS = {"attester": "123456", "other": "654321"}
SO_PIN = "12345678"


@dataclass(frozen=True)
class SoftHsm:
    conf: Path
    module: Path

    def settings(self, label: str = "attester", **extra: Any) -> dict[str, Any]:
        """The ``pkcs11`` settings table for token ``label``."""
        return {"module": self.module, "token_label": label, "pin": TOKENS[label], **extra}

    @property
    def env(self) -> dict[str, str]:
        return {"SOFTHSM2_CONF": str(self.conf)}


def module_path() -> Path | None:
    return next((p for p in MODULE_CANDIDATES if p.is_file()), None)


def skip_reason() -> str | None:
    if shutil.which("softhsm2-util") is None or module_path() is None:
        return (
            "SoftHSM2 is not installed (Debian package softhsm2); scripts/test.sh installs it "
            "so CI always runs the PKCS#11 tests"
        )
    return None


@contextmanager
def softhsm(directory: Path) -> Iterator[SoftHsm]:
    """Create the tokens in ``directory`` and point ``SOFTHSM2_CONF`` at them meanwhile."""
    module = module_path()
    assert module is not None
    tokens = directory / "tokens"
    tokens.mkdir(parents=True)
    conf = directory / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    for label, pin in TOKENS.items():
        subprocess.run(
            [
                "softhsm2-util",
                "--init-token",
                "--free",
                "--label",
                label,
                "--pin",
                pin,
                "--so-pin",
                SO_PIN,
            ],
            env=env,
            check=True,
            capture_output=True,
            timeout=60,
        )
    previous = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    try:
        yield SoftHsm(conf=conf, module=module)
    finally:
        if previous is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = previous
