"""Test helpers: real servers (NSD), a fault-injecting upstream, and real clients (dig, kdig).

Import them as `tests.support.<module>`; the suite is run with `python -m pytest` from the
repository root, which puts the root on sys.path.
"""
