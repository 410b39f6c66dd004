"""``python -m znni`` is the ``znni`` command."""

from .cli import main

main()
