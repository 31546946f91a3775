from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

from core.path_bytes import path_bytes_checked

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ironclaw_site.settings")

# Django's request keeps only a lossy decoding of the URL path: its bytes are checked first.
application = path_bytes_checked(get_wsgi_application())
