"""Implementations of the `mmfusion` sub-commands (the top layer, like cli.py: may import every layer).

Each module exposes ``add_arguments(parser)`` and ``run(args) -> int``.
"""
