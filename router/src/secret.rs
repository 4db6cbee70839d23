//! The mesh secret: making a new one, judging whether one is strong enough,
//! and deriving the mesh CA key from it.
//!
//! - A generated secret is [`GENERATED_BYTES`] from the OS RNG in hex
//!   (`meshctl secret`, and what meshd writes into an empty Kubernetes Secret).
//! - A secret is *weak* when its estimated strength ([`estimated_bits`]: its
//!   length times the Shannon entropy of its character frequencies) is below
//!   [`MIN_BITS`]. meshd refuses weak secrets unless told otherwise, and then
//!   only with a mesh id of its own ([`check`]).
//! - The CA key is Argon2id ([`KDF_MEMORY_KIB`], [`KDF_PASSES`], one lane)
//!   over the secret, salted with SHA-256 of a domain and the mesh id. The
//!   cost is paid once per start, not per handshake. Anyone who can reach
//!   the peer port receives a CA-signed certificate and can guess offline;
//!   256 random bits make that hopeless, the mesh id makes a table built for
//!   one weak-password mesh useless against another, and the cost slows
//!   every guess.

use anyhow::{Context, Result, bail};
use rand::TryRngCore;

/// Bytes of OS randomness in a generated secret (written as hex).
pub const GENERATED_BYTES: usize = 32;
/// Below this estimate a secret is weak.
pub const MIN_BITS: f64 = 128.0;
/// Argon2id memory cost (KiB): 64 MiB, well inside meshd's memory limit,
/// briefly, at start.
pub const KDF_MEMORY_KIB: u32 = 64 * 1024;
/// Argon2id passes over that memory.
pub const KDF_PASSES: u32 = 3;
/// Domain of the salt: a new derivation gets a new domain, never a new
/// meaning for an old one.
const SALT_DOMAIN: &[u8] = b"weft/mesh-ca/2";

/// A new secret: [`GENERATED_BYTES`] from the OS, in lower-case hex.
pub fn generate() -> Result<String> {
    let mut bytes = [0u8; GENERATED_BYTES];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .context("no randomness from the OS for the mesh secret")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Length times the Shannon entropy of the character frequencies, in bits.
///
/// An upper bound on what a guesser faces for random text, and close to it
/// for long random strings (64 hex digits score about 245); short,
/// repetitive and ordinary-phrase passwords score far below [`MIN_BITS`]
/// ("correct horse battery staple": about 100). It cannot tell a long
/// sentence from random text: a secret is only as strong as the way it was
/// chosen, so generate one.
pub fn estimated_bits(secret: &str) -> f64 {
    let chars: Vec<char> = secret.chars().collect();
    let n = chars.len() as f64;
    let mut counts = std::collections::HashMap::<char, usize>::new();
    for c in &chars {
        *counts.entry(*c).or_default() += 1;
    }
    let per_char: f64 = counts
        .values()
        .map(|&k| {
            let p = k as f64 / n;
            -p * p.log2()
        })
        .sum();
    n * per_char
}

/// Refuses an empty secret, and a weak one unless `allow_weak`; a weak one
/// allowed also needs a `mesh_id` (a weak secret behind the salt every
/// other mesh uses is the one-table-for-all attack).
pub fn check(secret: &str, allow_weak: bool, mesh_id: &str) -> Result<()> {
    if secret.is_empty() {
        bail!("the mesh secret is empty");
    }
    let bits = estimated_bits(secret);
    if bits >= MIN_BITS {
        return Ok(());
    }
    if !allow_weak {
        bail!(
            "the mesh secret is weak (estimated {bits:.0} bits, at least {MIN_BITS:.0} needed): \
             generate one with `meshctl secret`, or pass --allow-weak-password \
             (WEFT_ALLOW_WEAK_PASSWORD=1) with a --mesh-id of this mesh's own"
        );
    }
    if mesh_id.is_empty() {
        bail!(
            "--allow-weak-password needs --mesh-id (WEFT_MESH_ID): a name only this mesh uses, \
             the same on every router, so that one guessing table does not fit every mesh"
        );
    }
    Ok(())
}

/// The salt of `mesh_id`'s derivation.
fn salt(mesh_id: &str) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(SALT_DOMAIN);
    ctx.update(&[0]);
    ctx.update(mesh_id.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The 32-byte seed of the mesh CA key every holder of `secret` in mesh
/// `mesh_id` derives.
pub fn ca_seed(secret: &str, mesh_id: &str) -> Result<[u8; 32]> {
    if secret.is_empty() {
        bail!("the mesh secret is empty");
    }
    let params = argon2::Params::new(KDF_MEMORY_KIB, KDF_PASSES, 1, Some(32))
        .map_err(|e| anyhow::anyhow!("Argon2 parameters: {e}"))?;
    let kdf = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut seed = [0u8; 32];
    kdf.hash_password_into(secret.as_bytes(), &salt(mesh_id), &mut seed)
        .map_err(|e| anyhow::anyhow!("deriving the mesh CA key: {e}"))?;
    Ok(seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_are_strong_hex_and_differ() {
        let (a, b) = (generate().expect("random"), generate().expect("random"));
        assert_eq!(a.len(), 2 * GENERATED_BYTES);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        for _ in 0..200 {
            let s = generate().expect("random");
            assert!(estimated_bits(&s) > 200.0, "{s}: {}", estimated_bits(&s));
            check(&s, false, "").expect("a generated secret is strong");
        }
    }

    #[test]
    fn short_repetitive_and_phrase_passwords_are_weak() {
        for weak in [
            "s3cret",
            "correct horse battery staple",
            "the user's own mesh password",
            &"a".repeat(200),
            &"ab".repeat(60),
        ] {
            assert!(estimated_bits(weak) < MIN_BITS, "{weak}");
            let err = format!("{:#}", check(weak, false, "").expect_err("weak"));
            assert!(
                err.contains("weak") && err.contains("meshctl secret"),
                "{err}"
            );
            let err = format!("{:#}", check(weak, true, "").expect_err("no mesh id"));
            assert!(err.contains("--mesh-id"), "{err}");
            check(weak, true, "prod-eu-1").expect("allowed, with a mesh id");
        }
        assert!(check("", true, "m").is_err());
        assert!(ca_seed("", "m").is_err());
    }

    #[test]
    fn the_seed_depends_on_secret_and_mesh_id() {
        let a = ca_seed("s3cret", "").expect("seed");
        assert_eq!(a, ca_seed("s3cret", "").expect("seed"));
        assert_ne!(a, ca_seed("other", "").expect("seed"));
        assert_ne!(a, ca_seed("s3cret", "mesh-b").expect("seed"));
    }
}
