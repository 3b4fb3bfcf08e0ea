import os

from django.core.wsgi import get_wsgi_application
from django.urls import get_resolver

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
application = get_wsgi_application()

# Import every view (and what they import: the prediction log's pyarrow and DuckDB) while the
# worker starts, not in the first request it serves: that request would otherwise wait about
# a second, and a worker's memory would jump by some 80 MiB in the middle of serving it.
get_resolver().url_patterns  # noqa: B018 - evaluated for its imports
