"""gunicorn settings for the gateway; everything comes from `GATEWAY_*` variables.

gunicorn -c services/gateway/gunicorn.conf.py 'gateway.app:create_app()'
"""

from servicekit.serving import export_metrics_dir, gunicorn_options

# Before any service module is imported: one of them may import prometheus_client, which
# fixes single- or multi-process mode on first import.
export_metrics_dir("gateway")

from gateway.routing import load_route_table  # noqa: E402
from gateway.settings import Settings  # noqa: E402
from servicekit.settings import load_settings  # noqa: E402

settings = load_settings(Settings)
# Checked here as well, in the master: a bad route file found only by the workers would
# crash each of them as fast as gunicorn restarts them, and start-up would never stop.
load_route_table(settings.routes_file)

globals().update(
    gunicorn_options(
        settings,
        service_name="gateway",
        worker_class="servicekit.workers.ProxyWorker",
    )
)
