"""Danqing (丹青): start the web studio.

The only module with side effects: parse the command line (cli.py), build the engine
(startup.py), load the extensions, build the UI and launch (with ``--api``, the
A1111-compatible routes too). ``python app.py --help`` lists the options.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import pathlib
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
    from strings import GRADIO_ZH, load

    strings = load(args.lang)
    auth = parse_auth(args.auth, strings)
    if args.users:
        from api.accounts import read_users

        try:
            auth = (auth or []) + read_users(pathlib.Path(args.users))
        except (OSError, ValueError) as exc:
            sys.exit(strings.cli_bad_users.format(path=args.users, where=str(exc)[:80]))
    if host not in LOCAL_HOSTS and not auth and not args.insecure_no_auth and not on_space:
        sys.exit(strings.cli_listen_needs_auth)
    from api.accounts import Accounts
    from pipelines.team import Team
    from api.addresses import Addresses

    try:
        accounts = Accounts.of(auth, args.admins)
    except ValueError:
        sys.exit(strings.cli_bad_admins.format(names=args.admins))
    try:
        addresses = Addresses.for_bind(host, args.allowed_hosts, args.forwarded_allow_ips, on_space)
    except ValueError:
        sys.exit(strings.cli_bad_proxies.format(value=args.forwarded_allow_ips))
    for option, path in (("--a1111-dir", args.a1111_dir), ("--comfyui-dir", args.comfyui_dir)):
        if path and not os.path.isdir(os.path.join(path, "models")):
            sys.exit(strings.cli_bad_install_dir.format(option=option, path=path))
    extra_paths = ()
    if args.extra_model_paths:
        from pipelines.store import read_extra_model_paths

        try:
            extra_paths = read_extra_model_paths(pathlib.Path(args.extra_model_paths))
        except ValueError:
            sys.exit(strings.cli_bad_extra_paths.format(path=args.extra_model_paths))
    # X-Forwarded-* are read by the edge (api/addresses.py) from configured proxies only (on a
    # Space: the entry HF's proxy appended); uvicorn's own reading is off.
    os.environ["FORWARDED_ALLOW_IPS"] = ""

    # 2. Which model (the configured one if it can be had, else the demo bundle), the
    # extensions, the one store and the studio over it.
    from extensions import load_extensions
    from startup import EngineOptions, build_studio, choose_model

    speed = dict(attention=args.attention, channels_last=args.channels_last, fuse_qkv=args.fuse_qkv,
                 vae_tiling=args.vae_tiling, compile=args.compile, memory_mode=args.memory_mode,
                 preview=args.preview, preview_every=args.preview_every, vae=args.vae)
    installs = tuple((kind, path) for kind, path in (("a1111", args.a1111_dir), ("comfyui", args.comfyui_dir)) if path)
    started = choose_model(EngineOptions(model=args.model, models_dir=args.models_dir, outputs_dir=args.outputs_dir,
                                         demo=args.demo, offline=args.offline, device=args.device, dtype=args.dtype,
                                         speed=speed, installs=installs, extra_paths=extra_paths))
    # Who administers: one policy object for the studio, the UI, the APIs and the extensions.
    team = Team(admins=accounts.admins, logins=bool(auth), several=accounts.shared_by_several(),
                gallery=args.team_gallery)
    extensions = load_extensions(args.extensions_dir, lang=args.lang,
                                 may_change_shared=team.may_change_shared if team.several else None)
    # With --ray the engine runs as Ray Serve replicas; this process keeps the queue, logins,
    # history and files, and never loads a model (its store only lists and selects them).
    front_settings = dataclasses.replace(started.settings, device="cpu") if args.ray is not None else started.settings
    studio = build_studio(front_settings, extensions, strings.visible_label if args.visible_label else None,
                          quota_mb=args.max_user_outputs_mb, started=started)
    if args.ray is not None:
        if importlib.util.find_spec("ray") is None:
            sys.exit(strings.cli_no_ray)
        import torch

        from pipelines.serve import remote

        gpus = started.settings.device.startswith("cuda") or (started.settings.device == "auto" and torch.cuda.is_available())
        studio.use_remote(remote.start(started.settings, remote.RayOptions(
            address=args.ray, replicas=max(1, args.replicas), min_replicas=args.min_replicas,
            max_replicas=args.max_replicas, threads=args.replica_threads, gpus=gpus)))
    studio.team = team
    studio.max_train_steps, studio.train_slice_steps = max(0, args.max_train_steps), max(1, args.train_slice_steps)

    # 3. The UI. Results are served from outputs/ as they are (they never change once saved)
    # instead of being copied into Gradio's temporary folder.
    import gradio as gr

    from ui.layout import UIOptions, build_ui, page_css, page_js

    options = UIOptions(demo=started.settings.demo, missing_model=started.missing_model,
                        missing_folder=started.missing_folder, download_pending=started.download_pending,
                        default_size=256 if started.settings.demo else 512, lang=args.lang,
                        team=team)
    gr.set_static_paths([str(started.settings.outputs_dir.resolve())])
    demo = build_ui(studio, options, extensions)
    demo.queue(max_size=args.queue_size, default_concurrency_limit=1)

    # 4. Launch; --api puts the A1111-compatible routes on the same server. Every route sits
    # behind the edge (api/security.py: addresses, hosts, cross-site, login, bodies, whose
    # files) and the queue guard (per-client caps for every job route).
    from api.queue_guard import queue_guard
    from api.security import EdgePolicy, security_middleware

    policy = EdgePolicy(accounts=accounts, addresses=addresses, login_window=args.login_window, lang=args.lang,
                        may_read=studio.may_read)
    app_kwargs = {"middleware": [
        security_middleware(policy),
        queue_guard(demo, limit=args.client_queue_limit, queue_size=args.queue_size, lang=args.lang, stop=studio.stop),
    ]}
    if args.api:
        from api import api_app_kwargs

        app_kwargs |= api_app_kwargs(studio, accounts=accounts, lang=args.lang, styles=extensions)
    demo.launch(
        # A users file holds hashes: Gradio's login asks the accounts (plain pairs it can compare).
        server_name=host, server_port=port, share=args.share,
        auth=(lambda user, password: accounts.check(user, password) is not None) if args.users else auth,
        auth_message=strings.login_message,
        inbrowser=not (args.no_browser or on_space), show_error=False, max_file_size="25mb",
        enable_monitoring=False, allowed_paths=[],
        # Each accepted GPU job waits for its turn in a worker thread (pipelines/jobs.py Turns),
        # so there are threads for a full queue besides the page's quick events.
        max_threads=max(40, args.queue_size + 16),
        # Every REST call is a session of its own, and Gradio keeps each session's state (about
        # 0.3 MiB per generation job): bound them, or an API-driven server grows without end.
        state_session_capacity=args.session_capacity, footer_links=["api"], app_kwargs=app_kwargs,
        i18n=gr.I18n(**{"zh-CN": GRADIO_ZH, "zh": GRADIO_ZH}), css=page_css(strings), js=page_js(strings) or None,
        # Gradio's own start-up lines advise `share=True` in `launch()`: ours name our options.
        quiet=True, prevent_thread_lock=True,
    )
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    print(strings.cli_running.format(url=f"http://{shown}:{port}/"), flush=True)
    if demo.share_url:
        print(strings.cli_running_shared.format(url=demo.share_url), flush=True)
    elif host in LOCAL_HOSTS and not on_space:
        print(strings.cli_running_local, flush=True)
    demo.block_thread()


if __name__ == "__main__":
    main()
