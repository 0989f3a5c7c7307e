"""Danqing's engine: the model store and one module per task. No Gradio, no user-facing text.

Modules import torch and diffusers lazily where they can; ``params``, ``errors``, ``folders``
and ``pnginfo`` are pure Python and safe for the UI to import.
"""
