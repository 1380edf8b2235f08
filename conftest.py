"""What this repository's own test runs need: the reproduction engine's plugin and one fixture.

Users of the checks get only the core plugin (``nnsanity.plugin``, the seed and device);
this repository's suites also load the engine's (budget, MNIST, claims, report, plots).
"""

import pytest

pytest_plugins = ["nnsanity.repro.plugin"]


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
