"""gunicorn settings for the gateway; everything comes from `GATEWAY_*` variables.

gunicorn -c services/gateway/gunicorn.conf.py 'gateway.app:create_app()'
"""

from gateway.settings import Settings
from servicekit.serving import gunicorn_options
from servicekit.settings import load_settings

globals().update(
    gunicorn_options(
        load_settings(Settings),
        service_name="gateway",
        worker_class="servicekit.workers.ProxyWorker",
    )
)
