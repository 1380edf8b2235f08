"""nnsanity: "A Recipe for Training Neural Networks" as assertions, and Nielsen ch. 5 as tests."""

from nnsanity.errors import SanityError

__version__ = "0.1.0"

__all__ = ["SanityError", "__version__"]
