"""`modmerge serve LIB_DIR`: the reuse engine behind an HTTP service (registered on the main group)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import click

from modmerge.cli.common import err_console, friendly, main
from modmerge.errors import ModmergeError
from modmerge.image_files import DEFAULT_MAX_IMAGE_PIXELS
from modmerge.regular_files import read_regular

TOKEN_ENV = "MODMERGE_TOKEN"


@main.command("serve")
@click.argument("lib_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--budget", type=float, default=None, help="Storage budget: serve the best configuration that fits.")
@click.option("--config", "config_id", default=None, help="Serve this configuration id (e.g. c3) instead.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback unless --allow-remote).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--allow-remote", is_flag=True,
              help="Allow a non-loopback --host; needs a token (--token-file or $MODMERGE_TOKEN) or --no-auth.")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File holding the bearer token clients must send (default: $MODMERGE_TOKEN, if set).")
@click.option("--no-auth", is_flag=True, help="With --allow-remote: serve without a token, knowingly.")
@click.option("--device", default="cpu", show_default=True, help="Where assembled bodies run: cpu, cuda, cuda:1.")
@click.option("--max-inputs", default=64, show_default=True, help="Most inputs in one request (more: 413).")
@click.option("--max-body-bytes", default=1 << 20, show_default=True, help="Largest request body (more: 413).")
@click.option("--queue-size", default=64, show_default=True, help="Requests allowed to wait; a full queue answers 503.")
@click.option("--batch-window-ms", default=5.0, show_default=True, help="How long a batch waits for more requests.")
@click.option("--max-batch", default=256, show_default=True, help="Most inputs in one engine call.")
@click.option("--image-root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Only image paths under this folder may be read (with --allow-remote: no paths without it).")
@click.option("--max-image-pixels", type=click.IntRange(1), default=DEFAULT_MAX_IMAGE_PIXELS, show_default=True,
              help="Larger image files are refused (400) before they are decoded.")
@click.option("--cache-bytes", type=int, default=None, help="Bound of the engine's cache of assembled bodies.")
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Cache root with the library's zoo, read only if an older library lacks the pretrained weights "
                   "routing needs.")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="Torch intra-op threads (default: torch's; 1 is fastest on a crowded machine).")
@friendly
def serve(
    lib_dir: Path, budget: float | None, config_id: str | None, host: str, port: int, allow_remote: bool,
    token_file: Path | None, no_auth: bool, device: str, max_inputs: int, max_body_bytes: int, queue_size: int,
    batch_window_ms: float, max_batch: int, image_root: Path | None, max_image_pixels: int, cache_bytes: int | None,
    cache: Path | None, threads: int | None,
) -> None:
    """Serve the module library LIB_DIR over HTTP: POST /v1/predict, GET /v1/configs, /healthz, /docs."""
    from modmerge.serve import ServeSettings

    if (budget is None) == (config_id is None):
        raise ModmergeError("give exactly one of --budget or --config")
    # limits are checked before the library is opened: a typo should not cost a model load
    settings = ServeSettings.parse(
        host=host, port=port, allow_remote=allow_remote, max_inputs=max_inputs, max_body_bytes=max_body_bytes,
        queue_size=queue_size, batch_window_ms=batch_window_ms, max_batch=max_batch, image_root=image_root,
        max_image_pixels=max_image_pixels, token=read_token(token_file, os.environ), no_auth=no_auth,
    )
    import uvicorn

    from modmerge.cli.reuse import library_source
    from modmerge.library import Library
    from modmerge.reuse import ReuseEngine
    from modmerge.serve import create_app
    from modmerge.serve.connections import server_config

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    library = Library.open(lib_dir)
    extra = {} if cache_bytes is None else {"cache_bytes": cache_bytes}
    engine = ReuseEngine(library, budget=budget, config_id=config_id, device=device,
                         source=library_source(library, cache), max_image_pixels=settings.max_image_pixels,
                         **extra)
    cfg = engine.config
    auth = "bearer token required" if settings.token is not None else "no authentication"
    err_console.print(
        f"serving configuration {cfg.id} of {lib_dir} (storage cost {cfg.storage_cost:.3f}) "
        f"on http://{host}:{port} ({auth}; API docs at /docs)"
    )
    uvicorn.Server(server_config(create_app(engine, settings), settings)).run()


def read_token(token_file: Path | None, environ: Mapping[str, str]) -> str | None:
    """The bearer token: the first line of ``token_file`` (a regular file of at most 4 KiB), else
    ``$MODMERGE_TOKEN``, else None. ModmergeError names a missing, special or empty token file.

    >>> read_token(None, {"MODMERGE_TOKEN": "t0k3n-t0k3n-t0k3n"})
    't0k3n-t0k3n-t0k3n'
    """
    if token_file is None:
        return environ.get(TOKEN_ENV) or None
    try:
        text = read_regular(token_file, max_bytes=4096).decode("utf-8")
    except FileNotFoundError:
        raise ModmergeError(f"{token_file}: token file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ModmergeError(f"{token_file}: cannot read the token file ({err})") from None
    token = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not token:
        raise ModmergeError(f"{token_file}: the token file is empty")
    return token
