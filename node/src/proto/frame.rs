//! Length-prefixed frames: a 4-byte big-endian length, then that many bytes of JSON. A length
//! above [`MAX_FRAME`] is rejected before anything is allocated.

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest frame accepted: 1 MiB.
pub const MAX_FRAME: usize = 1 << 20;

/// A frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer announced a frame larger than the limit.
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    /// The connection ended (possibly mid-frame).
    #[error("connection closed")]
    Closed,
    /// The bytes are not a valid message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// Another I/O error.
    #[error("i/o: {0}")]
    Io(std::io::Error),
}

impl From<std::io::Error> for FrameError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            FrameError::Closed
        } else {
            FrameError::Io(e)
        }
    }
}

/// Reads one frame's bytes.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<u8>, FrameError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    Ok(buf)
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, payload: &[u8]) -> Result<(), FrameError> {
    if payload.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(payload.len()));
    }
    w.write_all(&(payload.len() as u32).to_be_bytes()).await?;
    w.write_all(payload).await?;
    w.flush().await?;
    Ok(())
}

/// Sends a message as a JSON frame.
pub async fn send<W: AsyncWrite + Unpin, T: Serialize>(w: &mut W, msg: &T) -> Result<(), FrameError> {
    let bytes = serde_json::to_vec(msg).map_err(|e| FrameError::Malformed(e.to_string()))?;
    write_frame(w, &bytes).await
}

/// Receives a JSON frame as a message.
pub async fn recv<R: AsyncRead + Unpin, T: DeserializeOwned>(r: &mut R) -> Result<T, FrameError> {
    let bytes = read_frame(r).await?;
    serde_json::from_slice(&bytes).map_err(|e| FrameError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trips_and_rejects_oversized_lengths_without_allocating() {
        let (mut a, mut b) = tokio::io::duplex(64);
        tokio::spawn(async move { send(&mut a, &vec![1u32, 2, 3]).await.unwrap() });
        let v: Vec<u32> = recv(&mut b).await.unwrap();
        assert_eq!(v, [1, 2, 3]);

        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&(2u32 << 30).to_be_bytes()).await.unwrap();
        assert!(matches!(read_frame(&mut b).await, Err(FrameError::TooLarge(n)) if n == 2 << 30));
    }

    #[tokio::test]
    async fn truncated_frames_and_garbage_are_errors() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&10u32.to_be_bytes()).await.unwrap();
        a.write_all(b"abc").await.unwrap();
        drop(a);
        assert!(matches!(read_frame(&mut b).await, Err(FrameError::Closed)));

        let (mut a, mut b) = tokio::io::duplex(64);
        write_frame(&mut a, b"\xff\x00garbage").await.unwrap();
        assert!(matches!(
            recv::<_, u32>(&mut b).await,
            Err(FrameError::Malformed(_))
        ));
    }
}
