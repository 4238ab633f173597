// Node's google-auth-library used as its documentation shows, against whatever metadata
// server the environment names (fedcred's emulator, in tests/clients.rs). Prints one JSON
// object: what application-default credentials found, the API double's answer to a request
// they authorized, and an ID token for the audience.
//
//   node index.js API_URL AUDIENCE
'use strict';
const {GoogleAuth} = require('google-auth-library');

async function main() {
  const [apiUrl, audience] = process.argv.slice(2);
  if (!apiUrl || !audience) throw new Error('usage: node index.js API_URL AUDIENCE');
  const auth = new GoogleAuth({scopes: 'https://www.googleapis.com/auth/cloud-platform'});
  const client = await auth.getClient();
  const project = await auth.getProjectId();
  const {token} = await client.getAccessToken();
  const answer = await client.request({url: apiUrl, validateStatus: () => true});
  const credentials = await auth.getCredentials();
  const idClient = await auth.getIdTokenClient(audience);
  const idToken = await idClient.idTokenProvider.fetchIdToken(audience);
  process.stdout.write(JSON.stringify({
    class: client.constructor.name,
    project,
    token,
    email: credentials.client_email,
    api_status: answer.status,
    api_body: JSON.stringify(answer.data),
    id_token: idToken,
  }) + '\n');
}

main().catch(error => {
  process.stderr.write(`${error.stack || error}\n`);
  process.exit(1);
});
