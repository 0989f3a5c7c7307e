"""Danqing's HTTP APIs beyond Gradio's own: the AUTOMATIC1111-compatible ``/sdapi/v1`` routes
(``python app.py --api``). See api/sdapi.py."""

from .sdapi import api_app_kwargs, build_router

__all__ = ["api_app_kwargs", "build_router"]
