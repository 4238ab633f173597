"""Runs Google's own Python client library (google-auth's AWS external account credentials),
unmodified, against the doubles and prints {"token", "expiry"} or {"error"}.

Input (argv[1], JSON): audience, token_url, impersonation_url (optional), scopes. AWS
credentials and region come from the standard AWS_* environment variables, as in a pod. The
library signs for the real regional AWS STS URL (it accepts nothing else); the doubles route that
call to moto.
"""
import json
import sys

import google.auth.transport.requests
from google.auth import aws

spec = json.loads(sys.argv[1])
info = {
    "type": "external_account",
    "audience": spec["audience"],
    "subject_token_type": "urn:ietf:params:aws:token-type:aws4_request",
    "token_url": spec["token_url"],
    "credential_source": {
        "environment_id": "aws1",
        "regional_cred_verification_url": "https://sts.{region}.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15",
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
