//! Asking AWS who signed: the verified GetCallerIdentity request is sent, as Google does, to the
//! endpoint its URL names (in tests, moto), and the caller's ARN and account are read from the
//! XML answer. Also the few XML reads the moto helper needs.
//!
//! The only outgoing AWS call of the doubles. It never logs header values.

use std::time::Duration;

use url::Url;

use crate::attributes::{Assertion, account_of};
use crate::subject::CheckedRequest;

/// Why AWS did not confirm the caller.
#[derive(Debug)]
pub(crate) enum AwsError {
    /// AWS answered, but not 200: HTTP status, AWS error code and message when it said them.
    Rejected {
        status: u16,
        code: String,
        message: String,
    },
    /// AWS could not be reached.
    Unreachable(String),
    /// A 200 whose body has no `<Arn>`.
    Unreadable,
}

/// Where the call for `url` goes: its own origin, or the base URL a route names for it.
fn destination(url: &Url, routes: &[(String, String)]) -> String {
    let origin = url.origin().ascii_serialization();
    let route = routes.iter().find(|(from, _)| {
        Url::parse(from).is_ok_and(|f| f.origin().ascii_serialization() == origin)
    });
    match route {
        Some((_, to)) => {
            let mut routed = format!("{}{}", to.trim_end_matches('/'), url.path());
            if let Some(query) = url.query() {
                routed.push('?');
                routed.push_str(query);
            }
            routed
        }
        None => url.to_string(),
    }
}

/// Sends `request` (all its headers but `host`, which the URL sets; empty body) to AWS, or where
/// `routes` send its origin, and returns the caller AWS reports.
pub(crate) async fn get_caller_identity(
    http: &reqwest::Client,
    request: &CheckedRequest,
    routes: &[(String, String)],
) -> Result<Assertion, AwsError> {
    let mut outgoing = http
        .post(destination(&request.url, routes))
        .timeout(Duration::from_secs(10))
        .body(Vec::new());
    for (key, value) in &request.headers {
        if key.eq_ignore_ascii_case("host") || key.eq_ignore_ascii_case("content-length") {
            continue;
        }
        outgoing = outgoing.header(key.as_str(), value.as_str());
    }
    let response = outgoing
        .send()
        .await
        .map_err(|e| AwsError::Unreachable(e.without_url().to_string()))?;
    let status = response.status();
    let body = response
        .text()
        .await
        .map_err(|e| AwsError::Unreachable(e.without_url().to_string()))?;
    if status.as_u16() != 200 {
        return Err(AwsError::Rejected {
            status: status.as_u16(),
            code: xml_text(&body, "Code").unwrap_or_else(|| "Unknown".to_owned()),
            message: xml_text(&body, "Message").unwrap_or_default(),
        });
    }
    let arn = xml_text(&body, "Arn").ok_or(AwsError::Unreadable)?;
    let account = xml_text(&body, "Account")
        .or_else(|| account_of(&arn).map(str::to_owned))
        .unwrap_or_default();
    Ok(Assertion { arn, account })
}

/// The text of the first `<tag>…</tag>` element in `xml`, entities decoded. Enough for AWS's
/// flat query-protocol answers; not a general XML parser.
pub(crate) fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)? + open.len();
    let len = xml[start..].find(&close)?;
    Some(
        xml[start..start + len]
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_replace_the_origin_only() {
        let url = Url::parse(
            "https://sts.us-east-1.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15",
        )
        .unwrap();
        let routes = vec![(
            "https://sts.us-east-1.amazonaws.com".to_owned(),
            "http://127.0.0.1:5000/".to_owned(),
        )];
        assert_eq!(
            destination(&url, &routes),
            "http://127.0.0.1:5000/?Action=GetCallerIdentity&Version=2011-06-15"
        );
        assert_eq!(destination(&url, &[]), url.to_string());
    }

    #[test]
    fn reads_get_caller_identity() {
        let xml = r#"<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><GetCallerIdentityResult><UserId>AROA:ns-a</UserId><Account>123456789012</Account><Arn>arn:aws:sts::123456789012:assumed-role/demo/ns-a</Arn></GetCallerIdentityResult></GetCallerIdentityResponse>"#;
        assert_eq!(
            xml_text(xml, "Arn").as_deref(),
            Some("arn:aws:sts::123456789012:assumed-role/demo/ns-a")
        );
        assert_eq!(xml_text(xml, "Account").as_deref(), Some("123456789012"));
        assert_eq!(xml_text(xml, "Missing"), None);
        assert_eq!(
            xml_text("<a>x &amp;amp; y</a>", "a").as_deref(),
            Some("x &amp; y")
        );
    }
}
