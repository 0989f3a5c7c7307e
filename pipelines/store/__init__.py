"""The store: the single owner of loaded weights (one base pipeline, the LoRA adapters on it,
and a byte-budgeted cache of ControlNets, upscalers and annotators), with the device plan, the
model folders and the engine settings it is built from. Imports only ``formats`` below it."""

from .folders import ModelFolders, install_folders, read_extra_model_paths
from .model_store import HUB_ID, ModelChoice, ModelStore
from .settings import DEFAULT_MODEL, KNOWN_HUB_MODELS, EngineSettings

__all__ = ["DEFAULT_MODEL", "HUB_ID", "KNOWN_HUB_MODELS", "EngineSettings", "ModelChoice", "ModelFolders", "ModelStore",
           "install_folders", "read_extra_model_paths"]
