"""Independent SigV4 signer for fedcred's conformance tests.

Reads a JSON list of vectors on stdin, each {key, secret, token, region, url, time, audience},
signs `POST url` with no body using botocore's SigV4Auth (service "sts") at the given time,
with the x-goog-cloud-target-resource header when an audience is given, and prints a JSON list
of the resulting Authorization headers.
"""
import datetime
import json
import sys

import botocore.auth
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials


def sign(vector):
    when = datetime.datetime.strptime(vector["time"], "%Y-%m-%dT%H:%M:%SZ")
    botocore.auth.get_current_datetime = lambda: when
    headers = {}
    if vector.get("audience"):
        headers["x-goog-cloud-target-resource"] = vector["audience"]
    request = AWSRequest(method="POST", url=vector["url"], data=b"", headers=headers)
    creds = Credentials(vector["key"], vector["secret"], vector.get("token"))
    SigV4Auth(creds, "sts", vector["region"]).add_auth(request)
    return request.headers["Authorization"]


print(json.dumps([sign(v) for v in json.load(sys.stdin)]))
