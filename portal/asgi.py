import os

from django.core.asgi import get_asgi_application
from django.urls import get_resolver

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
application = get_asgi_application()

get_resolver().url_patterns  # noqa: B018 - every view imported at start, as in portal/wsgi.py
