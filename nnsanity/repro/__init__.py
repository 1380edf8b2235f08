"""The reproduction engine behind ``reproductions/``: Nielsen's network2, a batched population
trainer, MNIST in network2's split, claims, statistics, the claim report and the figures.

Install with ``pip install 'nnsanity[repro]'`` (scipy, torchvision, matplotlib). Its pytest
options and fixtures are in ``nnsanity.repro.plugin``, which is not loaded for users of the
checks; a conftest opts in with ``pytest_plugins = ["nnsanity.repro.plugin"]``. This engine
serves the reproduction suite and is not covered by the checks' API stability promise.
"""
