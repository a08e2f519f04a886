//! Random identifiers from the OS source, as lower-case hex.

/// `bytes` random bytes as `2 * bytes` hex characters; an error when the OS has no random source.
pub fn hex(bytes: usize) -> std::io::Result<String> {
    let mut b = vec![0u8; bytes];
    getrandom::fill(&mut b)
        .map_err(|e| std::io::Error::other(format!("the OS random source failed: {e}")))?;
    Ok(hex::encode(b))
}

/// A random non-zero 64-bit id (0 marks "none yet" in persisted state).
pub fn nonzero_u64() -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b)
        .map_err(|e| std::io::Error::other(format!("the OS random source failed: {e}")))?;
    Ok(u64::from_le_bytes(b).max(1))
}
