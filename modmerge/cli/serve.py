"""`modmerge serve LIB_DIR`: the reuse engine behind an HTTP service (registered on the main group)."""

from __future__ import annotations

from pathlib import Path

import click

from modmerge.cli import _friendly, err_console, main
from modmerge.errors import ModmergeError


@main.command("serve")
@click.argument("lib_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--budget", type=float, default=None, help="Storage budget: serve the best configuration that fits.")
@click.option("--config", "config_id", default=None, help="Serve this configuration id (e.g. c3) instead.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback unless --allow-remote).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--allow-remote", is_flag=True, help="Allow a non-loopback --host (the service has no authentication).")
@click.option("--device", default="cpu", show_default=True, help="Where assembled bodies run: cpu, cuda, cuda:1.")
@click.option("--max-inputs", default=64, show_default=True, help="Most inputs in one request (more: 413).")
@click.option("--max-body-bytes", default=1 << 20, show_default=True, help="Largest request body (more: 413).")
@click.option("--queue-size", default=64, show_default=True, help="Requests allowed to wait; a full queue answers 503.")
@click.option("--batch-window-ms", default=5.0, show_default=True, help="How long a batch waits for more requests.")
@click.option("--max-batch", default=256, show_default=True, help="Most inputs in one engine call.")
@click.option("--image-root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Only image paths under this folder may be read.")
@click.option("--cache-bytes", type=int, default=None, help="Bound of the engine's cache of assembled bodies.")
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Cache root with the library's zoo, read only if an older library lacks the pretrained weights "
                   "routing needs.")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="Torch intra-op threads (default: torch's; 1 is fastest on a crowded machine).")
@_friendly
def serve(
    lib_dir: Path, budget: float | None, config_id: str | None, host: str, port: int, allow_remote: bool, device: str,
    max_inputs: int, max_body_bytes: int, queue_size: int, batch_window_ms: float, max_batch: int,
    image_root: Path | None, cache_bytes: int | None, cache: Path | None, threads: int | None,
) -> None:
    """Serve the module library LIB_DIR over HTTP: POST /v1/predict, GET /v1/configs, /healthz, /docs."""
    from modmerge.serve import ServeSettings

    if (budget is None) == (config_id is None):
        raise ModmergeError("give exactly one of --budget or --config")
    # limits are checked before the library is opened: a typo should not cost a model load
    settings = ServeSettings.parse(
        host=host, port=port, allow_remote=allow_remote, max_inputs=max_inputs, max_body_bytes=max_body_bytes,
        queue_size=queue_size, batch_window_ms=batch_window_ms, max_batch=max_batch, image_root=image_root,
    )
    import uvicorn

    from modmerge.cli.reuse import library_source
    from modmerge.library import Library
    from modmerge.reuse import ReuseEngine
    from modmerge.serve import create_app

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    library = Library.open(lib_dir)
    extra = {} if cache_bytes is None else {"cache_bytes": cache_bytes}
    engine = ReuseEngine(library, budget=budget, config_id=config_id, device=device,
                         source=library_source(library, cache), **extra)
    cfg = engine.config
    err_console.print(
        f"serving configuration {cfg.id} of {lib_dir} (storage cost {cfg.storage_cost:.3f}) "
        f"on http://{host}:{port} (API docs at /docs)"
    )
    uvicorn.Server(uvicorn.Config(create_app(engine, settings), host=host, port=port, log_level="warning",
                                  lifespan="on", timeout_graceful_shutdown=5)).run()
