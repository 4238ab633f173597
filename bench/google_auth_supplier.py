"""The baseline of the `fedcred agent` benchmark (bench/agent.sh): what seed 003 users run
instead of fedcred, Google's Python library refreshing in-process with a custom AWS credential
supplier, written from google-auth's documented interface
(`google.auth.aws.AwsSecurityCredentialsSupplier`: `get_aws_security_credentials(context,
request)` and `get_aws_region(context, request)`, passed to `google.auth.aws.Credentials` as
`aws_security_credentials_supplier`).

The supplier hands out the benchmark's static AWS keys, as the agent's environment does, so
both sides sign with the same credentials and neither pays for fetching them. Each refresh is
`refresh()` on a fresh credentials object built with the same supplier and one `requests`
session: a long-running object refreshes once its impersonated token expires, and then its
federated token has expired too, so every real refresh is one Google STS exchange plus one IAM
Credentials call; a reused object would skip STS while its federated token lives.

argv[1], JSON: audience, token_url, impersonation_url, scopes, region, access_key_id,
secret_access_key, iterations.

Protocol with the driver (bench/agent_side_by_side.py), one JSON line each on stdout:
  {"event": "first"}  after the first token (the driver times start-up to this line);
  {"event": "idle"}   one second later, idle with a token;
  {"event": "done", "loop_cpu_s": …, "iterations": N}  after N more refreshes.
After each line it waits for one line on stdin, so the driver reads /proc/PID at that point.
"""
import json
import sys
import time

import google.auth.transport.requests
from google.auth import aws


class StaticSupplier(aws.AwsSecurityCredentialsSupplier):
    """The benchmark's static keys and region."""

    def __init__(self, access_key_id, secret_access_key, region):
        self._credentials = aws.AwsSecurityCredentials(access_key_id, secret_access_key)
        self._region = region

    def get_aws_security_credentials(self, context, request):
        return self._credentials

    def get_aws_region(self, context, request):
        return self._region


def say(event, **fields):
    print(json.dumps({"event": event, **fields}), flush=True)
    sys.stdin.readline()


def main():
    spec = json.loads(sys.argv[1])
    supplier = StaticSupplier(spec["access_key_id"], spec["secret_access_key"], spec["region"])
    request = google.auth.transport.requests.Request()

    def credentials():
        return aws.Credentials(
            audience=spec["audience"],
            subject_token_type="urn:ietf:params:aws:token-type:aws4_request",
            token_url=spec["token_url"],
            aws_security_credentials_supplier=supplier,
            service_account_impersonation_url=spec["impersonation_url"],
            scopes=spec["scopes"],
        )

    first = credentials()
    first.refresh(request)
    if not first.token:
        sys.exit("no token")
    say("first")
    time.sleep(1)
    say("idle")
    previous = first.token
    started = time.process_time()
    for _ in range(spec["iterations"]):
        current = credentials()
        current.refresh(request)
        if not current.token or current.token == previous:
            sys.exit("a refresh did not return a new token")
        previous = current.token
    say("done", loop_cpu_s=time.process_time() - started, iterations=spec["iterations"])


if __name__ == "__main__":
    main()
