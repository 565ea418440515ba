//! Signing and checking webhook bodies, in one place: HMAC-SHA256 as GitHub,
//! Gitea and Warren's own hook use it, and GitLab's shared token. Every
//! comparison with a secret takes the same time whatever the guess, so a
//! sender cannot learn the secret byte by byte from answer times.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// The HMAC-SHA256 of `body` keyed with `secret`, as lowercase hex.
pub fn hmac_hex(secret: &[u8], body: &[u8]) -> String {
    let mut mac = mac(secret);
    mac.update(body);
    hex(&mac.finalize().into_bytes())
}

/// `sha256=<hex HMAC-SHA256 of body>`: GitHub's `X-Hub-Signature-256` and
/// Warren's `X-Warren-Signature`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    format!("sha256={}", hmac_hex(secret, body))
}

/// Whether `given_hex` (hex digits, either case) is the HMAC-SHA256 of
/// `body` keyed with `secret`. Constant time in the digest compared.
pub fn hmac_matches(secret: &[u8], body: &[u8], given_hex: &str) -> bool {
    let Some(given) = unhex(given_hex.trim()) else {
        return false;
    };
    let mut mac = mac(secret);
    mac.update(body);
    // `verify_slice` compares in constant time (and refuses a wrong length).
    mac.verify_slice(&given).is_ok()
}

/// Whether `given` equals `secret`, in time independent of where they
/// differ and of their lengths: both are hashed first, so only digests of
/// equal length are compared.
pub fn token_matches(secret: &[u8], given: &[u8]) -> bool {
    let secret = Sha256::digest(secret);
    let given = Sha256::digest(given);
    secret.ct_eq(&given).into()
}

fn mac(secret: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length")
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    out
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    text.as_bytes()
        .chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn githubs_documented_vector() {
        // docs.github.com, "Validating webhook deliveries".
        let secret = b"It's a Secret to Everybody";
        let body = b"Hello, World!";
        let expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(sign(secret, body), expected);
        assert!(hmac_matches(secret, body, &expected[7..]));
        assert!(hmac_matches(secret, body, &expected[7..].to_uppercase()));
    }

    #[test]
    fn a_changed_body_key_or_digest_does_not_match() {
        let good = hmac_hex(b"k", b"body");
        assert!(hmac_matches(b"k", b"body", &good));
        assert!(!hmac_matches(b"k", b"body!", &good));
        assert!(!hmac_matches(b"K", b"body", &good));
        let mut flipped = good.clone().into_bytes();
        flipped[63] = if flipped[63] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).expect("ascii");
        assert!(!hmac_matches(b"k", b"body", &flipped));
        for bad in ["", "zz", &good[..62], &format!("{good}00"), "sha256=00"] {
            assert!(!hmac_matches(b"k", b"body", bad), "{bad:?}");
        }
    }

    #[test]
    fn tokens_match_only_exactly() {
        assert!(token_matches(b"s3cret", b"s3cret"));
        for bad in [&b""[..], b"s3cre", b"s3cret ", b"S3cret", b"s3cret\0"] {
            assert!(!token_matches(b"s3cret", bad), "{bad:?}");
        }
    }
}
