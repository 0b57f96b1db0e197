"""Service settings: limits that keep one request (or a crowd of them) from exhausting the server."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from modmerge.errors import ModmergeError
from modmerge.image_files import DEFAULT_MAX_IMAGE_PIXELS, decode_bytes_bound


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

    @model_validator(mode="after")
    def _consistent(self) -> ServeSettings:
        if self.max_batch < self.max_inputs:
            raise ValueError(f"max_batch ({self.max_batch}) must be at least max_inputs ({self.max_inputs})")
        if not self.allow_remote and not is_loopback(self.host):
            raise ValueError(f"host {self.host!r} is not a loopback address; pass allow_remote to bind it")
        return self

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
