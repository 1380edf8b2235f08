# pytester's in-process runs drop modules first imported inside them, and torch cannot be
# imported twice in one process: import it here, before any inner run.
import numpy  # noqa: F401
import torch  # noqa: F401
