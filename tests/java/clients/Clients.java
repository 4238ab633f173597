// Java's google-auth-library-oauth2-http used as its documentation shows, against whatever
// metadata server the environment names (fedcred's emulator, in tests/clients.rs). Prints one
// JSON object: what application-default credentials found, the API double's answer to a
// request they authorized, and an ID token for the audience.
//
//   java -cp 'DEPS/*' Clients.java API_URL AUDIENCE
import com.google.api.client.http.GenericUrl;
import com.google.api.client.http.HttpResponse;
import com.google.api.client.http.javanet.NetHttpTransport;
import com.google.auth.http.HttpCredentialsAdapter;
import com.google.auth.oauth2.ComputeEngineCredentials;
import com.google.auth.oauth2.GoogleCredentials;
import com.google.auth.oauth2.IdTokenCredentials;
import com.google.auth.oauth2.IdTokenProvider;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

public class Clients {
  public static void main(String[] args) throws Exception {
    if (args.length != 2) {
      throw new IllegalArgumentException("usage: Clients API_URL AUDIENCE");
    }
    String apiUrl = args[0];
    String audience = args[1];
    Map<String, Object> out = new LinkedHashMap<>();

    GoogleCredentials credentials =
        GoogleCredentials.getApplicationDefault()
            .createScoped(List.of("https://www.googleapis.com/auth/cloud-platform"));
    credentials.refreshIfExpired();
    out.put("class", credentials.getClass().getName());
    out.put("token", credentials.getAccessToken().getTokenValue());
    if (credentials instanceof ComputeEngineCredentials) {
      out.put("email", ((ComputeEngineCredentials) credentials).getAccount());
    }

    HttpResponse answer =
        new NetHttpTransport()
            .createRequestFactory(new HttpCredentialsAdapter(credentials))
            .buildGetRequest(new GenericUrl(apiUrl))
            .setThrowExceptionOnExecuteError(false)
            .execute();
    out.put("api_status", answer.getStatusCode());
    out.put("api_body", answer.parseAsString());

    IdTokenCredentials idToken =
        IdTokenCredentials.newBuilder()
            .setIdTokenProvider((IdTokenProvider) GoogleCredentials.getApplicationDefault())
            .setTargetAudience(audience)
            .setOptions(List.of(IdTokenProvider.Option.FORMAT_FULL))
            .build();
    idToken.refresh();
    out.put("id_token", idToken.getIdToken().getTokenValue());

    StringBuilder json = new StringBuilder("{");
    for (Map.Entry<String, Object> e : out.entrySet()) {
      if (json.length() > 1) json.append(',');
      json.append(quote(e.getKey())).append(':');
      Object v = e.getValue();
      json.append(v instanceof Number ? v.toString() : quote(String.valueOf(v)));
    }
    System.out.println(json.append('}'));
  }

  private static String quote(String s) {
    StringBuilder q = new StringBuilder("\"");
    for (char c : s.toCharArray()) {
      if (c == '"' || c == '\\') q.append('\\').append(c);
      else if (c < 0x20) q.append(String.format("\\u%04x", (int) c));
      else q.append(c);
    }
    return q.append('"').toString();
  }
}
