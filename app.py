"""Danqing (丹青): start the web studio.

The only module with side effects: parse the command line (cli.py), build the engine
(startup.py), load the extensions, build the UI and launch (with ``--api``, the
A1111-compatible routes too). ``python app.py --help`` lists the options.
"""

from __future__ import annotations

import logging
import os
import sys

# No telemetry, and never hang long on a hub that cannot be reached.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")
os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "20")

from cli import LOCAL_HOSTS, parse_args, parse_auth  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    on_space = bool(os.environ.get("SPACE_ID"))

    # 1. Where to listen, and whether a login is required.
    host = args.host or ("0.0.0.0" if (args.listen or on_space) else "127.0.0.1")
    port = args.port or int(os.environ.get("GRADIO_SERVER_PORT", 7860))
    from strings import load

    strings = load(args.lang)
    auth = parse_auth(args.auth, strings)
    if host not in LOCAL_HOSTS and not auth and not args.insecure_no_auth and not on_space:
        sys.exit(strings.cli_listen_needs_auth)
    if on_space:
        # Only HF's proxy reaches a Space: its X-Forwarded-For names the visitor, so per-client
        # limits (api/queue_guard.py) and the login throttle count visitors, not the proxy.
        os.environ.setdefault("FORWARDED_ALLOW_IPS", "*")

    # 2. Which model (the configured one if it can be had, else the demo bundle), the
    # extensions, the one store and the studio over it.
    from extensions import load_extensions
    from startup import EngineOptions, build_studio, choose_model

    speed = dict(attention=args.attention, channels_last=args.channels_last, fuse_qkv=args.fuse_qkv,
                 vae_tiling=args.vae_tiling, compile=args.compile,
                 preview=args.preview, preview_every=args.preview_every)
    started = choose_model(EngineOptions(model=args.model, models_dir=args.models_dir, outputs_dir=args.outputs_dir,
                                         demo=args.demo, offline=args.offline, device=args.device, dtype=args.dtype,
                                         speed=speed))
    extensions = load_extensions(args.extensions_dir, lang=args.lang)
    studio = build_studio(started.settings, extensions, strings.visible_label if args.visible_label else None)

    # 3. The UI. Results are served from outputs/ as they are (they never change once saved)
    # instead of being copied into Gradio's temporary folder.
    import gradio as gr

    from ui.layout import UIOptions, build_ui

    options = UIOptions(demo=started.settings.demo, missing_model=started.missing_model,
                        missing_folder=started.missing_folder, download_pending=started.download_pending,
                        default_size=256 if started.settings.demo else 512, lang=args.lang)
    gr.set_static_paths([str(started.settings.outputs_dir.resolve())])
    demo = build_ui(studio, options, extensions)
    demo.queue(max_size=args.queue_size, default_concurrency_limit=1)

    # 4. Launch; --api puts the A1111-compatible routes on the same server. Every route sits
    # behind the cross-site check and the login throttle (api/security.py).
    from api.queue_guard import queue_guard
    from api.security import security_middleware

    app_kwargs = {"middleware": [
        security_middleware(lang=args.lang, login_window=args.login_window),
        queue_guard(demo, limit=args.client_queue_limit, queue_size=args.queue_size, lang=args.lang),
    ]}
    if args.api:
        from api import api_app_kwargs

        app_kwargs |= api_app_kwargs(studio, auth=auth, lang=args.lang, styles=extensions)
    demo.launch(
        server_name=host, server_port=port, auth=auth, share=args.share,
        inbrowser=not (args.no_browser or on_space), show_error=False, max_file_size="25mb",
        enable_monitoring=False, allowed_paths=[],
        # Every REST call is a session of its own, and Gradio keeps each session's state (about
        # 0.3 MiB per generation job): bound them, or an API-driven server grows without end.
        state_session_capacity=args.session_capacity, footer_links=["api"], app_kwargs=app_kwargs,
    )


if __name__ == "__main__":
    main()
