//! Random identifiers from the OS source, as lower-case hex.

/// `bytes` random bytes as `2 * bytes` hex characters.
pub fn hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    getrandom::fill(&mut b).expect("the OS random source works");
    b.iter().map(|x| format!("{x:02x}")).collect()
}
