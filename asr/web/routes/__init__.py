"""HTTP routes, one module per API area. Routes parse requests and render results; the work is
in `asr.service` and `asr.pipeline`."""
