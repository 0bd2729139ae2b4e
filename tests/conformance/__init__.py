"""The store conformance suite: written once, run against every backend in tests/backends.py.

Every test takes the `store` fixture (tests/conftest.py), which is parametrized over BACKENDS,
so a backend registered there runs this whole suite unchanged.
"""
