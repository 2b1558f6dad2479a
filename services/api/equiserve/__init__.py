"""Python code generated from ``protos/`` by ``make proto``; never edit it by hand.

The generated modules live in ``equiserve/v1/`` beside this file and are not
committed.
"""
