//! Many small blobs in one answer (`POST /api/v1/replica/blobs`), so an `immediate` replica
//! pays one request, not thousands, for the `.deb`s of a promotion: per blob, a request's
//! headers (~600 bytes) and a round trip cost more than a small package's transfer.
//!
//! The answer is a run of frames, one per blob the parent holds, in the order asked:
//!
//! ```text
//! <sha256 hex> <size>\n<size bytes>
//! ```
//!
//! A parent leaves out what it does not hold (or holds only upstream), and blobs larger than
//! [`BATCH_MAX_BLOB_SIZE`]; the replica fetches whatever did not arrive one by one. Nothing in
//! a frame is trusted: a frame for a blob that was not asked for, or of another size, ends the
//! read, and every blob is checked against its digest before it is stored.

use crate::protocol::{BlobBatch, BATCH_MAX_BLOBS, BATCH_MAX_BLOB_SIZE};
use aptgate_channels::api::ApiError;
use aptgate_channels::manifest::BlobRef;
use aptgate_mirror::{Sha256, Store};
use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{Buf, Bytes, BytesMut};
use futures::StreamExt as _;
use std::collections::HashMap;

/// The longest frame header: 64 hex digits, a space, a size, a newline.
const MAX_HEADER: usize = 64 + 1 + 20 + 1;

/// The parent's answer to a [`BlobBatch`]: the frames of what `store` holds, streamed.
pub fn respond(store: Store, batch: BlobBatch) -> Response {
    if batch.blobs.len() > BATCH_MAX_BLOBS {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!(
                "{} blobs asked for; a batch holds at most {BATCH_MAX_BLOBS}",
                batch.blobs.len()
            ),
        )
        .into_response();
    }
    let frames = futures::stream::iter(batch.blobs)
        .then(move |blob| frame(store.clone(), blob))
        .filter_map(|frame| async move { frame.map(Ok::<_, std::io::Error>) });
    (
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from_stream(frames),
    )
        .into_response()
}

/// One blob's frame, or nothing if it is not here as asked.
async fn frame(store: Store, blob: BlobRef) -> Option<Bytes> {
    if blob.size > BATCH_MAX_BLOB_SIZE || !store.contains(&blob.sha256) {
        return None;
    }
    // Gone since (a collection) or another size: left to the single-blob route.
    let bytes = store.read(&blob.sha256).await.ok()?;
    if bytes.len() as u64 != blob.size {
        return None;
    }
    let head = format!("{} {}\n", blob.sha256.to_hex(), blob.size);
    let mut out = Vec::with_capacity(head.len() + bytes.len());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(&bytes);
    Some(out.into())
}

/// Why a batch answer stopped being read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("a frame header is not `<sha256> <size>`: {0:?}")]
    Header(String),
    #[error("a frame for {0}, which was not asked for (or came twice)")]
    Unasked(Sha256),
    #[error("a frame of {got} bytes for {digest}, asked for with {asked}")]
    Size {
        digest: Sha256,
        asked: u64,
        got: u64,
    },
}

/// Splits the bytes of a batch answer into frames as they arrive; accepts only blobs that
/// were asked for, each once, at the size asked.
pub struct FrameReader {
    buffer: BytesMut,
    asked: HashMap<Sha256, u64>,
    /// The frame being read: its digest and size, once its header is through.
    current: Option<(Sha256, u64)>,
}

impl FrameReader {
    pub fn new(asked: &[BlobRef]) -> FrameReader {
        FrameReader {
            buffer: BytesMut::new(),
            asked: asked.iter().map(|b| (b.sha256, b.size)).collect(),
            current: None,
        }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        self.buffer.extend_from_slice(chunk);
    }

    /// The next whole frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<(Sha256, Bytes)>, FrameError> {
        if self.current.is_none() {
            let Some(end) = self
                .buffer
                .iter()
                .take(MAX_HEADER)
                .position(|&b| b == b'\n')
            else {
                if self.buffer.len() >= MAX_HEADER {
                    return Err(FrameError::Header(
                        String::from_utf8_lossy(&self.buffer[..MAX_HEADER]).into_owned(),
                    ));
                }
                return Ok(None);
            };
            let line = self.buffer.split_to(end + 1);
            let text = String::from_utf8_lossy(&line[..end]).into_owned();
            let (hex, size) = text
                .split_once(' ')
                .ok_or_else(|| FrameError::Header(text.clone()))?;
            let digest = Sha256::from_hex(hex).map_err(|_| FrameError::Header(text.clone()))?;
            let got: u64 = size.parse().map_err(|_| FrameError::Header(text.clone()))?;
            let asked = self
                .asked
                .remove(&digest)
                .ok_or(FrameError::Unasked(digest))?;
            if got != asked {
                return Err(FrameError::Size { digest, asked, got });
            }
            self.current = Some((digest, got));
        }
        let (digest, size) = self.current.expect("a header was read");
        if (self.buffer.len() as u64) < size {
            return Ok(None);
        }
        self.current = None;
        let body = self.buffer.split_to(size as usize).freeze();
        Ok(Some((digest, body)))
    }

    /// Whether the bytes so far end exactly at a frame's end.
    pub fn at_boundary(&self) -> bool {
        self.current.is_none() && !self.buffer.has_remaining()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(bytes: &[u8]) -> BlobRef {
        BlobRef {
            sha256: Sha256::of(bytes),
            size: bytes.len() as u64,
        }
    }

    fn framed(bytes: &[u8]) -> Vec<u8> {
        let mut out = format!("{} {}\n", Sha256::of(bytes).to_hex(), bytes.len()).into_bytes();
        out.extend_from_slice(bytes);
        out
    }

    #[test]
    fn frames_split_anywhere_are_read_whole_and_in_order() {
        let (a, b) = (b"first blob".as_slice(), b"".as_slice());
        let wire = [framed(a), framed(b)].concat();
        for cut in 0..wire.len() {
            let mut reader = FrameReader::new(&[blob(a), blob(b)]);
            let mut got = Vec::new();
            for part in [&wire[..cut], &wire[cut..]] {
                reader.push(part);
                while let Some((digest, bytes)) = reader.next_frame().unwrap() {
                    got.push((digest, bytes));
                }
            }
            assert_eq!(got.len(), 2, "cut at {cut}");
            assert_eq!(got[0], (Sha256::of(a), Bytes::from_static(a)));
            assert_eq!(got[1].0, Sha256::of(b));
            assert!(reader.at_boundary());
        }
    }

    #[test]
    fn a_frame_not_asked_for_twice_or_of_another_size_ends_the_read() {
        let a = b"asked".as_slice();
        let mut reader = FrameReader::new(&[blob(a)]);
        reader.push(&framed(b"other"));
        assert_eq!(
            reader.next_frame(),
            Err(FrameError::Unasked(Sha256::of(b"other")))
        );

        let mut reader = FrameReader::new(&[blob(a)]);
        reader.push(&[framed(a), framed(a)].concat());
        assert!(reader.next_frame().unwrap().is_some());
        assert_eq!(reader.next_frame(), Err(FrameError::Unasked(Sha256::of(a))));

        let mut reader = FrameReader::new(&[blob(a)]);
        reader.push(format!("{} 9\n", Sha256::of(a).to_hex()).as_bytes());
        assert!(matches!(
            reader.next_frame(),
            Err(FrameError::Size {
                asked: 5,
                got: 9,
                ..
            })
        ));

        let mut reader = FrameReader::new(&[blob(a)]);
        reader.push(&[b'x'; MAX_HEADER]);
        assert!(matches!(reader.next_frame(), Err(FrameError::Header(_))));
    }

    #[test]
    fn a_cut_answer_is_not_at_a_boundary() {
        let a = b"some bytes".as_slice();
        let wire = framed(a);
        let mut reader = FrameReader::new(&[blob(a)]);
        reader.push(&wire[..wire.len() - 1]);
        assert_eq!(reader.next_frame(), Ok(None));
        assert!(!reader.at_boundary());
    }
}
