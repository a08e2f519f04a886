//! Random identifiers from the OS source, as lower-case hex.

/// `bytes` random bytes as `2 * bytes` hex characters; an error when the OS has no random source.
pub fn hex(bytes: usize) -> std::io::Result<String> {
    let mut b = vec![0u8; bytes];
    getrandom::fill(&mut b)
        .map_err(|e| std::io::Error::other(format!("the OS random source failed: {e}")))?;
    Ok(hex::encode(b))
}
