"""Danqing's Gradio UI: layout, event wiring and every user-visible string. No torch here."""
