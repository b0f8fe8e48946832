"""Test-session settings.

The suite runs tiny models: one intra-op thread per process is several times faster for them than torch's default
(threads spinning on microsecond kernels), and keeps multi-process tests from oversubscribing the cores. Set
``HF_VLP_TEST_THREADS`` to use more.
"""

import os

import torch

torch.set_num_threads(int(os.environ.get("HF_VLP_TEST_THREADS", "1")))
