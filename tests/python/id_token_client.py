"""google-auth used as its documentation shows, through fedcred's metadata emulator, unchanged.

Run with nothing but the environment fedcred's webhook injects and an empty HOME.
Arguments: API_URL AUDIENCE. Prints one JSON object: what application-default credentials
found, the API's answer to a request they authorized, and the ID token
google.oauth2.id_token.fetch_id_token obtained for AUDIENCE.
"""
import json
import sys

import google.auth
import google.auth.transport.requests
import google.oauth2.id_token

api_url, audience = sys.argv[1], sys.argv[2]

credentials, project = google.auth.default(
    scopes=["https://www.googleapis.com/auth/cloud-platform"]
)
session = google.auth.transport.requests.AuthorizedSession(credentials)
answer = session.get(api_url)

request = google.auth.transport.requests.Request()
id_token = google.oauth2.id_token.fetch_id_token(request, audience)

print(
    json.dumps(
        {
            "class": f"{type(credentials).__module__}.{type(credentials).__qualname__}",
            "project": project,
            "token": credentials.token,
            "api_status": answer.status_code,
            "api_body": answer.text,
            "id_token": id_token,
        }
    )
)
