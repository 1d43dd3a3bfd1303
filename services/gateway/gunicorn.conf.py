"""gunicorn settings for the gateway; everything comes from `GATEWAY_*` variables.

gunicorn -c services/gateway/gunicorn.conf.py 'gateway.app:create_app()'
"""

from gateway.routing import load_route_table
from gateway.settings import Settings
from servicekit.serving import gunicorn_options
from servicekit.settings import load_settings

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
