"""Service configuration: a TOML file plus ``ATTESTER_*`` environment overrides.

Secure defaults everywhere; every relaxation is a named setting that is off by default.
Invalid configuration raises :class:`ConfigError` naming the offending field.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

MAX_ATTESTATION_LIFETIME = 24 * 3600

SecurityLevelName = Literal["software", "tee", "strongbox"]
StaticClaim = str | int | bool


class ConfigError(Exception):
    """The configuration cannot be used; the message names the field."""


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _outbound_url(value: str) -> str:
    """A URL the service calls (Google's and Apple's services): absolute https, or http to
    loopback (where tests serve stand-ins). Plain http elsewhere would let anyone on the
    path answer for Google or Apple (an empty revocation list, a passing verdict)."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (raises on a port that is not a number)
    except ValueError as exc:
        raise ValueError(f"not a URL: {exc}") from None
    if any(c.isspace() or not c.isprintable() for c in value) or not parts.hostname:
        raise ValueError("must be an absolute http(s) URL with a host")
    if parts.scheme == "https" or (parts.scheme == "http" and _loopback(parts.hostname)):
        return value
    raise ValueError("must be https (http only to a loopback address)")


#: see :func:`_outbound_url`
OutboundUrl = Annotated[str, AfterValidator(_outbound_url)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PlayIntegrityConfig(_Strict):
    """Play Integrity for one Android app (README, "Play Integrity and the Apple fraud metric").

    ``mode``: ``both`` (default) needs Key Attestation and a passing integrity token;
    ``ka_required_pi_optional`` needs Key Attestation, and a token, when sent, must pass.
    """

    mode: Literal["both", "ka_required_pi_optional"] = "both"
    # at renewal: "when_sent" checks a token the request carries (never ignores one);
    # "required" refuses a renewal without a fresh passing token (README "Play Integrity")
    renewal: Literal["when_sent", "required"] = "when_sent"
    request_type: Literal["standard", "classic"] = "standard"
    # google: decodeIntegrityToken with a service account; local: the publisher's keys
    decode: Literal["google", "local"] = "google"
    service_account_file: Path | None = None
    service_account_env: str | None = None
    # base64 AES-256 key and base64 DER EC public key, as the Play Console shows them
    decryption_key_file: Path | None = None
    decryption_key_env: str | None = None
    verification_key_file: Path | None = None
    verification_key_env: str | None = None
    required_device_labels: tuple[
        Literal[
            "MEETS_BASIC_INTEGRITY",
            "MEETS_DEVICE_INTEGRITY",
            "MEETS_STRONG_INTEGRITY",
            "MEETS_VIRTUAL_INTEGRITY",
        ],
        ...,
    ] = ("MEETS_DEVICE_INTEGRITY",)
    require_play_recognized: bool = True
    require_licensed: bool = True
    max_token_age: int = Field(default=300, ge=10, le=3600)
    max_device_activity_level: Literal["LEVEL_1", "LEVEL_2", "LEVEL_3", "LEVEL_4"] | None = None
    # verdict facts copied into the issued JWT's "play_integrity" claim (none by default)
    pass_claims: tuple[
        Literal[
            "device_recognition_verdict",
            "app_recognition_verdict",
            "app_licensing_verdict",
            "device_activity_level",
        ],
        ...,
    ] = ()

    @model_validator(mode="after")
    def _decode_sources(self) -> PlayIntegrityConfig:
        if self.decode == "local":
            if self.request_type != "classic":
                raise ValueError("local decoding is only possible for classic requests")
            for name in ("decryption_key", "verification_key"):
                if (getattr(self, f"{name}_file") is None) == (getattr(self, f"{name}_env") is None):
                    raise ValueError(f"local decoding needs exactly one of {name}_file, {name}_env")
        elif (self.service_account_file is None) == (self.service_account_env is None):
            raise ValueError(
                "google decoding needs exactly one of service_account_file, service_account_env"
            )
        return self


class AndroidAppConfig(_Strict):
    """Which Android apps may register, and the policy their devices must meet."""

    package_names: tuple[str, ...] = Field(min_length=1)
    # SHA-256 of the APK signing certificate(s), hex (colons allowed)
    signing_cert_sha256: tuple[str, ...] = Field(min_length=1)
    min_security_level: SecurityLevelName = "tee"
    require_verified_boot: bool = True
    require_device_locked: bool = True
    # verified-boot keys (hex SHA-256) accepted even when the boot state is not Verified,
    # for alternative operating systems such as GrapheneOS
    allowed_verified_boot_keys: tuple[str, ...] = ()
    min_os_patch_level: int | None = Field(default=None, ge=190001, le=999912)
    # Play Integrity (issue 10); absent: Key Attestation only, and a token sent is refused
    play_integrity: PlayIntegrityConfig | None = None

    @field_validator("signing_cert_sha256", "allowed_verified_boot_keys")
    @classmethod
    def _hex_digests(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        out = []
        for value in values:
            digest = value.replace(":", "").lower()
            if not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise ValueError("must be a SHA-256 digest in hex (64 hex digits, colons allowed)")
            out.append(digest)
        return tuple(out)


class AppleFraudMetricConfig(_Strict):
    """Receipt exchange for Apple's fraud metric (README, "Play Integrity and the Apple fraud metric")."""

    # the App Store Connect / DeviceCheck key: its id (the JWT kid) and the .p8 PEM
    key_id: str = Field(pattern=r"^[A-Z0-9]{10}$")
    private_key_file: Path | None = None
    private_key_env: str | None = None
    # renewal is refused when the risk metric exceeds this (None: stored, never enforced)
    max_risk_metric: int | None = Field(default=None, ge=1)
    # a stored receipt younger than this is not exchanged again (Apple refreshes daily)
    refresh_interval: int = Field(default=86400, ge=60)
    exchange_at_registration: bool = True

    @model_validator(mode="after")
    def _one_key_source(self) -> AppleFraudMetricConfig:
        if (self.private_key_file is None) == (self.private_key_env is None):
            raise ValueError("set exactly one of private_key_file, private_key_env")
        return self


class AppleAppConfig(_Strict):
    """Which iOS app may register with App Attest."""

    team_id: str = Field(pattern=r"^[A-Z0-9]{10}$")
    bundle_id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9.\-]+$")
    environment: Literal["development", "production"] = "production"
    # Apple's fraud metric from receipt exchanges (issue 10); absent: no exchange
    fraud_metric: AppleFraudMetricConfig | None = None

    @property
    def app_id(self) -> str:
        return f"{self.team_id}.{self.bundle_id}"


class AppConfig(_Strict):
    """One entry of the app registry."""

    client_id: str = Field(min_length=1, max_length=255)
    android: AndroidAppConfig | None = None
    apple: AppleAppConfig | None = None
    # static claims copied into every Client Attestation JWT of this app (wallet_name, ...)
    claims: dict[str, StaticClaim] = Field(default_factory=dict)
    attestation_lifetime: int | None = Field(default=None, ge=60, le=MAX_ATTESTATION_LIFETIME)
    # a renewal is refused once the platform registration is older than this
    max_registration_age: int = Field(default=30 * 86400, ge=3600)
    # carry a Token Status List reference (``status`` claim) so the JWT can be revoked early
    status_list: bool = True
    # per-receiver profile (None = the service-wide setting): see README "Compatibility"
    include_iss: bool | None = None
    include_jku: bool | None = None
    include_x5c: bool | None = None

    @field_validator("claims")
    @classmethod
    def _no_reserved_claims(cls, claims: dict[str, StaticClaim]) -> dict[str, StaticClaim]:
        reserved = {"iss", "sub", "iat", "exp", "nbf", "cnf", "jti", "status", "aud"}
        clash = sorted(reserved & claims.keys())
        if clash:
            raise ValueError(f"reserved claim names cannot be configured: {', '.join(clash)}")
        return claims


class AndroidSettings(_Strict):
    """Service-wide Android settings (I/O endpoints and test-only relaxations)."""

    revocation_url: OutboundUrl = "https://android.googleapis.com/attestation/status"
    revocation_timeout: float = Field(default=10.0, gt=0)
    revocation_max_staleness: int = Field(default=48 * 3600, ge=60)
    # explicit relaxation: accept registrations with a stale list (logged as a warning)
    allow_stale_revocation: bool = False
    # test-only: extra PEM roots trusted in addition to Google's pinned roots
    test_root_files: tuple[Path, ...] = ()
    # test-only: trust the public AOSP software attestation roots
    allow_software_root: bool = False
    allow_software_level: bool = False
    play_integrity_url: OutboundUrl = "https://playintegrity.googleapis.com"
    play_integrity_token_uri: OutboundUrl = "https://oauth2.googleapis.com/token"
    play_integrity_timeout: float = Field(default=10.0, gt=0, le=60)


class Pkcs11Settings(_Strict):
    """Signing keys in a PKCS#11 token (keys/pkcs11.py). New keys are generated there."""

    # path of the vendor's PKCS#11 module (.so), e.g. /usr/lib/softhsm/libsofthsm2.so
    module: Path
    # the token, by exactly one of label or slot id
    token_label: str | None = Field(default=None, min_length=1, max_length=32)
    slot: int | None = Field(default=None, ge=0)
    # the user PIN: inline (better from ATTESTER_PKCS11__PIN) or in a file readable by the owner only
    pin: SecretStr | None = None
    pin_file: Path | None = None
    # sessions per process; signing borrows one (a session runs one operation at a time)
    pool_size: int = Field(default=4, ge=1, le=64)
    pool_timeout: float = Field(default=5.0, gt=0, le=60)

    @model_validator(mode="after")
    def _one_of_each(self) -> Pkcs11Settings:
        if (self.token_label is None) == (self.slot is None):
            raise ValueError("set exactly one of token_label or slot")
        if (self.pin is None) == (self.pin_file is None):
            raise ValueError("set exactly one of pin or pin_file")
        return self

    def user_pin(self) -> str:
        """The PIN, read from ``pin_file`` (refused when others can read it) or ``pin``."""
        if self.pin is not None:
            return self.pin.get_secret_value()
        assert self.pin_file is not None
        try:
            mode = self.pin_file.stat().st_mode & 0o777
            text = self.pin_file.read_text()
        except OSError as exc:
            raise ConfigError(f"invalid configuration: pkcs11.pin_file: {exc.strerror}") from None
        if mode & 0o077:
            raise ConfigError(
                f"invalid configuration: pkcs11.pin_file is readable by others (mode {mode:o})"
            )
        return text.strip()


class AppleSettings(_Strict):
    """Service-wide Apple settings."""

    # test-only: extra PEM roots trusted instead of nothing; Apple's root is always trusted
    test_root_files: tuple[Path, ...] = ()
    # test-only: extra PEM roots trusted for App Attest receipts besides Apple Root CA - G3
    test_receipt_root_files: tuple[Path, ...] = ()
    receipt_url: OutboundUrl = "https://data.appattest.apple.com/v1/attestationData"
    receipt_url_development: OutboundUrl = "https://data-development.appattest.apple.com/v1/attestationData"
    receipt_timeout: float = Field(default=10.0, gt=0, le=60)
    # how recent a receipt Apple just returned must be (Apple: minutes)
    receipt_max_age: int = Field(default=300, ge=60, le=86400)


class StatusListSettings(_Strict):
    """Token Status List (draft-ietf-oauth-status-list) publication of issued JWTs' status."""

    # entries per list: the EU profile asks for at least 10,000 so an index is no identifier
    size: int = Field(default=131072, ge=10000, le=8 * 1024 * 1024)
    # several lists when one is not enough (each has its own uri)
    count: int = Field(default=1, ge=1, le=64)
    # seconds: the token's ttl claim and Cache-Control max-age (how fast a revocation spreads)
    ttl: int = Field(default=300, ge=1, le=86400)
    # seconds: the token's exp - iat; it is re-signed when half of it has passed
    lifetime: int = Field(default=86400, ge=60, le=7 * 86400)
    # seconds between two checks of the database for changes made by other replicas
    check_interval: float = Field(default=1.0, ge=0, le=60)


class AdminToken(_Strict):
    """One admin bearer token: a name for the audit trail and the SHA-256 (hex) of the token."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._@\-]+$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class AdminSettings(_Strict):
    """The operator API under /admin/v1/ (off by default)."""

    enabled: bool = False
    tokens: tuple[AdminToken, ...] = ()
    # when set, the admin API is served only on this separate address (not on the public port)
    port: int | None = Field(default=None, ge=1, le=65535)
    host: str = "127.0.0.1"

    @model_validator(mode="after")
    def _tokens_when_enabled(self) -> AdminSettings:
        if self.enabled and not self.tokens:
            raise ValueError("admin.enabled needs at least one entry in admin.tokens")
        names = [t.name for t in self.tokens]
        if len(set(names)) != len(names):
            raise ValueError("admin.tokens: names must be unique")
        return self


def _check_limits(value: str) -> str:
    """A rate in the ``limits`` notation (``"20/minute"``, ``"5/second;100/hour"``), or "" (off)."""
    if value.strip():
        from limits import parse_many

        try:
            parse_many(value)
        except ValueError:
            raise ValueError(
                "must be rates like '20/minute' or '5/second;100/hour' (or '' for no limit)"
            ) from None
    return value.strip()


class RateLimitSettings(_Strict):
    """Per client IP and per app limits on the endpoints that do work (README, "Rate limits").

    Defaults are sized so a carrier-grade NAT with many real users behind one address is
    not refused, while one caller cannot keep the verifiers busy.
    """

    enabled: bool = True
    # "memory": per process (a replica or worker counts alone); "database": a counter table
    # in database_url, shared by every replica and worker
    storage: Literal["memory", "database"] = "memory"
    challenge_per_ip: str = "120/minute"
    registration_per_ip: str = "30/minute;300/hour"
    renewal_per_ip: str = "120/minute"
    registration_per_app: str = "3000/minute"
    renewal_per_app: str = "12000/minute"
    # IPv6 clients are counted per prefix: one host usually holds a whole /64
    ipv6_prefix: int = Field(default=64, ge=32, le=128)

    @field_validator(
        "challenge_per_ip",
        "registration_per_ip",
        "renewal_per_ip",
        "registration_per_app",
        "renewal_per_app",
    )
    @classmethod
    def _rates(cls, value: str) -> str:
        return _check_limits(value)


class MetricsSettings(_Strict):
    """Prometheus ``/metrics`` (README, "Metrics")."""

    enabled: bool = True
    # who may scrape: client addresses (after trusted_proxies) in these networks; others get 404
    allowed_networks: tuple[str, ...] = (
        "127.0.0.0/8",
        "::1/128",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "fc00::/7",
    )

    @field_validator("allowed_networks")
    @classmethod
    def _networks(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return _check_networks(values)


class DocsSettings(_Strict):
    """OpenAPI at ``/openapi.json`` and Swagger UI at ``/docs``."""

    enabled: bool = True
    # the browser of whoever opens /docs loads these (the service itself fetches nothing)
    swagger_js_url: str = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"
    swagger_css_url: str = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css"


def _check_networks(values: tuple[str, ...]) -> tuple[str, ...]:
    import ipaddress

    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(f"{value!r} is not an IP network (e.g. 10.0.0.0/8)") from None
    return values


class Settings(BaseSettings):
    """Everything the service reads at start-up."""

    model_config = SettingsConfigDict(
        env_prefix="ATTESTER_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    toml_path: ClassVar[Path | None] = None

    issuer: str = "http://127.0.0.1:8000"
    data_dir: Path = Path("attester-data")
    database_url: str | None = None
    # database connections each process keeps open (and at most uses): requests beyond it
    # wait for one; none are opened and closed per request. At least 2: a request on the event
    # loop reads with one while the group commit's writer, suspended, holds another
    database_pool_size: int = Field(default=16, ge=2, le=256)
    key_dir: Path | None = None
    challenge_secret_file: Path | None = None
    challenge_lifetime: int = Field(default=300, ge=10, le=3600)
    attestation_lifetime: int = Field(default=3600, ge=60, le=MAX_ATTESTATION_LIFETIME)
    # draft-07 receivers (OpenID4VCI 1.0, HAIP 1.0, Keycloak) require iss; -08+ ignore it
    include_iss: bool = True
    # send jku (= our jwks_uri) in the header (draft -09 section on key resolution)
    include_jku: bool = False
    # send x5c when the signing key has a certificate chain (<kid>.x5c.pem)
    include_x5c: bool = True
    # `attester keys list` warns when a key's certificate expires within this many days
    certificate_expiry_warning_days: int = Field(default=30, ge=0, le=365)
    pkcs11: Pkcs11Settings | None = None
    # privacy option: round iat down to this many seconds (0 = exact)
    iat_granularity: int = Field(default=0, ge=0, le=3600)
    jwks_max_age: int = Field(default=300, ge=0, le=86400)
    # how long a freshly rotated key is published before it signs (>= jwks_max_age + clock_skew)
    key_prepublish_delay: int | None = Field(default=None, ge=0)
    key_proof_max_age: int = Field(default=300, ge=10, le=3600)
    clock_skew: int = Field(default=60, ge=0, le=600)
    max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    apps: tuple[AppConfig, ...] = ()
    # reverse proxies (IP networks) whose X-Forwarded-For is believed; none by default, so
    # a caller cannot choose the address it is rate limited by
    trusted_proxies: tuple[str, ...] = ()
    rate_limits: RateLimitSettings = RateLimitSettings()
    metrics: MetricsSettings = MetricsSettings()
    docs: DocsSettings = DocsSettings()
    android: AndroidSettings = AndroidSettings()
    apple: AppleSettings = AppleSettings()
    status_list: StatusListSettings = StatusListSettings()
    admin: AdminSettings = AdminSettings()
    # data lifecycle: seconds between purges inside ``serve`` (0 = only ``attester purge``)
    purge_interval: int = Field(default=3600, ge=0)
    # days an audit record is kept
    audit_retention_days: int = Field(default=400, ge=1)

    @field_validator("issuer")
    @classmethod
    def _issuer_url(cls, value: str) -> str:
        if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", value):
            raise ValueError("must be an http(s) URL without query or fragment")
        return value.rstrip("/")

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return _check_networks(values)

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        seen: set[str] = set()
        for app in self.apps:
            if app.client_id in seen:
                raise ValueError(f"apps: client_id {app.client_id!r} is configured twice")
            seen.add(app.client_id)
        minimum = self.jwks_max_age + self.clock_skew
        if self.key_prepublish_delay is not None and self.key_prepublish_delay < minimum:
            raise ValueError(
                "key_prepublish_delay must be at least jwks_max_age + clock_skew, or an AS "
                "holding a cached JWKS could meet a JWT signed by a key it has not seen"
            )
        lifetimes = [self.attestation_lifetime] + [
            a.attestation_lifetime for a in self.apps if a.attestation_lifetime
        ]
        if self.iat_granularity * 2 > min(lifetimes):
            raise ValueError(
                "iat_granularity must be at most half the shortest attestation lifetime, or "
                "JWTs would be issued (nearly) expired"
            )
        return self

    # -- derived values ---------------------------------------------------------------
    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'attester.db').resolve()}"

    @property
    def resolved_key_dir(self) -> Path:
        return self.key_dir or self.data_dir / "keys"

    @property
    def jwks_uri(self) -> str:
        return f"{self.issuer}/.well-known/jwks.json"

    @property
    def min_prepublish_delay(self) -> int:
        """A replica whose clock runs ``clock_skew`` ahead must still not sign too early."""
        return self.jwks_max_age + self.clock_skew

    @property
    def prepublish_delay(self) -> timedelta:
        seconds = self.key_prepublish_delay
        return timedelta(seconds=self.min_prepublish_delay if seconds is None else seconds)

    def app(self, client_id: str) -> AppConfig | None:
        return next((a for a in self.apps if a.client_id == client_id), None)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = getattr(settings_cls, "toml_path", None)
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)


EXAMPLE_CONFIG = "example_config.toml"


def example_config_path() -> Path:
    """The packaged example registry used when no configuration file is given."""
    return Path(str(resources.files("attester").joinpath(EXAMPLE_CONFIG)))


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Read the TOML file (or the packaged example), then the environment, then ``overrides``.

    Raises :class:`ConfigError` with the field path when something is invalid.
    """
    path = config_file if config_file is not None else example_config_path()
    if not path.is_file():
        raise ConfigError(f"configuration file not found: {path}")
    bound = type("BoundSettings", (Settings,), {"toml_path": path})
    try:
        return bound(**overrides)  # type: ignore[no-any-return]
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    except ValueError as exc:  # TOML syntax errors
        raise ConfigError(f"{path}: {exc}") from None


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(settings)"
        lines.append(f"invalid configuration: {field}: {err['msg']}")
    return "\n".join(lines)
