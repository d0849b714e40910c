"""The base of errors an operator can act on: the CLI prints the message and exits 2."""


class AutoprocError(Exception):
    """Something wrong with the input, the configuration or the request, said plainly."""
