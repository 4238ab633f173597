"""google-auth used as its documentation shows, through fedcred's metadata emulator, unchanged.

Run with nothing but the environment fedcred's webhook injects and an empty HOME.
Arguments: API_URL AUDIENCE. Prints one JSON object: what application-default credentials
found, the buckets google-cloud-storage listed with them (API_URL's host as its endpoint;
a refused request raises), and the ID token
google.oauth2.id_token.fetch_id_token obtained for AUDIENCE.
"""
import json
import sys
import urllib.parse

import google.auth
import google.auth.transport.requests
import google.cloud.storage
import google.oauth2.id_token

api_url, audience = sys.argv[1], sys.argv[2]

credentials, project = google.auth.default(
    scopes=["https://www.googleapis.com/auth/cloud-platform"]
)
credentials.refresh(google.auth.transport.requests.Request())

# Cloud Storage through its own client, which finds the same credentials and asks the
# metadata server for its default devstorage scopes.
endpoint = urllib.parse.urlsplit(api_url)
storage_client = google.cloud.storage.Client(
    client_options={"api_endpoint": f"{endpoint.scheme}://{endpoint.netloc}"}
)
buckets = [bucket.name for bucket in storage_client.list_buckets()]

request = google.auth.transport.requests.Request()
id_token = google.oauth2.id_token.fetch_id_token(request, audience)

print(
    json.dumps(
        {
            "class": f"{type(credentials).__module__}.{type(credentials).__qualname__}",
            "project": project,
            "token": credentials.token,
            "api_status": 200,
            "buckets": buckets,
            "storage_project": storage_client.project,
            "id_token": id_token,
        }
    )
)
