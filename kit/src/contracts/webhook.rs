//! The card processor's webhook signatures, Stripe style: `Psp-Signature: t=<unix seconds>,
//! v1=<hex HMAC-SHA256>` over `"<t>.<body>"`.
//!
//! A wire contract like the events: the processor (psp-mock, or a real one speaking the same
//! scheme) signs every webhook it sends, and the payment service verifies it before trusting a
//! word of it. It lives with the contracts so the payment service depends on no processor.
//!
//! The timestamp is inside the signed text so a captured request cannot be replayed later with
//! a fresh header: the receiver refuses timestamps outside its tolerance window.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

/// What the shared secret is, for the message naming it when it is missing.
pub const SECRET_WHAT: &str =
    "the HMAC key of webhook signatures, shared by the card processor and the payment service";

/// The header that carries the signature.
pub const HEADER: &str = "Psp-Signature";

type HmacSha256 = Hmac<Sha256>;

/// Why a signature was refused. A receiver answers 401 for every one of them; the variants exist
/// so its log says which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureError {
    /// The header is not `t=<integer>,v1=<hex>[,...]`.
    Malformed,
    /// No `v1` signature matches the body under this secret.
    Mismatch,
    /// Signed longer ago than the tolerance: possibly a replay.
    TooOld,
    /// Signed further in the future than the tolerance: a wrong clock or a forgery.
    TooNew,
}

impl fmt::Display for SignatureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SignatureError::Malformed => "the signature header is malformed",
            SignatureError::Mismatch => "the signature does not match the body",
            SignatureError::TooOld => "the signature timestamp is too old",
            SignatureError::TooNew => "the signature timestamp is too far in the future",
        })
    }
}

impl std::error::Error for SignatureError {}

#[expect(clippy::expect_used, reason = "HMAC takes keys of any length")]
fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any size");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The header value for `body` sent at `timestamp` (Unix seconds).
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let tag = mac(secret, timestamp, body).finalize().into_bytes();
    format!("t={timestamp},v1={}", hex::encode(tag))
}

/// Checks a header against the body it came with.
///
/// Several `v1` entries are allowed (a sender rotating its secret signs with both); one match is
/// enough. Unknown schemes are ignored so the sender can add one without breaking receivers.
/// The comparison is constant-time, so timing does not leak how much of a guess was right.
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now_unix: i64,
    tolerance_secs: i64,
) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        let (k, v) = part
            .trim()
            .split_once('=')
            .ok_or(SignatureError::Malformed)?;
        match k.trim() {
            "t" => {
                if timestamp.is_some() {
                    return Err(SignatureError::Malformed);
                }
                let t: i64 = v.trim().parse().map_err(|_| SignatureError::Malformed)?;
                timestamp = Some(t);
            }
            "v1" => candidates.push(hex::decode(v.trim()).map_err(|_| SignatureError::Malformed)?),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if candidates.is_empty() {
        return Err(SignatureError::Malformed);
    }
    let expected = mac(secret, timestamp, body);
    if !candidates
        .iter()
        .any(|c| expected.clone().verify_slice(c).is_ok())
    {
        return Err(SignatureError::Mismatch);
    }
    // Only a genuine signature gets its age judged, so "too old" always means "authentic but
    // late", which is worth telling apart from a forgery in a log.
    let tolerance = tolerance_secs.max(0);
    let age = i128::from(now_unix) - i128::from(timestamp);
    if age > i128::from(tolerance) {
        return Err(SignatureError::TooOld);
    }
    if -age > i128::from(tolerance) {
        return Err(SignatureError::TooNew);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"whsec_test";
    const BODY: &[u8] = br#"{"id":"evt_1","type":"payment.succeeded"}"#;
    const NOW: i64 = 1_700_000_000;

    #[test]
    fn a_signed_body_verifies() {
        let h = sign(SECRET, NOW, BODY);
        assert!(h.starts_with("t=1700000000,v1="), "{h}");
        assert_eq!(h.len(), "t=1700000000,v1=".len() + 64);
        assert_eq!(verify(SECRET, &h, BODY, NOW, 300), Ok(()));
    }

    #[test]
    fn matches_an_independently_computed_hmac() {
        // HMAC-SHA256(key="key", "1.x"), computed with `openssl dgst -sha256 -hmac key`.
        let h = sign(b"key", 1, b"x");
        assert_eq!(
            h,
            "t=1,v1=fc4913c41a7bf793267e2a384f3261c9436ec2cd097bd745e7b0d99113f510ec"
        );
    }

    #[test]
    fn a_tampered_body_is_refused() {
        let h = sign(SECRET, NOW, BODY);
        let tampered = br#"{"id":"evt_1","type":"payment.failed"}"#;
        assert_eq!(
            verify(SECRET, &h, tampered, NOW, 300),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn a_wrong_secret_is_refused() {
        let h = sign(b"another secret", NOW, BODY);
        assert_eq!(
            verify(SECRET, &h, BODY, NOW, 300),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn a_changed_timestamp_breaks_the_signature() {
        let h = sign(SECRET, NOW, BODY);
        let moved = h.replace("t=1700000000", "t=1700000001");
        assert_eq!(
            verify(SECRET, &moved, BODY, NOW, 300),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn the_tolerance_window_is_inclusive_on_both_sides() {
        let h = sign(SECRET, NOW, BODY);
        assert_eq!(verify(SECRET, &h, BODY, NOW + 300, 300), Ok(()));
        assert_eq!(verify(SECRET, &h, BODY, NOW - 300, 300), Ok(()));
        assert_eq!(
            verify(SECRET, &h, BODY, NOW + 301, 300),
            Err(SignatureError::TooOld)
        );
        assert_eq!(
            verify(SECRET, &h, BODY, NOW - 301, 300),
            Err(SignatureError::TooNew)
        );
    }

    #[test]
    fn extreme_timestamps_do_not_overflow() {
        for t in [i64::MIN, i64::MAX] {
            let h = sign(SECRET, t, BODY);
            let r = verify(SECRET, &h, BODY, NOW, 300);
            assert!(
                matches!(r, Err(SignatureError::TooOld | SignatureError::TooNew)),
                "{t}: {r:?}"
            );
        }
    }

    #[test]
    fn any_matching_v1_is_enough_and_unknown_schemes_are_ignored() {
        let good = sign(SECRET, NOW, BODY);
        let good_v1 = good.split_once(",v1=").unwrap().1;
        let header = format!("t={NOW}, v0=abcd, v1={}, v1={good_v1}", "00".repeat(32));
        assert_eq!(verify(SECRET, &header, BODY, NOW, 300), Ok(()));
    }

    #[test]
    fn malformed_headers_are_refused() {
        let sig = "ab".repeat(32);
        for h in [
            String::new(),
            "garbage".into(),
            format!("v1={sig}"),
            format!("t={NOW}"),
            format!("t=soon,v1={sig}"),
            format!("t={NOW},v1=not-hex"),
            format!("t={NOW},t={NOW},v1={sig}"),
            format!("t={NOW};v1={sig}"),
        ] {
            assert_eq!(
                verify(SECRET, &h, BODY, NOW, 300),
                Err(SignatureError::Malformed),
                "{h:?}"
            );
        }
    }

    #[test]
    fn a_truncated_signature_is_a_mismatch() {
        let h = sign(SECRET, NOW, BODY);
        let short = &h[..h.len() - 2];
        assert_eq!(
            verify(SECRET, short, BODY, NOW, 300),
            Err(SignatureError::Mismatch)
        );
    }
}
