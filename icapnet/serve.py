"""``python -m icapnet.serve``: a web page and JSON API that caption uploaded photos.

Loads the model once, warms it up (so the first visitor does not wait for graph tracing),
binds the port itself (so "address in use" is a one-line error, not a traceback) and runs
uvicorn. Open http://HOST:PORT/ for the page, /docs or /openapi.json for the API.
"""

from __future__ import annotations

import argparse
import errno
import io
import os
import socket
import sys
from collections.abc import Sequence

from icapnet import cli
from icapnet.config import DEFAULT_BEAM, MAX_BEAM_SIZE
from icapnet.errors import IcapnetError, run_cli
from icapnet.model.store import resolve_model
from icapnet.web.app import DEFAULT_MAX_BEAM_SIZE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m icapnet.serve",
        description="Serve a web page and JSON API that caption uploaded photos.",
    )
    cli.add_model_flag(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (0: any free)")
    parser.add_argument(
        "--max-upload-mb", type=float, default=10.0, help="largest accepted upload in MB"
    )
    parser.add_argument(
        "--max-beam-size",
        type=int,
        default=DEFAULT_MAX_BEAM_SIZE,
        help="largest beam width a request may ask for",
    )
    parser.add_argument(
        "--feature-weights",
        default=None,
        help="backbone weights to use instead of the ones recorded in the model's config "
        "(a local .h5 file, 'imagenet' or 'none')",
    )
    parser.add_argument(
        "--examples",
        default=None,
        metavar="DIR",
        help="folder of example photos the page offers (default: MODEL/examples/ if present; "
        "a few drawn scenes for a model trained on synthetic data)",
    )
    parser.add_argument("--no-warmup", action="store_true", help="skip the warm-up caption")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 < args.max_upload_mb <= 1024:
        raise IcapnetError(f"--max-upload-mb: must be in (0, 1024], got {args.max_upload_mb}")
    if not 1 <= args.max_beam_size <= MAX_BEAM_SIZE:
        raise IcapnetError(f"--max-beam-size: must be from 1 to {MAX_BEAM_SIZE}, "
                           f"got {args.max_beam_size}")
    if not 0 <= args.port <= 65535:
        raise IcapnetError(f"--port: must be from 0 to 65535, got {args.port}")
    model_dir = resolve_model(args.model)
    if args.examples is not None and not os.path.isdir(args.examples):
        raise IcapnetError(f"{args.examples}: examples folder not found")
    sock = bind_socket(args.host, args.port)  # before the slow model load: fail fast

    cli.start()
    import uvicorn

    from icapnet.inference.decoding import max_beam_size
    from icapnet.inference.predictor import Predictor
    from icapnet.web.app import create_app

    print(f"loading model {model_dir} ...", file=sys.stderr, flush=True)
    predictor = Predictor.from_dir(model_dir, feature_weights=args.feature_weights)
    # A request may not ask for more hypotheses than the model has tokens to write.
    args.max_beam_size = min(args.max_beam_size, max_beam_size(len(predictor.vocab)))
    if not args.no_warmup:  # trace the greedy and the beam graphs the page uses
        from icapnet.data.images import load_image_bytes

        warm = load_image_bytes(_warmup_png(), "warm-up image")
        predictor.caption_images([warm], beam_size=1)
        beam = min(DEFAULT_BEAM, args.max_beam_size)
        predictor.caption_images([warm], beam_size=beam, num_candidates=beam)
    app = create_app(
        predictor,
        model_dir,
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        max_beam_size=args.max_beam_size,
        examples_dir=args.examples,
    )
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {model_dir.name} on http://{shown}:{port}/ (Ctrl+C to stop)", flush=True)
    config = uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind and listen on ``host:port`` ourselves so failures become one-line errors."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise IcapnetError(f"{host}: cannot resolve host ({err.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as err:
        sock.close()
        reason = "port already in use" if err.errno == errno.EADDRINUSE else err.strerror
        raise IcapnetError(f"{host}:{port}: cannot listen ({reason})") from None
    sock.set_inheritable(True)
    return sock


def _warmup_png() -> bytes:
    """A small grey photo: enough to trace the model's graphs before the first request."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (128, 128, 128)).save(buffer, format="PNG")
    return buffer.getvalue()


if __name__ == "__main__":
    sys.exit(run_cli(main))
