"""Session setup shared by every test folder.

Without a CUDA GPU the Triton kernels can only run through Triton's interpreter, and Triton reads
``TRITON_INTERPRET`` when it is imported and when it decorates a kernel, before most test modules are collected; so
the interpreter is turned on here, for the whole session, on such machines (tests/kernels/test_triton_interp.py
needs it). It changes nothing else there: without a GPU the library runs the pure-torch twins.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
