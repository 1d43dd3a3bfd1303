"""Gunicorn configuration for the downstream-mock.

    gunicorn -c services/downstream-mock/gunicorn.conf.py 'downstream_mock.app:create_app()'

Everything tunable comes from `MOCK_*` variables (port, workers, timeouts, log level).
The one thing added here is the state directory the workers share: items, flaky
counters, faults and readiness must be the same whichever worker a request lands on,
so the master picks the directory before it forks and every worker inherits it.
"""

from servicekit.serving import export_metrics_dir, gunicorn_options, own_temp_dir

# Before any service module is imported: one of them may import prometheus_client, which
# fixes single- or multi-process mode on first import.
export_metrics_dir("downstream-mock")

from downstream_mock.settings import Settings  # noqa: E402
from downstream_mock.state import STATE_DIR_PREFIX  # noqa: E402
from servicekit.settings import load_settings  # noqa: E402

# Validated first, so that a bad setting stops the master with one clear line instead
# of every worker failing to boot, and before a directory is made that would leak.
globals().update(gunicorn_options(load_settings(Settings), service_name="downstream-mock"))
own_temp_dir("MOCK_STATE_DIR", STATE_DIR_PREFIX)
