import os
import random
import warnings
import zlib

# Triton kernels run on CPU tensors only under its interpreter, and Triton reads this when it is first
# imported (torch.compile's tests import it too): set before anything imports it.
os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np
import pytest
import torch

# Tracing/compiling tests warn about constant shapes by design; keep the output readable.
warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)


@pytest.fixture(autouse=True)
def _seeded(request):
    """Every test starts from generators seeded by its own id: the same values whatever runs before it and
    whatever ``PYTHONHASHSEED`` is (``torch.randn`` without a generator is then reproducible too)."""
    seed = zlib.crc32(request.node.nodeid.encode())
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one thread avoids OpenMP barrier stalls on a busy 2-core machine (10x there).

    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
