//! HMAC-SHA256 message signatures, as jupyter_client computes them.
//!
//! The signature is the lower-case hex digest of HMAC-SHA256, keyed by the connection's key, over
//! the header, parent header, metadata and content frames in that order. Buffers are not signed.
//! An empty key means the link is unsigned: the signature frame is empty and is not checked.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Signs and verifies messages for one key. Cloning is cheap enough to keep one per socket task.
#[derive(Clone)]
pub struct Signer {
    /// The keyed MAC state, cloned for each message so the key schedule runs once.
    mac: Option<HmacSha256>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("Signer")
            .field("signed", &self.mac.is_some())
            .finish()
    }
}

impl Signer {
    /// A signer for `key`; an empty key gives an unsigned link.
    pub fn new(key: &[u8]) -> Self {
        let mac = if key.is_empty() {
            None
        } else {
            // HMAC accepts keys of any length, so this cannot fail.
            HmacSha256::new_from_slice(key).ok()
        };
        Signer { mac }
    }

    /// Whether messages on this link carry signatures.
    pub fn is_signed(&self) -> bool {
        self.mac.is_some()
    }

    /// The hex signature of the four JSON frames (empty for an unsigned link).
    pub fn sign(&self, parts: [&[u8]; 4]) -> String {
        match &self.mac {
            None => String::new(),
            Some(mac) => hex::encode(Self::digest(mac, parts)),
        }
    }

    /// Whether `signature` is the right one for `parts`, compared in constant time.
    pub fn verify(&self, signature: &[u8], parts: [&[u8]; 4]) -> bool {
        match &self.mac {
            None => true,
            Some(mac) => {
                let mut expected = [0u8; 64];
                let digest = Self::digest(mac, parts);
                if hex::encode_to_slice(digest, &mut expected).is_err() {
                    return false;
                }
                signature.len() == expected.len() && bool::from(signature.ct_eq(&expected))
            }
        }
    }

    fn digest(mac: &HmacSha256, parts: [&[u8]; 4]) -> [u8; 32] {
        let mut mac = mac.clone();
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The digest Python's `hmac.new(b"key", b"abcd", hashlib.sha256).hexdigest()` gives: the
    /// four parts are fed to one MAC in order, with nothing between them.
    const KEY_ABCD: &str = "2a31ec0ee8d878c9eece9fb0df79b3b90b2256240163aa5ee50d176d3d1121f8";

    #[test]
    fn matches_python_hmac() {
        let signer = Signer::new(b"key");
        assert_eq!(signer.sign([b"a", b"b", b"c", b"d"]), KEY_ABCD);
        assert!(signer.verify(KEY_ABCD.as_bytes(), [b"ab", b"", b"cd", b""]));
    }

    #[test]
    fn rejects_wrong_or_truncated_signatures() {
        let signer = Signer::new(b"key");
        assert!(!signer.verify(&KEY_ABCD.as_bytes()[..63], [b"a", b"b", b"c", b"d"]));
        assert!(!signer.verify(KEY_ABCD.as_bytes(), [b"a", b"b", b"c", b"e"]));
        assert!(!signer.verify(b"", [b"a", b"b", b"c", b"d"]));
        assert!(!Signer::new(b"other").verify(KEY_ABCD.as_bytes(), [b"a", b"b", b"c", b"d"]));
    }

    #[test]
    fn empty_key_is_unsigned() {
        let signer = Signer::new(b"");
        assert!(!signer.is_signed());
        assert_eq!(signer.sign([b"a", b"b", b"c", b"d"]), "");
        assert!(signer.verify(b"anything", [b"a", b"b", b"c", b"d"]));
    }
}
