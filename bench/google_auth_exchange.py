"""One google-auth client process of the side-by-side exchange benchmark (bench/exchange.sh).

Google's own Python library, unmodified: AWS `external_account` credentials with static
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and AWS_REGION from the environment, exchanged against
the Google doubles. Each exchange is `refresh()` on a fresh credentials object (an impersonating
credentials object keeps its federated token and would skip STS on the next refresh), through one
`requests` session (connection reuse, as in a long-running program). The loop requires a new token
each time, and the benchmark checks the doubles' counters: one STS exchange per iteration, plus one
IAM Credentials call when impersonating.

argv[1], JSON: audience, token_url, impersonation_url (optional), scopes, warmup, iterations, and
subject_token_only (optional: time only building and signing the subject token, no exchange).
Prints one JSON line: client, impersonate, warmup, iterations, loop_wall_s, loop_cpu_s (CPU time
of this process during the timed loop, all threads, from time.process_time()), peak_rss_kib (VmHWM).
"""
import json
import sys
import time

import google.auth.transport.requests
from google.auth import aws


def main():
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
    request = google.auth.transport.requests.Request()
    if spec.get("subject_token_only"):
        subject_token_only(aws.Credentials.from_info(info, scopes=spec["scopes"]), request, spec)
        return
    last = [None]

    def run(n):
        for _ in range(n):
            credentials = aws.Credentials.from_info(info, scopes=spec["scopes"])
            credentials.refresh(request)
            if not credentials.token or credentials.token == last[0]:
                raise SystemExit("google-auth returned no new token: no new exchange happened")
            last[0] = credentials.token

    run(spec["warmup"])
    cpu_start = time.process_time()
    wall_start = time.perf_counter()
    run(spec["iterations"])
    wall = time.perf_counter() - wall_start
    cpu = time.process_time() - cpu_start
    with open("/proc/self/status") as status:
        peak_rss_kib = next(int(l.split()[1]) for l in status if l.startswith("VmHWM:"))
    print(
        json.dumps(
            {
                "client": "google-auth",
                "impersonate": bool(spec.get("impersonation_url")),
                "warmup": spec["warmup"],
                "iterations": spec["iterations"],
                "loop_wall_s": wall,
                "loop_cpu_s": cpu,
                "peak_rss_kib": peak_rss_kib,
            }
        )
    )


def subject_token_only(credentials, request, spec):
    """Times google-auth building and signing the subject token alone (no I/O: credentials and
    region come from the environment), for contrast with fedcred's `subject_token::build`."""
    for _ in range(spec["warmup"]):
        credentials.retrieve_subject_token(request)
    samples = []
    cpu_start = time.process_time()
    wall_start = time.perf_counter()
    for _ in range(spec["iterations"]):
        t = time.perf_counter()
        credentials.retrieve_subject_token(request)
        samples.append(time.perf_counter() - t)
    wall = time.perf_counter() - wall_start
    cpu = time.process_time() - cpu_start
    samples.sort()
    print(
        json.dumps(
            {
                "client": "google-auth",
                "iterations": spec["iterations"],
                "median_s": samples[len(samples) // 2],
                "p90_s": samples[round((len(samples) - 1) * 0.9)],
                "loop_wall_s": wall,
                "loop_cpu_s": cpu,
            }
        )
    )


if __name__ == "__main__":
    main()
