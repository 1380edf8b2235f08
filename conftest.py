"""What this repository's own test runs need (users get fixtures from the nnsanity plugin)."""

import pytest


@pytest.fixture(scope="module")
def one_thread():
    """Small models and mini-batches of 10 train fastest on one thread: with two, the OpenMP
    pool's spinning made steps 10-20x slower on a busy 2-core machine. Opt in per module with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
