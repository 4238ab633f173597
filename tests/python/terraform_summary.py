"""Reads a Terraform file with python-hcl2 (an independent HCL2 parser) and prints, as JSON, what
the tests compare with the commands `fedcred setup` prints: every resource's type and name, each
provider's attribute mapping and condition (with its AWS account or OIDC issuer), the workloadIdentityUser members, and each IAM role's
trust policy (the heredoc parsed as JSON). Exits non-zero when the file is not valid HCL2 or a
policy is not JSON."""

import json
import sys

import hcl2


def unquote(value):
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def heredoc(value):
    body = unquote(value)
    if not body.startswith("<<-JSON\n"):
        raise SystemExit(f"not a <<-JSON heredoc: {body[:40]!r}")
    return body[len("<<-JSON\n"):].rsplit("\n", 1)[0]


with open(sys.argv[1]) as f:
    parsed = hcl2.load(f)

summary = {"resources": [], "providers": {}, "members": [], "roles": {}, "variables": []}
for variable in parsed.get("variable", []):
    summary["variables"].extend(unquote(name) for name in variable)
for block in parsed.get("resource", []):
    for rtype, named in block.items():
        rtype = unquote(rtype)
        for name, body in named.items():
            name = unquote(name)
            summary["resources"].append(f"{rtype}.{name}")
            if rtype == "google_iam_workload_identity_pool_provider":
                provider = {
                    "condition": unquote(body["attribute_condition"]),
                    "mapping": {unquote(k): unquote(v) for k, v in body["attribute_mapping"].items()},
                }
                # An AWS provider names its account; an OIDC provider its issuer (and audiences).
                if "aws" in body:
                    provider["account"] = unquote(body["aws"][0]["account_id"])
                else:
                    oidc = body["oidc"][0]
                    provider["issuer"] = unquote(oidc["issuer_uri"])
                    provider["allowed_audiences"] = [unquote(a) for a in oidc.get("allowed_audiences", [])]
                summary["providers"][unquote(body["workload_identity_pool_provider_id"])] = provider
            elif rtype == "google_service_account_iam_member":
                summary["members"].append(unquote(body["member"]))
            elif rtype == "aws_iam_role":
                summary["roles"][unquote(body["name"])] = json.loads(heredoc(body["assume_role_policy"]))
json.dump(summary, sys.stdout, indent=1, sort_keys=True)
