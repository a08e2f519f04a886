//! X25519 for the Noise handshake from aws-lc-rs (the library rustls already links), in place
//! of snow's default (curve25519-dalek): the handshake's Diffie-Hellman is most of the channel's
//! cost, and aws-lc's is about 1.6 times faster on the machines measured. aws-lc also refuses a
//! low-order peer key (an all-zero shared secret), which fails the handshake. Everything else
//! is snow's: ChaChaPoly from ring, BLAKE2s from the default resolver.

use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey, X25519};
use snow::params::DHChoice;
use snow::resolvers::{CryptoResolver, DefaultResolver, FallbackResolver, RingResolver};
use snow::types::{Cipher, Dh, Hash, Random};

const LEN: usize = 32;

/// Resolves X25519 to aws-lc and everything else to ring, then snow's defaults.
pub fn resolver() -> Box<dyn CryptoResolver + Send> {
    Box::new(FallbackResolver::new(
        Box::new(AwsLc),
        Box::new(FallbackResolver::new(
            Box::new(RingResolver),
            Box::new(DefaultResolver),
        )),
    ))
}

/// Offers only X25519.
struct AwsLc;

impl CryptoResolver for AwsLc {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        None
    }
    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        match choice {
            DHChoice::Curve25519 => Some(Box::new(Key::default())),
            _ => None,
        }
    }
    fn resolve_hash(&self, _: &snow::params::HashChoice) -> Option<Box<dyn Hash>> {
        None
    }
    fn resolve_cipher(&self, _: &snow::params::CipherChoice) -> Option<Box<dyn Cipher>> {
        None
    }
}

/// One X25519 key pair.
#[derive(Default)]
struct Key {
    private: [u8; LEN],
    public: [u8; LEN],
    key: Option<PrivateKey>,
}

impl Drop for Key {
    fn drop(&mut self) {
        // Best effort; aws-lc zeroes its own copy.
        self.private = [0; LEN];
    }
}

impl Dh for Key {
    fn name(&self) -> &'static str {
        "25519"
    }
    fn pub_len(&self) -> usize {
        LEN
    }
    fn priv_len(&self) -> usize {
        LEN
    }
    fn set(&mut self, privkey: &[u8]) {
        let mut private = [0u8; LEN];
        if let Some(src) = privkey.get(..LEN) {
            private.copy_from_slice(src);
        }
        self.private = private;
        self.key = PrivateKey::from_private_key(&X25519, &private).ok();
        self.public = [0; LEN];
        if let Some(public) = self.key.as_ref().and_then(|k| k.compute_public_key().ok())
            && let Some(dst) = public.as_ref().get(..LEN)
        {
            self.public.copy_from_slice(dst);
        }
    }
    fn generate(&mut self, rng: &mut dyn Random) -> Result<(), snow::Error> {
        let mut private = [0u8; LEN];
        rng.try_fill_bytes(&mut private)?;
        self.set(&private);
        private = [0; LEN];
        let _ = private;
        if self.key.is_none() {
            return Err(snow::Error::Dh);
        }
        Ok(())
    }
    fn pubkey(&self) -> &[u8] {
        &self.public
    }
    fn privkey(&self) -> &[u8] {
        &self.private
    }
    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        let key = self.key.as_ref().ok_or(snow::Error::Dh)?;
        // snow hands over its whole key buffer (56 bytes); the key is the first 32.
        let pubkey = pubkey.get(..LEN).ok_or(snow::Error::Dh)?;
        let peer = UnparsedPublicKey::new(&X25519, pubkey);
        agreement::agree(key, peer, snow::Error::Dh, |secret| {
            let dst = out.get_mut(..secret.len()).ok_or(snow::Error::Dh)?;
            dst.copy_from_slice(secret);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOISE: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";

    /// A handshake and a transport message between `a` (initiator) and `b`.
    fn handshake(a: snow::Builder<'_>, b: snow::Builder<'_>) -> Result<Vec<u8>, snow::Error> {
        let psk = [9u8; 32];
        let mut i = a.psk(0, &psk)?.build_initiator()?;
        let mut r = b.psk(0, &psk)?.build_responder()?;
        let (mut buf, mut out) = (vec![0u8; 1024], vec![0u8; 1024]);
        let n = i.write_message(b"one", &mut buf)?;
        r.read_message(buf.get(..n).unwrap_or_default(), &mut out)?;
        let n = r.write_message(b"two", &mut buf)?;
        i.read_message(buf.get(..n).unwrap_or_default(), &mut out)?;
        let (mut i, mut r) = (i.into_transport_mode()?, r.into_transport_mode()?);
        let n = i.write_message(b"payload", &mut buf)?;
        let m = r.read_message(buf.get(..n).unwrap_or_default(), &mut out)?;
        Ok(out.get(..m).unwrap_or_default().to_vec())
    }

    #[test]
    fn interoperates_with_snows_own_x25519_both_ways() {
        let ours = || snow::Builder::with_resolver(NOISE.parse().unwrap(), resolver());
        let theirs = || snow::Builder::with_resolver(NOISE.parse().unwrap(), Box::new(DefaultResolver));
        assert_eq!(handshake(ours(), theirs()).unwrap(), b"payload");
        assert_eq!(handshake(theirs(), ours()).unwrap(), b"payload");
        assert_eq!(handshake(ours(), ours()).unwrap(), b"payload");
    }

    #[test]
    fn a_low_order_peer_key_is_refused() {
        let mut k = Key::default();
        k.set(&[7u8; LEN]);
        let mut out = [0u8; LEN];
        assert!(
            k.dh(&[0u8; LEN], &mut out).is_err(),
            "the all-zero point gives no shared secret"
        );
        assert!(k.dh(&[1u8; 5], &mut out).is_err(), "a short key is refused");
    }
}
