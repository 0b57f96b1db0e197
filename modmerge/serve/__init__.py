"""Stage 6: the HTTP service over the reuse engine (`modmerge serve`).

``create_app(engine, settings)`` builds the FastAPI app: ``POST /v1/predict``, ``GET /v1/configs``,
``GET /healthz``, ``GET /v1/stats`` and the OpenAPI schema at ``/openapi.json``. Requests that
arrive together are batched across requests into one engine call (see :mod:`.batcher`).
"""

from modmerge.serve.app import create_app
from modmerge.serve.protocol import Engine
from modmerge.serve.settings import ServeError, ServeSettings, is_loopback

__all__ = ["Engine", "ServeError", "ServeSettings", "create_app", "is_loopback"]
