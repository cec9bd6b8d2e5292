"""``avatar serve``: run the live avatar server (WebRTC /offer and /whip, HTTP API, browser client)."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
import sys
from pathlib import Path

DESCRIPTION = """Run the live avatar server.

Open http://HOST:PORT/ in a browser, allow the microphone, and the portrait speaks with you.
Settings come from --config (default configs/server.yaml); flags override them.

Access: with tokens (--token, else the AVATAR_TOKEN environment variable, else auth.tokens in the
config) every API route needs "Authorization: Bearer TOKEN" (or ?token=TOKEN); the page, its files
and /healthz stay open. Bound beyond loopback with no token, the server makes a random one and
prints the page URL that carries it, unless --no-auth says to run open."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1; also the ICE host candidate)")
    p.add_argument("--port", type=int, default=None, help="HTTP port (default 8080)")
    p.add_argument("--engine", choices=["lite", "liveavatar"], default=None, help="generation engine (default lite: CPU)")
    p.add_argument("--avatar", default=None, metavar="IMAGE", help="default portrait (default: the built-in one)")
    p.add_argument("--config", default=None, metavar="YAML", help="server configuration (default configs/server.yaml)")
    p.add_argument("--max-sessions", type=int, default=None, help="most concurrent sessions")
    p.add_argument("--ice-host", action="append", default=None, metavar="ADDR",
                   help="host ICE candidate address to offer (repeatable; default follows --host)")
    p.add_argument("--stun", action="append", default=None, metavar="URL",
                   help="STUN/TURN server URL (repeatable; default none)")
    p.add_argument("--token", action="append", default=None, metavar="TOKEN",
                   help="access token the API requires (repeatable; replaces AVATAR_TOKEN and auth.tokens)")
    p.add_argument("--no-auth", action="store_true",
                   help="no access token, even when listening beyond loopback (prints a warning)")
    eng = p.add_argument_group("engine options (passed to load_engine)")
    eng.add_argument("--weights", default=None, metavar="DIR", help="liveavatar: folder with the checkpoints")
    eng.add_argument("--tiny", action="store_true", help="liveavatar: tiny random-weight configuration (tests)")
    eng.add_argument("--device", default=None, help="engine device, e.g. cpu or cuda:0")
    eng.add_argument("--num_gpus_dit", type=int, default=None, metavar="N",
                     help="liveavatar: the 4 denoising steps over N devices, one process each (started by the server)")
    eng.add_argument("--vae_gpu", action="store_true", help="liveavatar with --num_gpus_dit: the VAE on a device of its own")
    eng.add_argument("--engine-option", action="append", default=[], metavar="KEY=VALUE",
                     help="any other engine option (repeatable; VALUE parsed as YAML)")
    fit = p.add_argument_group("preflight (liveavatar: does the configuration fit and hold real time? see avatar preflight)")
    fit.add_argument("--gpu", default=None, metavar="NAME", help="the GPU, when it is not detected (H200, A100 80GB, ...)")
    fit.add_argument("--gpu-memory", type=float, default=None, metavar="GB", help="GPU memory to check against")
    fit.add_argument("--allow-slow", action="store_true",
                     help="start even when the check says the configuration does not fit or cannot reach 25 fps")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def _engine_options(args: argparse.Namespace) -> dict:
    options: dict = {}
    if args.weights:
        options["weights"] = args.weights
    if args.tiny:
        options["tiny"] = True
    if args.device:
        options["device"] = args.device
    if args.num_gpus_dit is not None:
        options["num_gpus_dit"] = args.num_gpus_dit
    if args.vae_gpu:
        options["vae_gpu"] = True
    options.update(parse_engine_options(args.engine_option))
    return options


def parse_engine_options(items: list[str]) -> dict:
    """``--engine-option KEY=VALUE`` items as a dict (VALUE parsed as YAML: true, 3, 0.5, a string)."""
    import yaml

    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--engine-option expects KEY=VALUE, got {item!r}")
        options[key.strip()] = yaml.safe_load(value)
    return options


class AddressInUse(OSError):
    """The HTTP address cannot be bound (exit status 1, like a failure at run time)."""


def _check_before_loading(config) -> None:
    """Fail at once on what would otherwise only surface after the engine has loaded (minutes for
    liveavatar). Raises ValueError for a missing portrait or host, AddressInUse for an address that cannot be bound."""
    if config.avatar and not Path(config.avatar).is_file():
        raise ValueError(f"--avatar: no image file at {config.avatar!r}")
    try:
        addresses = socket.getaddrinfo(config.host or None, config.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ValueError(f"--host {config.host!r} cannot be resolved: {exc.strerror}") from None
    for family, kind, proto, _, address in addresses:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's server does
                probe.bind(address)
        except OSError as exc:
            # only a taken or forbidden port is certain to fail; anything else (e.g. no IPv6 here)
            # is left to the server itself
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                raise AddressInUse(f"cannot listen on {config.host}:{config.port}: {exc.strerror}") from None


class PreflightRefused(ValueError):
    """The liveavatar configuration does not fit the GPU or cannot hold real time (exit status 2)."""


def preflight_check(engine: str, options: dict, gpu: str | None = None, gpu_memory: float | None = None,
                    allow_slow: bool = False, detect=None) -> str | None:
    """``avatar preflight`` for the engine about to load: on a known GPU, or when ``gpu``/``gpu_memory`` is
    given. Returns a line to print (or None); raises PreflightRefused with the whole answer when the
    configuration does not fit or cannot reach 25 fps, unless ``allow_slow``. With no size in ``options``,
    sets the largest live one there instead of refusing (_live_size_instead_of_default). Skipped for CPU/tiny runs."""
    if engine != "liveavatar" or options.get("tiny") or str(options.get("device") or "auto").startswith("cpu"):
        return None
    from live_avatar.core.engines.liveavatar.options import vae_compile_wanted
    from live_avatar.core.engines.liveavatar.preflight import (
        PreflightRequest,
        estimate,
        find_gpu,
        format_report,
    )

    if gpu is None and gpu_memory is None:
        if detect is None:
            from live_avatar.core.engines.liveavatar.options import detect_cuda_gpu as detect
        found = detect(str(options.get("device") or "auto"))
        if found is None:
            return None
        gpu, gpu_memory = found
        try:
            find_gpu(gpu)
        except ValueError:
            return f"preflight skipped: {gpu} is not in the table of known GPUs (give --gpu-memory GB to check)"
    result = estimate(PreflightRequest(
        size=str(options.get("size") or "704*384"), aspect=str(options.get("aspect") or "9:16"),
        fp8=bool(options.get("fp8")), compiled=bool(options.get("compile")),
        # what the engine will resolve on this (CUDA) GPU: compile_vae defaults to on with compile
        compiled_vae=vae_compile_wanted(options.get("compile_vae"), bool(options.get("compile")), "cuda"),
        gpu=gpu, gpu_memory_gb=gpu_memory,
        text_encoder=not options.get("random_weights") and options.get("text_encoder_device", "auto") != "cpu",
        kv_layout=str(options.get("kv_layout") or "contiguous"), gpus=int(options.get("num_gpus_dit") or 1),
        lookahead_s=float(options["lookahead_s"]) if options.get("lookahead_s") is not None else None,
    ))
    if result.ok:
        said = (f"preflight: fits, {result.sessions} real-time session(s), about {result.expected_fps:.0f} fps, "
                f"{result.compute_margin:.0%} compute margin (an estimate from measured figures; avatar preflight for details)")
        if result.suggestion:  # real time, but with too thin a margin: what keeps one
            s = result.suggestion
            said += (f"; under {s['margin_asked_pct']:g}% a slower card or any hiccup costs frames: "
                     + " ".join([f"size={s['size']}", *s["changes"]]) + f" keeps {s['compute_margin_pct']:.0f}%")
        return said
    chosen = _live_size_instead_of_default(options, result.suggestion, allow_slow)
    if chosen:
        return chosen
    if allow_slow:
        return "starting anyway (--allow-slow):\n" + format_report(result)
    raise PreflightRefused("refused by the preflight check (--allow-slow starts anyway):\n" + format_report(result))


def _live_size_instead_of_default(options: dict, suggestion: dict | None, allow_slow: bool) -> str | None:
    """No size asked for: the engine's default (704*384, the reference's offline size) holds real time
    on no single GPU, so a live server takes the largest size of the same aspect that does with the
    options given (none added: FP8 or compile stay the user's choice) and the compute margin under which
    the server warns (a size at the budget's edge is live on one card and not on the next of the same
    name: lent H100s ran 320x512 at 457-489 ms a block). ``options`` gets that size."""
    if options.get("size") or allow_slow or not suggestion or not suggestion.get("works_on_this_gpu") \
            or suggestion.get("changes"):
        return None
    options["size"] = suggestion["size"]
    asked, margin = suggestion["margin_asked_pct"], suggestion["compute_margin_pct"]
    kept = (f"with a {asked:g}% compute margin ({margin:.0f}%)" if margin >= asked else
            f"({margin:.0f}% compute margin: no size of these options keeps {asked:g}%)")
    return (f"preflight: no size given, and the default 704*384 cannot hold real time here: serving at "
            f"{suggestion['size']}, the largest {suggestion['aspect']} size that does {kept}, "
            f"about {suggestion['expected_fps']:.0f} fps, {suggestion['sessions']} session(s) "
            f"(--engine-option size=W*H to choose; avatar preflight for details)")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aioice").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    from aiohttp import web

    from live_avatar.core.engines import EngineUnavailable, check_engine_available
    from live_avatar.server.app import create_app
    from live_avatar.server.auth import configure_access
    from live_avatar.server.config import load_server_config
    from live_avatar.server.gc_tuning import freeze_startup_objects

    try:
        config = load_server_config(args.config, host=args.host, port=args.port, engine=args.engine, avatar=args.avatar)
        # an engine whose extra is not installed (liveavatar without torch): one line, before anything loads
        check_engine_available(config.engine)
        config.engine_options.update(_engine_options(args))
        if args.max_sessions is not None:
            config.sessions.max_sessions = args.max_sessions
        if args.ice_host:
            config.webrtc.ice_host_addresses = list(args.ice_host)
        if args.stun:
            config.webrtc.ice_servers = [{"urls": url} for url in args.stun]
        access = configure_access(config, args.token, args.no_auth, os.environ)
        _check_before_loading(config)
        fit = preflight_check(config.engine, config.engine_options, args.gpu, args.gpu_memory, args.allow_slow)
    except EngineUnavailable as exc:
        print(f"avatar serve: the {config.engine} engine cannot start: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"avatar serve: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"avatar serve: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, AddressInUse) else 2
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    from live_avatar.core.contract import AvatarError

    if access.warning:
        print(f"avatar serve: {access.warning}", file=sys.stderr)
    if fit:
        print(f"avatar serve: {fit}", file=sys.stderr)
    print(f"Live avatar server: loading the {config.engine} engine...", file=sys.stderr)

    def announce_ready(_aiohttp_banner: str) -> None:  # aiohttp calls this once the socket listens
        first, *others = access.page_urls
        print(f"Live avatar server ({config.engine} engine) ready on {first}", file=sys.stderr)
        for url in others:
            print(f"    or {url}", file=sys.stderr)
        if access.generated_token:
            print("    (a random access token, made because the server listens beyond loopback; give your own with "
                  "--token or AVATAR_TOKEN, or run open with --no-auth)", file=sys.stderr)
        elif access.tokens_required:
            print("    (an access token is required: send Authorization: Bearer TOKEN, or open the page with ?token=TOKEN)",
                  file=sys.stderr)

    try:
        app = create_app(config)
        app.on_startup.append(freeze_startup_objects)  # after the engine's start-up: see server/gc_tuning.py
        web.run_app(app, host=config.host, port=config.port, print=announce_ready)
    except (AvatarError, ValueError) as exc:  # a bad --avatar portrait or engine option
        prefix = f"the {config.engine} engine cannot start: " if isinstance(exc, EngineUnavailable) else ""
        print(f"avatar serve: {prefix}{exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. the port is taken
        print(f"avatar serve: {exc}", file=sys.stderr)
        return 1
    return 0
