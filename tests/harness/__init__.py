"""What the suites that start real processes share: `processes` (free ports, bounded waits,
gunicorn services started and stopped by PID), `pinning` (keep-alive connections pinned to
one worker) and `scrape` (a service's /metrics, parsed).

Imported as `tests.harness.<module>`: the root pyproject.toml puts the repository root on
pytest's `pythonpath`.
"""
