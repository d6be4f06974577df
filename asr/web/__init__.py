"""The web layer: FastAPI routers (one per API area) and the Gradio UI, built by ``create_app``."""

from asr.web.app import create_app

__all__ = ["create_app"]
