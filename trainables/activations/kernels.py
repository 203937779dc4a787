"""``LSLU_KERNEL``: which of LSLU's own kernels serve, read on every call so that a test or a worker can switch it.

    triton  (default) CUDA: the series' Triton pair (lslu_triton.py); CPU: the compiled inference and training kernel
            for the series and the depthwise conv (lslu_cpu.py)
    site    as triton, and on CUDA the series and the depthwise conv as one Triton site, with BatchNorm inside its
            function in training (lslu_site_triton.py; opt-in until a GPU run weighs it)
    eager   none of them: PyTorch's ops alone
"""
from __future__ import annotations

import contextlib
import contextvars
import os

KERNELS = ("triton", "site", "eager")
_FORCED: contextvars.ContextVar[str | None] = contextvars.ContextVar("lslu_kernel", default=None)


def kernel_choice() -> str:
    forced = _FORCED.get()
    if forced is not None:
        return forced
    choice = os.environ.get("LSLU_KERNEL", "triton")
    if choice not in KERNELS:
        raise ValueError(f"environment variable LSLU_KERNEL={choice!r} is not one of {', '.join(KERNELS)}")
    return choice


@contextlib.contextmanager
def eager_kernels():
    """PyTorch's ops alone inside the block, whatever ``LSLU_KERNEL`` says (this thread or task only): for
    ``FlopCounterMode``, which sees aten's convolutions but not a compiled or Triton kernel's."""
    token = _FORCED.set("eager")
    try:
        yield
    finally:
        _FORCED.reset(token)
