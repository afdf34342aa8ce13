"""`specdecode serve`: registered by specdecode.cli.make_parser through add_parser(subparsers).

Nothing here imports FastAPI or uvicorn until the command runs, so the other commands work
without the `server` extra and `serve` explains how to get it.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from ..engine import MAX_BATCH_TOKENS, PREFILL_CHUNK
from ..errors import SpecdecodeError

# Requests per pass: a 32-request pass of the bf16 1.5B target gave 9.7x the tokens/s of one request,
# 16 gave 7.7x, on the AVX-512-BF16 EPYC (docs/batching.md); 32 x 2k-token contexts need ~1.8 GB of KV.
DEFAULT_MAX_BATCH = 32


def add_parser(sub) -> argparse.ArgumentParser:
    from ..cli_common import add_model_options

    p = sub.add_parser(
        "serve", help="run an OpenAI-compatible HTTP server (completions, chat, streaming)",
        description="Serve the target model over OpenAI's /v1/completions and /v1/chat/completions, "
                    "speculatively if a drafter is set. Example: specdecode serve --model qwen2.5-coder-1.5b "
                    "--draft qwen2.5-coder-0.5b --port 8000",
    )
    add_model_options(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--served-model-name",
                   help="the model name clients send and /v1/models shows (default: the --model short name or "
                        "hub id, or the base name of a model file or folder; never a path)")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on every endpoint but /health "
                        "(default: $SPECDECODE_API_KEY; unset = no authentication)")
    p.add_argument("--max-batch", "--max-active", dest="max_batch", type=int, default=DEFAULT_MAX_BATCH,
                   help="generations in progress at once, advanced together: one target pass per round for all of "
                        f"them (continuous batching; 1 = strict FIFO; default {DEFAULT_MAX_BATCH})")
    p.add_argument("--max-batch-tokens", type=int, default=MAX_BATCH_TOKENS,
                   help="prompt chunks join a pass while it holds fewer tokens than this, so long prompts do not "
                        f"stall the requests decoding beside them (default {MAX_BATCH_TOKENS}; at least one chunk "
                        f"of {PREFILL_CHUNK} tokens per pass)")
    p.add_argument("--kv-cache-gb", type=float, default=None, metavar="GB",
                   help="KV-cache memory the active requests may hold together; a request waits while it does not "
                        "fit, and one that alone needs more is refused with 503 (default: half the memory "
                        "available at start)")
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests that may wait beyond --max-batch; more are refused with 429 (default 64)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body, else 413 (default 1 MiB)")
    p.add_argument("--max-tokens-limit", type=int, default=4096,
                   help="largest max_tokens a request may ask for, else 400 (default 4096)")
    p.add_argument("--allowed-hosts", default="", metavar="NAMES",
                   help="comma-separated host names the Host header may carry besides localhost, 127.0.0.1, [::1] "
                        "and the --host address; others get 421 (blocks DNS rebinding). Bound to 0.0.0.0 or ::, "
                        "any Host is accepted unless this lists the names clients use; '*' accepts any Host")
    p.add_argument("--allowed-origins", default="", metavar="ORIGINS",
                   help="comma-separated browser origins (e.g. http://localhost:3000) that may call the API, "
                        "with CORS headers; requests from other web pages get 403 (default: none; '*' = any)")
    p.add_argument("--read-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="a client must send its request headers within this time of connecting (or of its previous "
                        "answer), and then its body within this time, else the connection is closed (default 10)")
    p.add_argument("--shutdown-timeout", type=float, default=8.0, metavar="SECONDS",
                   help="on SIGTERM or Ctrl-C: stop accepting at once, answer queued requests 503, let running "
                        "generations go on this long, then end their streams with finish_reason 'abort' "
                        "(default 8: under docker stop's 10 s)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=cmd_serve)
    return p


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from .app import ServerConfig, api_key_from_env, create_app
        from .protocol import header_timeout_protocol
        from .shutdown import GracefulServer
    except ImportError as e:
        raise SpecdecodeError(f"the server needs FastAPI and uvicorn ({e}): pip install 'specdecode[server]'") from None
    from ..cli_common import build_engine

    for name in ("max_batch", "max_batch_tokens", "max_body_bytes", "max_tokens_limit"):
        if getattr(args, name) < 1:
            raise SpecdecodeError(f"--{name.replace('_', '-')} must be >= 1")
    if args.max_queue < 0:
        raise SpecdecodeError("--max-queue must be >= 0")
    if not 0 <= args.port <= 65535:
        raise SpecdecodeError(f"--port must be in 0..65535, got {args.port}")
    if not 0 <= args.shutdown_timeout < math.inf:
        raise SpecdecodeError(f"--shutdown-timeout must be >= 0 seconds, got {args.shutdown_timeout}")
    if not 0 < args.read_timeout < math.inf:
        raise SpecdecodeError(f"--read-timeout must be a positive number of seconds, got {args.read_timeout}")
    served_name = args.served_model_name if args.served_model_name is not None else default_served_name(args.model)
    if not served_name or len(served_name) > 256 or not served_name.isprintable():
        raise SpecdecodeError("--served-model-name must be 1 to 256 printable characters")
    allowed_hosts, allowed_origins = _split(args.allowed_hosts), _split(args.allowed_origins)
    api_key = api_key_from_env(args.api_key)
    if api_key is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"specdecode: warning: serving on {args.host} without --api-key: anyone who can reach this "
              "port can use the model", file=sys.stderr)
    if args.host in ("0.0.0.0", "::") and not allowed_hosts:
        print("specdecode: warning: bound to every interface, so any Host header is accepted; "
              "--allowed-hosts NAMES restricts it to the names clients use", file=sys.stderr)
    if args.kv_cache_gb is not None and not 0.001 <= args.kv_cache_gb < math.inf:
        raise SpecdecodeError(f"--kv-cache-gb must be a number of GB >= 0.001, got {args.kv_cache_gb}")
    if getattr(args, "tp", 1) <= 1 or os.environ.get("RANK", "0") == "0":  # only rank 0 serves HTTP
        check_can_listen(args.host, args.port)  # before the model loads (minutes), not after
    engine = build_engine(args)
    # Measured once the weights are in memory, so the default budget leaves room for them.
    kv_budget = int(args.kv_cache_gb * 2**30) if args.kv_cache_gb is not None else default_kv_budget()
    engine.max_batch_tokens = args.max_batch_tokens
    group = getattr(engine, "tp_group", None)
    if group is not None:  # --tp N: rank 0 serves, the other ranks replay its engine calls
        from ..parallel.serve import FollowerLoop, LeaderEngine

        if not group.leader:
            return FollowerLoop(engine, group).run()
        engine = LeaderEngine(engine, group)
    config = ServerConfig(model_name=served_name, api_key=api_key,
                          max_batch=args.max_batch, max_queue=args.max_queue, kv_budget_bytes=kv_budget,
                          max_body_bytes=args.max_body_bytes, max_tokens_limit=args.max_tokens_limit,
                          host=args.host, allowed_hosts=allowed_hosts, allowed_origins=allowed_origins,
                          read_timeout=args.read_timeout)
    app = create_app(engine, config)
    drafter = engine.drafter.name if engine.drafter is not None else "none"
    print(f"serving {config.model_name!r} (drafter: {drafter}) on http://{args.host}:{args.port}/v1",
          file=sys.stderr, flush=True)
    server_config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                                   http=header_timeout_protocol(args.read_timeout))
    GracefulServer(server_config, app.state.scheduler, args.shutdown_timeout).run()
    if group is not None:
        engine.close()
        if engine.lost is not None:
            raise engine.lost
    return 0


def check_can_listen(host: str, port: int) -> None:
    """SpecdecodeError unless a socket can bind host:port now (a port in use, an address this machine
    does not have). Bound with SO_REUSEADDR as uvicorn binds, then closed at once."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        raise SpecdecodeError(f"--host {host!r} is not an address this machine can listen on: {e}") from None
    family, kind, proto, _, address = infos[0]
    try:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(address)
    except OSError as e:
        raise SpecdecodeError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def default_kv_budget() -> int | None:
    """Half the physical memory available now, None where the OS does not say."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):
        return None


def default_served_name(model: str) -> str:
    """The name /v1/models shows for --model: a short name or hub id as given; for a file or
    folder on disk its base name (without .gguf), so the server never reveals a local path."""
    path = Path(model).expanduser()
    if path.exists() or model.endswith((".gguf", "/", os.sep)) or model.startswith((".", "~", os.sep)):
        name = path.name or path.resolve().name
        return name.removesuffix(".gguf") or "model"
    return model


def _split(names: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in names.split(",") if n.strip())
