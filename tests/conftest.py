"""Test-session settings.

The suite runs tiny models: one intra-op thread per process is several times faster for them than torch's default
(threads spinning on microsecond kernels), and keeps multi-process tests from oversubscribing the cores. Set
``HF_VLP_TEST_THREADS`` to use more.
"""

import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("HF_VLP_TEST_THREADS", "1")))


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module even when ``HF_VLP_TEST_THREADS`` asks for more: tensors this small gain
    nothing from threads, and on a busy machine the thread handoffs cost more than the arithmetic (measured: 2 s
    instead of 40 s for ALBEF's overfitting test on a loaded 2-core machine). Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
