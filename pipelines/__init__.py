"""Danqing's engine. No Gradio, no user-facing text; imports flow one way:
formats → store → tasks → studio (docs/ARCHITECTURE.md). ``requests`` and ``errors`` are pure
Python and safe for the UI to import; ``demo`` writes the demo bundle and is never imported by
the engine.
"""
