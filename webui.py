#!/usr/bin/env python3
"""Chinese ASR service: the Gradio web UI and the HTTP API (OpenAPI docs at /docs) on one port.

    python webui.py --config auto --port 7860

Flags are documented in ``python webui.py --help``; everything else is a setting
(configs/*.yaml or ASR_* environment variables, see asr/settings.py).
"""

from asr.web.launch import main

if __name__ == "__main__":
    main()
