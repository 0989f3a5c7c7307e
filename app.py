"""Danqing (丹青): start the web studio.

The only module with side effects: parse the command line, build the one model store, load
the extensions, build the UI and launch (with ``--api``, the A1111-compatible routes too).
``python app.py --help`` lists the options.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

# No telemetry, and never hang long on a hub that cannot be reached.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")
os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "20")

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
log = logging.getLogger("danqing")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="app.py", description="Danqing: a Chinese-first web studio for diffusion image generation.")
    p.add_argument("--demo", action="store_true", default=os.environ.get("DANQING_DEMO") == "1", help="use the demo bundle: tiny random-weight models generated locally (images are noise); also DANQING_DEMO=1")
    p.add_argument("--model", default=None, help="base model: a hub id, a folder name under MODELS_DIR/checkpoints, or a path to a diffusers folder (default: alibaba-pai/pai-diffusion-artist-large-zh)")
    p.add_argument("--models-dir", default="models", help="folder with checkpoints/, lora/, controlnet/, upscalers/, annotators/ (default: models)")
    p.add_argument("--outputs-dir", default="outputs", help="where generated images are saved, one sub-folder per day (default: outputs)")
    p.add_argument("--host", default=None, help="address to bind (default 127.0.0.1; 0.0.0.0 on a HuggingFace Space)")
    p.add_argument("--port", type=int, default=None, help="port (default 7860)")
    p.add_argument("--listen", action="store_true", help="bind 0.0.0.0 so other machines on the LAN can connect (needs --auth)")
    p.add_argument("--auth", default=None, help="login as USER:PASS; several as USER:PASS,USER2:PASS2")
    p.add_argument("--insecure-no-auth", action="store_true", help="allow listening beyond localhost without a login (not recommended)")
    p.add_argument("--share", action="store_true", help="create a public gradio.live link (needs a network)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default auto)")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"], help="weights precision (default: fp16 on GPU, fp32 on CPU)")
    p.add_argument("--attention", default="sdpa", choices=["sdpa", "xformers", "naive"], help="attention backend (default sdpa: PyTorch's FlashAttention-class kernels)")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format for the U-Net and VAE")
    p.add_argument("--fuse-qkv", action="store_true", help="fuse the U-Net's Q/K/V projections into one matmul")
    p.add_argument("--vae-tiling", action="store_true", help="decode large images tile by tile (bounded memory)")
    p.add_argument("--compile", action="store_true", help="torch.compile the U-Net (slow first run; GPU only worth it)")
    p.add_argument("--preview", default="auto", choices=["auto", "approx", "taesd", "off"],
                   help="live step previews: a tiny decoder from models/vae-approx (taesd) or the linear approximation")
    p.add_argument("--preview-every", type=float, default=1.0, metavar="SECONDS",
                   help="at most one live preview per this many seconds of a job")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser window")
    p.add_argument("--offline", action="store_true", help="never download models")
    p.add_argument("--login-window", type=float, default=60.0, metavar="SECONDS", help="after 5 failed logins from one address within this many seconds, refuse its logins until the window passes (default 60)")
    p.add_argument("--queue-size", type=int, default=64, help="jobs waiting at most; more are answered 'busy' (default 64)")
    p.add_argument("--session-capacity", type=int, default=1000, metavar="N",
                   help="page/API sessions whose state the server keeps (oldest dropped first; default 1000)")
    p.add_argument("--client-queue-limit", type=int, default=4, metavar="N",
                   help="jobs one client (address) may have waiting or running at once; 0: no limit (default 4)")
    p.add_argument("--lang", default=None, choices=["zh", "en"], help="interface language (default zh)")
    p.add_argument("--visible-label", action="store_true", help="also draw the explicit AI-generated mark on saved images (GB 45438-2025; the metadata label is always written)")
    p.add_argument("--api", action="store_true", help="serve AUTOMATIC1111's /sdapi/v1 REST API on the same port and login (docs at /docs)")
    p.add_argument("--extensions-dir", action="append", default=[], metavar="DIR", help="another folder of extensions besides extensions/ (repeatable)")
    return p.parse_args(argv)


def parse_auth(text: str | None, strings) -> list[tuple[str, str]] | None:
    if not text:
        return None
    pairs = []
    for item in text.split(","):
        user, sep, password = item.partition(":")
        if not sep or not user or not password:
            raise SystemExit(strings.cli_bad_auth)
        pairs.append((user, password))
    return pairs


def hub_reachable(repo_id: str) -> bool:
    """A quick look at the hub (or HF_ENDPOINT mirror); False offline, never a long hang."""
    try:
        from huggingface_hub import model_info

        model_info(repo_id, timeout=5)
        return True
    except Exception:
        return False


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    on_space = bool(os.environ.get("SPACE_ID"))

    # 1. Where to listen, and whether a login is required.
    host = args.host or ("0.0.0.0" if (args.listen or on_space) else "127.0.0.1")
    port = args.port or int(os.environ.get("GRADIO_SERVER_PORT", 7860))
    from ui.strings import load

    strings = load(args.lang)
    auth = parse_auth(args.auth, strings)
    if host not in LOCAL_HOSTS and not auth and not args.insecure_no_auth and not on_space:
        sys.exit(strings.cli_listen_needs_auth)
    if on_space:
        # Only HF's proxy reaches a Space: its X-Forwarded-For names the visitor, so per-client
        # limits (api/queue_guard.py) and the login throttle count visitors, not the proxy.
        os.environ.setdefault("FORWARDED_ALLOW_IPS", "*")

    from pipelines.demo import DEMO_MODEL, ensure_demo_bundle
    from pipelines.folders import ModelFolders
    from pipelines.outputs import OutputWriter
    from pipelines.service import Studio
    from pipelines.settings import DEFAULT_MODEL, EngineSettings
    from pipelines.store import HUB_ID, ModelStore
    from ui.layout import UIOptions, build_ui

    # 2. Which model: the configured one if it can be had, else the demo bundle.
    wanted = args.model or DEFAULT_MODEL
    user_folders = ModelFolders(Path(args.models_dir))
    user_folders.ensure()
    missing = pending = None
    use_demo = args.demo
    if not use_demo:
        probe = ModelStore(EngineSettings(model=wanted, models_dir=Path(args.models_dir), device="cpu"), user_folders)
        try:
            choice = probe.choice(wanted)
        except Exception:
            choice = None
        if choice is None or not choice.local:
            if choice is not None and HUB_ID.match(wanted) and not args.offline and hub_reachable(wanted):
                pending = wanted
            else:
                missing, use_demo = wanted, True
                log.warning("model %s not found locally and not downloadable: starting the demo bundle", wanted)
    speed = dict(attention=args.attention, channels_last=args.channels_last, fuse_qkv=args.fuse_qkv,
                 vae_tiling=args.vae_tiling, compile=args.compile,
                 preview=args.preview, preview_every=args.preview_every)
    if use_demo:
        settings = EngineSettings(
            model=DEMO_MODEL, models_dir=ensure_demo_bundle(), outputs_dir=Path(args.outputs_dir),
            device=args.device, dtype=args.dtype, demo=True, allow_download=False, **speed,
        )
    else:
        settings = EngineSettings(
            model=wanted, models_dir=Path(args.models_dir), outputs_dir=Path(args.outputs_dir),
            device=args.device, dtype=args.dtype, allow_download=not args.offline, **speed,
        )

    # 3. The extensions, the one store, the studio over it, the UI.
    from extensions import load_extensions

    extensions = load_extensions(args.extensions_dir, lang=args.lang)
    store = ModelStore(settings)
    studio = Studio(store, OutputWriter(settings.outputs_dir, on_saved=extensions.postprocess,
                                        visible_label=strings.visible_label if args.visible_label else None), extensions)
    options = UIOptions(
        demo=settings.demo,
        missing_model=missing,
        missing_folder=str(user_folders.folder("checkpoints")) + os.sep,
        download_pending=pending,
        default_size=256 if settings.demo else 512,
        lang=args.lang,
    )
    # Results are served from outputs/ as they are (they never change once saved) instead of
    # being copied into Gradio's temporary folder: one file per image, not two, and a temp
    # folder that stays flat however many jobs run.
    import gradio as gr

    gr.set_static_paths([str(settings.outputs_dir.resolve())])
    demo = build_ui(studio, options, extensions)
    demo.queue(max_size=args.queue_size, default_concurrency_limit=1)

    # 4. Launch; --api puts the A1111-compatible routes on the same server. Every route sits
    # behind the cross-site check and the login throttle (api/security.py).
    from api.security import security_middleware

    from api.queue_guard import queue_guard

    app_kwargs = {"middleware": [
        security_middleware(lang=args.lang, login_window=args.login_window),
        queue_guard(demo, limit=args.client_queue_limit, queue_size=args.queue_size, lang=args.lang),
    ]}
    if args.api:
        from api import api_app_kwargs

        app_kwargs |= api_app_kwargs(studio, auth=auth, lang=args.lang, styles=extensions)
    demo.launch(
        server_name=host,
        server_port=port,
        auth=auth,
        share=args.share,
        inbrowser=not (args.no_browser or on_space),
        show_error=False,
        max_file_size="25mb",
        enable_monitoring=False,
        allowed_paths=[],
        # Every REST call is a session of its own, and Gradio keeps each session's state (about
        # 0.3 MiB per generation job): bound them, or an API-driven server grows without end.
        state_session_capacity=args.session_capacity,
        footer_links=["api"],
        app_kwargs=app_kwargs,
    )


if __name__ == "__main__":
    main()
