"""Service settings: limits that keep one request (or a crowd of them) from exhausting the server."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from modmerge.errors import ModmergeError
from modmerge.image_files import DEFAULT_MAX_IMAGE_PIXELS, decode_bytes_bound

MIN_TOKEN_CHARS = 16


class ServeError(ModmergeError):
    """The service cannot start as configured (bad setting, non-loopback host without consent)."""


class ServeSettings(BaseModel):
    """How `modmerge serve` listens, batches and refuses.

    ``queue_size`` counts pending *requests*; a full queue answers 503 at once instead of
    growing. ``max_batch`` caps the inputs of one engine call, so it must hold the largest
    request (``max_inputs``).

    What one request may cost in memory is bounded: its body (``max_body_bytes``, buffered once
    and parsed), at most ``max_inputs`` inputs, and for images a decode of at most
    ``max_image_pixels`` pixels at a time (``decode_bytes_bound``: 5 bytes a pixel), since the
    single engine thread decodes one image after the other, each shrunk to the backbone's size.

    Off loopback (``allow_remote``) a client is a stranger: every request but ``/healthz`` needs
    ``Authorization: Bearer <token>`` unless ``no_auth`` says otherwise explicitly, and image
    *paths* are read only under ``image_root`` (without one, only uploaded ``image_b64`` images).
    Connections idle for ``keep_alive_s`` are closed, as are those whose request head takes longer
    than ``header_timeout_s`` or whose body takes longer than ``body_timeout_s`` to arrive.

    Example::

        >>> s = ServeSettings(max_inputs=16, max_batch=64)
        >>> (s.host, s.port, s.queue_size)
        ('127.0.0.1', 8000, 64)
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    allow_remote: bool = False
    max_inputs: int = Field(64, ge=1)
    max_body_bytes: int = Field(1 << 20, ge=64)
    max_image_pixels: int = Field(DEFAULT_MAX_IMAGE_PIXELS, ge=1)
    queue_size: int = Field(64, ge=1)
    batch_window_ms: float = Field(5.0, ge=0.0, le=10_000.0)
    max_batch: int = Field(256, ge=1)
    request_timeout_s: float = Field(120.0, gt=0.0)
    # images are server-side paths: when set, only files under this folder may be read
    image_root: Path | None = None
    token: SecretStr | None = Field(None, description="Bearer token every request but /healthz must carry.")
    no_auth: bool = Field(False, description="Serve off loopback without a token, knowingly.")
    keep_alive_s: float = Field(5.0, gt=0.0, le=3600.0)
    header_timeout_s: float = Field(10.0, gt=0.0, le=3600.0)
    body_timeout_s: float = Field(30.0, gt=0.0, le=3600.0)
    max_connections: int = Field(256, ge=1, description="Open connections and requests beyond this get 503.")

    @model_validator(mode="after")
    def _consistent(self) -> ServeSettings:
        if self.max_batch < self.max_inputs:
            raise ValueError(f"max_batch ({self.max_batch}) must be at least max_inputs ({self.max_inputs})")
        if not self.allow_remote and not is_loopback(self.host):
            raise ValueError(f"host {self.host!r} is not a loopback address; pass allow_remote to bind it")
        if self.token is not None and self.no_auth:
            raise ValueError("give a token or no_auth, not both")
        if self.token is not None and len(self.token.get_secret_value()) < MIN_TOKEN_CHARS:
            raise ValueError(f"token: {len(self.token.get_secret_value())} characters, fewer than {MIN_TOKEN_CHARS} "
                             "(make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')")
        if self.allow_remote and self.token is None and not self.no_auth:
            raise ValueError("allow_remote needs a bearer token (--token-file or $MODMERGE_TOKEN), "
                             "or --no-auth to serve without one")
        return self

    @property
    def accepts_image_paths(self) -> bool:
        """False off loopback without an image root: a stranger may not name files on this disk."""
        return self.image_root is not None or not self.allow_remote

    @property
    def decode_bytes_bound(self) -> int:
        """The most memory decoding one image holds (the engine decodes one at a time)."""
        return decode_bytes_bound(self.max_image_pixels)

    @classmethod
    def parse(cls, **fields: object) -> ServeSettings:
        """Build settings from user input; a bad field becomes one :class:`ServeError` line.

        Example::

            >>> ServeSettings.parse(host="0.0.0.0")
            Traceback (most recent call last):
            ...
            modmerge.serve.settings.ServeError: settings: host '0.0.0.0' is not a loopback address; pass allow_remote to bind it
        """
        try:
            return cls(**fields)  # type: ignore[arg-type]
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "settings"
            raise ServeError(f"{where}: {first['msg'].removeprefix('Value error, ')}") from None


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IPs (127.0.0.0/8, ::1).

    Example::

        >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("0.0.0.0")
        (True, True, False)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
