"""The ``equiserve`` command line (``services.cli.main:main``)."""
