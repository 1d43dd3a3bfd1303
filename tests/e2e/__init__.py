"""End-to-end suite: everything is checked through E2E_BASE_URL, the gateway, only.

A package so that test modules can share `support` with a relative import under
pytest's `--import-mode=importlib`, which puts nothing on `sys.path`.
"""
