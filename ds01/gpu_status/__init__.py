"""`gpu-status`: the GPU and MIG picture for users, read from Prometheus only."""

from .cli import build_parser, main

__all__ = ["build_parser", "main"]
