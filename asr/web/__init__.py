"""The web layer: FastAPI routers (one per API area) and the Gradio UI, built by ``create_app``."""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    # Imported on first use: asr.service.core imports asr.web.metrics, and an eager import of
    # the app here (which imports asr.service.core) made `import asr.service.core` circular.
    if name == "create_app":
        from asr.web.app import create_app

        return create_app
    raise AttributeError(name)
