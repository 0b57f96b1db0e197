"""Request and response bodies of the HTTP API (they also make the OpenAPI schema)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Input(BaseModel):
    """One input: a text, an image given as a path the server can read, or an uploaded image (base64)."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = None
    image: str | None = Field(None, description="Path of an image file on the server.")
    image_b64: str | None = Field(None, description="An image file's bytes (PNG, JPEG, ...), base64-encoded.")

    @model_validator(mode="after")
    def _one_kind(self) -> Input:
        if sum(x is not None for x in (self.text, self.image, self.image_b64)) != 1:
            raise ValueError("give exactly one of 'text', 'image' or 'image_b64'")
        return self

    def as_engine_input(self) -> dict[str, str]:
        if self.text is not None:
            return {"text": self.text}
        return {"image": str(self.image)} if self.image is not None else {"image_b64": str(self.image_b64)}


class PredictRequest(BaseModel):
    """A batch of inputs; ``task`` (optional) names the task of all of them and skips the router."""

    model_config = ConfigDict(extra="forbid")

    inputs: list[Input] = Field(min_length=1)
    task: str | None = Field(None, description="Oracle task label for every input (skip the router).")


class Prediction(BaseModel):
    task: str
    label: int
    label_name: str | None = None
    chain: str = Field(description="Expert chain (sha256 of its module hashes) that answered.")


class PredictResponse(BaseModel):
    config: str
    outputs: list[Prediction]


class Health(BaseModel):
    status: str
    config: str
    queue_depth: int
    queue_size: int


class Stats(BaseModel):
    """Counters of the cross-request batcher since the service started."""

    requests: int = 0
    inputs: int = 0
    batches: int = 0
    engine_calls: int = 0
    rejected_queue_full: int = 0
    failed: int = 0
    max_inputs_per_batch: int = 0
    max_requests_per_batch: int = 0
    recent_batches: list[dict[str, int]] = Field(
        default_factory=list, description="The last batches: requests and inputs each."
    )


class ConfigsResponse(BaseModel):
    selected: str
    configurations: list[dict[str, Any]]


class ErrorBody(BaseModel):
    error: str
