# pytester's in-process runs drop modules first imported inside them, and torch cannot be
# imported twice in one process: import it here, before any inner run.
import numpy  # noqa: F401
import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models train faster on one thread, and spare a loaded CI machine; opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
