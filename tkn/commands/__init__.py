"""Sub-commands of the ``tkn`` command line, one module each (see :mod:`tkn.cli`)."""
