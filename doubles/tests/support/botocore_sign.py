"""Signs a GetCallerIdentity request with botocore's SigV4Auth, an implementation independent of
the doubles' verifier, and prints it as the JSON of a Google AWS subject token.

Input (argv[1], JSON): url, region, access_key, secret_key, session_token (optional), time
(optional RFC 3339 UTC, default now), target (optional x-goog-cloud-target-resource value),
sign_target (bool: add the target header before signing, as fedcred does, or after, as Google's
Python library does), include_host (bool: list the host header, as Google's libraries do).
"""
import datetime
import json
import sys
import urllib.parse

import botocore.auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

spec = json.loads(sys.argv[1])
if spec.get("time"):
    fixed = datetime.datetime.strptime(spec["time"], "%Y-%m-%dT%H:%M:%SZ")
    botocore.auth.get_current_datetime = lambda *args, **kwargs: fixed

request = AWSRequest(method="POST", url=spec["url"])
target = spec.get("target")
if target is not None and spec.get("sign_target"):
    request.headers["x-goog-cloud-target-resource"] = target
credentials = Credentials(spec["access_key"], spec["secret_key"], spec.get("session_token"))
botocore.auth.SigV4Auth(credentials, "sts", spec["region"]).add_auth(request)

headers = [{"key": k, "value": v} for k, v in request.headers.items()]
if target is not None and not spec.get("sign_target"):
    headers.append({"key": "x-goog-cloud-target-resource", "value": target})
if spec.get("include_host"):
    headers.append({"key": "host", "value": urllib.parse.urlsplit(spec["url"]).netloc})
print(json.dumps({"url": spec["url"], "method": "POST", "headers": headers}))
