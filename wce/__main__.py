"""`python -m wce`."""

from .cli import main

main()
