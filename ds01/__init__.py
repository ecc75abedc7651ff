"""DS01 GPU lifecycle: the shared core (policy, classification, GPU backends, stack)."""

__version__ = "0.1.0"
