"""Application-default credentials through fedcred's metadata emulator, google-auth unchanged.

Run with nothing but the environment fedcred's webhook injects (GCE_METADATA_HOST,
GCE_METADATA_IP, GCE_METADATA_ROOT) and an empty HOME. Prints one JSON object: the class of the
credentials google.auth.default() chose, the project it found, and what a refresh obtained.
"""
import datetime
import json

import google.auth
import google.auth.transport.requests

credentials, project = google.auth.default()
request = google.auth.transport.requests.Request()
credentials.refresh(request)
# google-auth keeps expiry as a naive UTC datetime.
now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
print(
    json.dumps(
        {
            "class": f"{type(credentials).__module__}.{type(credentials).__qualname__}",
            "project": project,
            "token": credentials.token,
            "seconds_left": int((credentials.expiry - now).total_seconds()),
            "email": credentials.service_account_email,
            "universe": credentials.universe_domain,
        }
    )
)
