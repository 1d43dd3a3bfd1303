"""Makes `import sniffio` fail as it does where sniffio is not installed.

The workspace venv has sniffio only because a test tool (asgi-lifespan) pulls it in;
anyio 4.16 no longer does, so a service image built from the lock without the dev
group has none. httpcore 1.0.9 then retries the failed import on every lock and event
it creates (failed imports are not cached), which PERFORMANCE-NOTES.md measured as a
quarter of its cost. The "as deployed" httpx baseline puts this directory first on
PYTHONPATH to measure that case next to the venv's.
"""

raise ModuleNotFoundError("No module named 'sniffio'", name="sniffio")
