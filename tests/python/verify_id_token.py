"""A receiving service's check of a Google-signed ID token, with google-auth's own verifier.

Arguments: TOKEN AUDIENCE CERTS_URL (the signer's PEM certificates by key id, as Google
publishes at https://www.googleapis.com/oauth2/v1/certs). Verifies the RS256 signature, the
audience and the expiry; prints the claims as JSON, or exits 1 with the reason.
"""
import json
import sys

import google.auth.exceptions
import google.auth.transport.requests
import google.oauth2.id_token

token, audience, certs_url = sys.argv[1], sys.argv[2], sys.argv[3]
request = google.auth.transport.requests.Request()
try:
    claims = google.oauth2.id_token.verify_token(
        token, request, audience=audience, certs_url=certs_url
    )
except (ValueError, google.auth.exceptions.GoogleAuthError) as error:
    print(f"rejected: {error}", file=sys.stderr)
    sys.exit(1)
print(json.dumps(claims))
