"""Tests of services/ (the scheduler tests import their helpers as top-level modules)."""
