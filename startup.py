"""Start-up for ``app.py``: which model to run (the configured one when it can be
had, else the demo bundle with a message saying what is missing), the one store over it and
the studio facade. The composition root beside app.py: it may import the demo bundle, which
the engine (pipelines/) never does.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.downloads import Downloads
from pipelines.outputs import OutputWriter
from pipelines.store import DEFAULT_MODEL, HUB_ID, EngineSettings, ModelFolders, ModelStore, install_folders
from pipelines.store.folders import MODEL_KINDS
from pipelines.studio import Studio

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineOptions:
    """What the command line says about the engine."""

    model: str | None = None
    models_dir: str = "models"
    outputs_dir: str = "outputs"
    demo: bool = False
    offline: bool = False
    device: str = "auto"
    dtype: str = "auto"
    speed: dict = field(default_factory=dict)  # attention, channels_last, ... (EngineSettings fields)
    # Existing installs read as well, read-only: ("a1111" | "comfyui", their folder).
    installs: tuple[tuple[str, str], ...] = ()
    # A ComfyUI-style extra_model_paths.yaml (read by app.py): (kind, folder) pairs.
    extra_paths: tuple[tuple[str, Path], ...] = ()


@dataclass(frozen=True)
class Startup:
    """How the engine started, for the UI's banners."""

    settings: EngineSettings
    missing_model: str | None  # the configured model could not be had: the demo runs instead
    missing_folder: str  # where a model should be put
    download_pending: str | None  # a hub model that downloads on first use
    user_folders: ModelFolders | None = None  # the user's models folder: where 模型下载 writes
    offline: bool = False


def hub_reachable(repo_id: str) -> bool:
    """A quick look at the hub (or HF_ENDPOINT mirror); False offline, never a long hang."""
    try:
        from huggingface_hub import model_info

        model_info(repo_id, timeout=5)
        return True
    except Exception:
        return False


def choose_model(options: EngineOptions) -> Startup:
    """The configured model if it is on disk or downloadable, else the demo bundle."""
    from pipelines.demo import DEMO_MODEL, ensure_demo_bundle

    wanted = options.model or DEFAULT_MODEL
    extra = tuple(pair for kind, root in options.installs for pair in install_folders(kind, Path(root)))
    extra += options.extra_paths
    for kind, folder in extra:
        log.info("reading %s from %s (read-only)", kind, folder)
    user_folders = ModelFolders(Path(options.models_dir), extra)
    user_folders.ensure()
    missing = pending = None
    use_demo = options.demo
    if not use_demo:
        probe = ModelStore(EngineSettings(model=wanted, models_dir=Path(options.models_dir), device="cpu",
                                          extra_model_dirs=extra), user_folders)
        try:
            choice = probe.choice(wanted)
        except Exception:
            choice = None
        if choice is None or not choice.local:
            if choice is not None and HUB_ID.match(wanted) and not options.offline and hub_reachable(wanted):
                pending = wanted
            else:
                missing, use_demo = wanted, True
                log.warning("model %s not found locally and not downloadable: starting the demo bundle", wanted)
    common = dict(outputs_dir=Path(options.outputs_dir), device=options.device, dtype=options.dtype,
                  extra_model_dirs=extra, **options.speed)
    if use_demo:
        # The bundle is a cache other checkouts share: it is read (after the user's own folder
        # and any install), never written. What the user makes (a trained LoRA, a download)
        # goes to their own models folder, as without the demo.
        bundle = ModelFolders(ensure_demo_bundle())
        demo_folders = tuple((kind, bundle.folder(kind)) for kind in MODEL_KINDS)
        settings = EngineSettings(model=DEMO_MODEL, models_dir=Path(options.models_dir), demo=True,
                                  allow_download=False, **{**common, "extra_model_dirs": extra + demo_folders})
    else:
        settings = EngineSettings(model=wanted, models_dir=Path(options.models_dir), allow_download=not options.offline, **common)
    return Startup(settings, missing, str(user_folders.folder("checkpoints")) + os.sep, pending,
                   ModelFolders(Path(options.models_dir)), options.offline)


def build_studio(settings: EngineSettings, extensions, visible_label: str | None = None,
                 quota_mb: float = 0, started: Startup | None = None) -> Studio:
    """The one store and the studio over it; saved images go through the extensions' hooks.
    ``quota_mb``: what one user may keep in outputs/ (0: no cap). ``started``: downloads go to
    the user's models folder (the demo bundle is only a cache), refused with ``--offline``."""
    outputs = OutputWriter(settings.outputs_dir, on_saved=extensions.postprocess, visible_label=visible_label,
                           quota_bytes=int(quota_mb * 2**20))
    downloads = Downloads(started.user_folders, offline=started.offline) if started and started.user_folders else None
    return Studio(ModelStore(settings), outputs, extensions, downloads)
