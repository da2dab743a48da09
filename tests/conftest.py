"""Shared test set-up: a non-interactive matplotlib backend, and global state put back."""
import matplotlib

matplotlib.use("Agg")  # tests never open windows; set before pyplot is imported anywhere

import pytest  # noqa: E402
import torch  # noqa: E402

# One intra-op thread per test process, as in the notebooks (`bncourse.setup(threads=1)`):
# results repeat from run to run, and with pytest-xdist's two workers on two cores, more threads
# only fight each other (the small training loops in tests ran 2-3x slower with two).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """`bncourse.setup(threads=..., portable=...)` changes process-wide settings: undo them
    after each test."""
    threads, mkldnn = torch.get_num_threads(), torch.backends.mkldnn.enabled
    nnpack = torch._C._get_nnpack_enabled()
    yield
    torch.set_num_threads(threads)
    torch.backends.mkldnn.enabled = mkldnn
    torch.backends.nnpack.set_flags(nnpack)
