//! Hex and percent-encoding, written once for every place that needs them: digests in names
//! and hashes, the SigV4 canonical request, the subject token and the Google STS form.
//!
//! Each exchange percent-encodes a signed request of a few kilobytes twice (the subject token,
//! then the form that carries it); these encoders append to one buffer sized up front, with a
//! table lookup per byte, instead of formatting each escape on its own.

const HEX_LOWER: &[u8; 16] = b"0123456789abcdef";
const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// `bytes` as lowercase hex, two digits a byte.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(HEX_LOWER[usize::from(b >> 4)] as char);
        out.push(HEX_LOWER[usize::from(b & 0x0f)] as char);
    }
    out
}

/// Which bytes pass unescaped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Escape {
    /// RFC 3986 unreserved characters (`A-Z a-z 0-9 - _ . ~`) pass; everything else is `%XX`.
    /// What SigV4 asks for, and how Google's clients encode the subject token.
    Unreserved,
    /// The same, with `/` passing too (SigV4 canonical paths).
    UnreservedAndSlash,
    /// `application/x-www-form-urlencoded` as the WHATWG URL standard serialises it:
    /// `A-Z a-z 0-9 * - . _` pass, a space is `+`, everything else is `%XX`.
    Form,
}

impl Escape {
    fn passes(self, b: u8) -> bool {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => true,
            b'~' => self != Escape::Form,
            b'/' => self == Escape::UnreservedAndSlash,
            b'*' => self == Escape::Form,
            _ => false,
        }
    }
}

/// `text` percent-encoded (upper-case `%XX`, byte by byte of its UTF-8) under `escape`.
pub fn percent_encode(text: &str, escape: Escape) -> String {
    let mut out = String::with_capacity(encoded_len(text, escape));
    percent_encode_into(&mut out, text, escape);
    out
}

/// Appends `text`, percent-encoded under `escape`, to `out`.
fn percent_encode_into(out: &mut String, text: &str, escape: Escape) {
    // Runs of passing bytes are copied at once. Only ASCII bytes pass, so a non-empty run
    // starts and ends on character boundaries and is a `str` slice.
    let mut run = 0;
    for (i, b) in text.bytes().enumerate() {
        if escape.passes(b) {
            continue;
        }
        if run < i {
            out.push_str(&text[run..i]);
        }
        if b == b' ' && escape == Escape::Form {
            out.push('+');
        } else {
            out.push('%');
            out.push(HEX_UPPER[usize::from(b >> 4)] as char);
            out.push(HEX_UPPER[usize::from(b & 0x0f)] as char);
        }
        run = i + 1;
    }
    if run < text.len() {
        out.push_str(&text[run..]);
    }
}

/// The length of `text` once encoded, to size buffers exactly.
fn encoded_len(text: &str, escape: Escape) -> usize {
    text.bytes()
        .map(|b| {
            if escape.passes(b) || (b == b' ' && escape == Escape::Form) {
                1
            } else {
                3
            }
        })
        .sum()
}

/// `pairs` as an `application/x-www-form-urlencoded` body: `name=value` joined by `&`, both
/// encoded as [`Escape::Form`].
pub fn form(pairs: &[(&str, &str)]) -> String {
    let len = pairs
        .iter()
        .map(|(k, v)| encoded_len(k, Escape::Form) + encoded_len(v, Escape::Form) + 2)
        .sum();
    let mut out = String::with_capacity(len);
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        percent_encode_into(&mut out, name, Escape::Form);
        out.push('=');
        percent_encode_into(&mut out, value, Escape::Form);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

    /// Every byte class: unreserved, reserved, space, `~` and `*`, `%`, `+`, multi-byte UTF-8.
    const SAMPLES: &[&str] = &[
        "",
        "plain-Text_0.9",
        "a b  c",
        "~*+%/?&=#:@!$'(),;[]\"<>\\^`{|}",
        "é ü 日本 🙂",
        "%2F already%20encoded",
        "\u{0}\u{1f}\u{7f}",
        "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/a",
    ];

    #[test]
    fn hex_is_two_lowercase_digits_a_byte() {
        assert_eq!(hex(&[]), "");
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        let all: Vec<u8> = (0..=255).collect();
        let expected: String = all.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex(&all), expected);
    }

    #[test]
    fn unreserved_matches_the_percent_encoding_crate() {
        const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
            .remove(b'-')
            .remove(b'_')
            .remove(b'.')
            .remove(b'~');
        for text in SAMPLES {
            let expected = utf8_percent_encode(text, UNRESERVED).to_string();
            assert_eq!(
                percent_encode(text, Escape::Unreserved),
                expected,
                "{text:?}"
            );
            assert_eq!(encoded_len(text, Escape::Unreserved), expected.len());
        }
    }

    #[test]
    fn slash_passes_only_when_asked() {
        assert_eq!(
            percent_encode("/a b/c", Escape::UnreservedAndSlash),
            "/a%20b/c"
        );
        assert_eq!(percent_encode("/a b/c", Escape::Unreserved), "%2Fa%20b%2Fc");
    }

    #[test]
    fn form_matches_the_url_crates_form_serializer() {
        for (i, text) in SAMPLES.iter().enumerate() {
            let name = SAMPLES[(i + 3) % SAMPLES.len()];
            let expected = url::form_urlencoded::Serializer::new(String::new())
                .append_pair(name, text)
                .append_pair("k", "v w")
                .finish();
            assert_eq!(form(&[(name, text), ("k", "v w")]), expected, "{text:?}");
        }
        assert_eq!(form(&[]), "");
        assert_eq!(percent_encode("a b~*", Escape::Form), "a+b%7E*");
        assert_eq!(encoded_len("a b~*", Escape::Form), "a+b%7E*".len());
    }

    #[test]
    fn every_single_byte_character_round_trips() {
        for c in (0u8..=127).map(char::from) {
            let text = format!("x{c}y");
            for escape in [Escape::Unreserved, Escape::UnreservedAndSlash, Escape::Form] {
                let encoded = percent_encode(&text, escape);
                let plus_decoded = if escape == Escape::Form {
                    encoded.replace('+', " ")
                } else {
                    encoded.clone()
                };
                let decoded = percent_encoding::percent_decode_str(&plus_decoded)
                    .decode_utf8()
                    .unwrap();
                assert_eq!(decoded, text, "{escape:?} {encoded:?}");
            }
        }
    }
}
