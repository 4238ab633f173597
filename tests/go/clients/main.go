// Google's Go libraries, used the way their documentation shows, against whatever metadata
// server the environment names (fedcred's emulator, in tests/clients.rs). Prints one JSON object:
// what application-default credentials found, what the metadata package answers, the API
// double's answer to a request authorized by the ADC token, and an ID token for the audience.
//
//	clients API_URL AUDIENCE
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"cloud.google.com/go/compute/metadata"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/google"
	"google.golang.org/api/idtoken"
)

func main() {
	if len(os.Args) != 3 {
		fail("usage: clients API_URL AUDIENCE")
	}
	apiURL, audience := os.Args[1], os.Args[2]
	ctx := context.Background()
	out := map[string]any{}

	// golang.org/x/oauth2/google: application-default credentials.
	creds, err := google.FindDefaultCredentials(ctx, "https://www.googleapis.com/auth/cloud-platform")
	if err != nil {
		fail("FindDefaultCredentials: %v", err)
	}
	token, err := creds.TokenSource.Token()
	if err != nil {
		fail("ADC token: %v", err)
	}
	out["adc_project"] = creds.ProjectID
	out["adc_token"] = token.AccessToken

	// An API call authorized by those credentials.
	client := oauth2.NewClient(ctx, creds.TokenSource)
	resp, err := client.Get(apiURL)
	if err != nil {
		fail("API call: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	out["api_status"] = resp.StatusCode
	out["api_body"] = string(body)

	// cloud.google.com/go/compute/metadata.
	out["on_gce"] = metadata.OnGCE()
	if out["project_id"], err = metadata.ProjectIDWithContext(ctx); err != nil {
		fail("metadata.ProjectID: %v", err)
	}
	if out["email"], err = metadata.EmailWithContext(ctx, "default"); err != nil {
		fail("metadata.Email: %v", err)
	}
	scopes, err := metadata.ScopesWithContext(ctx, "default")
	if err != nil {
		fail("metadata.Scopes: %v", err)
	}
	out["scopes"] = scopes
	_, zoneErr := metadata.ZoneWithContext(ctx)
	_, undefined := zoneErr.(metadata.NotDefinedError)
	out["zone_not_defined"] = undefined

	// google.golang.org/api/idtoken: an ID token for a service at AUDIENCE.
	ts, err := idtoken.NewTokenSource(ctx, audience)
	if err != nil {
		fail("idtoken.NewTokenSource: %v", err)
	}
	id, err := ts.Token()
	if err != nil {
		fail("ID token: %v", err)
	}
	out["id_token"] = id.AccessToken

	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fail("encoding: %v", err)
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(1)
}
