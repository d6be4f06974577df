"""The network and its kernels: model loading, the batched GPU frontend, fused attention, FSMN,
CIF, the timestamp head's BLSTM, CUDA graphs, and the `Engine` that batches them."""

from asr.engine.core import Engine, Transcript

__all__ = ["Engine", "Transcript"]
