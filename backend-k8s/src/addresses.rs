//! Pod addresses read through the API, kept for [`FRESH_FOR`]: a node opens a connection to
//! each peer for every probe, push and ping, and reading the pod each time cost a crowd of 25
//! pods about 3,000 API reads in its first two seconds. A second is short next to a pod's
//! restart, so a restarted pod's new address is still used almost at once (a DNS answer may be
//! cached for its TTL, typically 30 s). Reads are taken in turns, a few at a time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How long an address read from the API is reused.
pub const FRESH_FOR: Duration = Duration::from_secs(1);

/// How many pods are read at once: the reads of a round reuse a few kept-alive connections
/// (each new one to the API server costs a TLS handshake on both sides), and a read that waited
/// finds what an earlier one kept.
const READS_AT_ONCE: usize = 4;

/// Addresses by pod name, with when they were read.
#[derive(Debug)]
pub struct PodAddresses {
    read: Mutex<HashMap<String, (Instant, Vec<IpAddr>)>>,
    reading: tokio::sync::Semaphore,
}

impl Default for PodAddresses {
    fn default() -> Self {
        PodAddresses {
            read: Mutex::default(),
            reading: tokio::sync::Semaphore::new(READS_AT_ONCE),
        }
    }
}

impl PodAddresses {
    /// A turn to read a pod (at most [`READS_AT_ONCE`] at a time); check [`PodAddresses::fresh`]
    /// again once it is granted.
    pub async fn turn(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.reading.acquire().await.ok()
    }

    /// The addresses of `pod` read less than [`FRESH_FOR`] ago.
    pub fn fresh(&self, pod: &str) -> Option<Vec<IpAddr>> {
        let read = self.read.lock().unwrap_or_else(|e| e.into_inner());
        read.get(pod)
            .filter(|(at, _)| at.elapsed() < FRESH_FOR)
            .map(|(_, ips)| ips.clone())
    }

    /// Keeps what was just read for `pod`.
    pub fn keep(&self, pod: &str, ips: &[IpAddr]) {
        let mut read = self.read.lock().unwrap_or_else(|e| e.into_inner());
        read.retain(|_, (at, _)| at.elapsed() < FRESH_FOR);
        read.insert(pod.to_string(), (Instant::now(), ips.to_vec()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_address_is_reused_for_a_second_and_read_again_after() {
        let cache = PodAddresses::default();
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        assert_eq!(cache.fresh("muster-1"), None);
        cache.keep("muster-1", &[ip]);
        assert_eq!(cache.fresh("muster-1"), Some(vec![ip]));
        assert_eq!(cache.fresh("muster-2"), None);
        tokio::time::advance(FRESH_FOR).await;
        assert_eq!(cache.fresh("muster-1"), None, "stale after FRESH_FOR");
    }
}
