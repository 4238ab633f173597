"""Runs Google's own Python client library (google-auth's AWS external account credentials)
against the doubles and prints {"token", "expiry"} or {"error"}.

Input (argv[1], JSON): audience, token_url, verification_url (GetCallerIdentity URL of the AWS
STS to sign for), impersonation_url (optional), scopes. AWS credentials and region come from the
standard AWS_* environment variables, as in a pod.
"""
import json
import sys
import urllib.parse

import google.auth.transport.requests
from google.auth import aws

spec = json.loads(sys.argv[1])

# google-auth only signs https URLs, and moto serves plain http. SigV4 does not cover the scheme,
# so the library signs for https://HOST:PORT and this shim only swaps the scheme in the subject
# token's "url" afterwards: the headers, their order and the signature stay the library's own.
verification_url = spec["verification_url"]
_retrieve = aws.Credentials.retrieve_subject_token


def _retrieve_over_http(self, request):
    token = json.loads(urllib.parse.unquote(_retrieve(self, request)))
    token["url"] = verification_url
    return urllib.parse.quote(json.dumps(token, separators=(",", ":"), sort_keys=True), safe="")


aws.Credentials.retrieve_subject_token = _retrieve_over_http
info = {
    "type": "external_account",
    "audience": spec["audience"],
    "subject_token_type": "urn:ietf:params:aws:token-type:aws4_request",
    "token_url": spec["token_url"],
    "credential_source": {
        "environment_id": "aws1",
        "regional_cred_verification_url": verification_url.replace("http://", "https://", 1),
    },
}
if spec.get("impersonation_url"):
    info["service_account_impersonation_url"] = spec["impersonation_url"]
try:
    credentials = aws.Credentials.from_info(info, scopes=spec["scopes"])
    credentials.refresh(google.auth.transport.requests.Request())
    print(json.dumps({"token": credentials.token, "expiry": credentials.expiry.isoformat()}))
except Exception as e:  # the test reads the message
    print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
