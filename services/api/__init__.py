"""Home of the generated gRPC code (see ``equiserve/__init__.py``)."""
