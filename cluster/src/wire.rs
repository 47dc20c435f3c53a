//! The bytes on the cluster's subjects: heartbeats (JSON) and fan-out
//! requests and answer chunks (length-prefixed binary). Everything decoded
//! here comes from another process and is checked, never trusted.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// Subject every node publishes its heartbeat on.
pub const HEARTBEAT_SUBJECT: &str = "ba.nodes.heartbeat";
/// Subject a node publishes its clean leave on.
pub const LEAVE_SUBJECT: &str = "ba.nodes.leave";
/// Subject of fan-out requests; every node subscribes (no queue group).
pub const FANOUT_SUBJECT: &str = "ba.fanout";

/// Header naming the answering node of a fan-out message.
pub const H_NODE: &str = "Ba-Node";
/// Header saying what a fan-out answer is: `chunk` or `end`.
pub const H_KIND: &str = "Ba-Kind";
/// End marker header: entries the node sent in all.
pub const H_COUNT: &str = "Ba-Count";
/// End marker header: chunk messages the node sent before it.
pub const H_CHUNKS: &str = "Ba-Chunks";
/// End marker header: `1` when the node's deadline cut its answers short.
pub const H_CUT: &str = "Ba-Cut";
/// Request header: the fan-out's time budget in milliseconds.
pub const H_TIMEOUT_MS: &str = "Ba-Timeout-Ms";
/// Request header: the calling node.
pub const H_FROM: &str = "Ba-From";

/// Bytes a chunk entry adds to the host id and reply: u16 + u32 lengths.
pub const ENTRY_OVERHEAD: usize = 6;

/// One heartbeat or leave message, as JSON on [`HEARTBEAT_SUBJECT`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Heartbeat {
    /// Node name (unique in the cluster).
    pub node: String,
    /// Address agents are redirected to.
    pub peer_addr: String,
    /// Agent sessions the node holds.
    pub sessions: u64,
    /// Whether the node is draining.
    pub draining: bool,
    /// When the node's cluster layer started, Unix milliseconds.
    pub started_at: u64,
    /// Random id of this run, so a restarted node with the same name is told
    /// apart from a second node wrongly given the same name.
    #[serde(default)]
    pub instance: String,
}

/// Largest heartbeat accepted, in bytes.
pub const MAX_HEARTBEAT: usize = 4096;

/// A fan-out request body: `u32 filter length (BE) | filter | payload`.
pub fn encode_fanout(filter: &[u8], payload: &[u8]) -> Option<Bytes> {
    let len = u32::try_from(filter.len()).ok()?;
    let mut b = BytesMut::with_capacity(4 + filter.len() + payload.len());
    b.put_u32(len);
    b.put_slice(filter);
    b.put_slice(payload);
    Some(b.freeze())
}

/// Splits a fan-out request body into (filter, payload).
pub fn decode_fanout(body: &Bytes) -> Option<(Bytes, Bytes)> {
    let len_bytes: [u8; 4] = body.get(..4)?.try_into().ok()?;
    let len = usize::try_from(u32::from_be_bytes(len_bytes)).ok()?;
    let end = 4usize.checked_add(len)?;
    if end > body.len() {
        return None;
    }
    Some((body.slice(4..end), body.slice(end..)))
}

/// Appends one chunk entry: `u16 host length | host | u32 reply length | reply`.
/// `None` when the host id or reply is too long for its length field.
pub fn put_entry(buf: &mut BytesMut, host: &str, reply: &[u8]) -> Option<()> {
    let hl = u16::try_from(host.len()).ok()?;
    let rl = u32::try_from(reply.len()).ok()?;
    buf.reserve(ENTRY_OVERHEAD + host.len() + reply.len());
    buf.put_u16(hl);
    buf.put_slice(host.as_bytes());
    buf.put_u32(rl);
    buf.put_slice(reply);
    Some(())
}

/// Decodes a chunk into (host, reply) pairs; `None` if any entry is
/// malformed (then the whole chunk is dropped).
pub fn decode_chunk(body: &Bytes) -> Option<Vec<(String, Bytes)>> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < body.len() {
        let hl: [u8; 2] = body.get(at..at.checked_add(2)?)?.try_into().ok()?;
        let hl = usize::from(u16::from_be_bytes(hl));
        at = at.checked_add(2)?;
        let host = body.get(at..at.checked_add(hl)?)?;
        let host = std::str::from_utf8(host).ok()?.to_owned();
        at = at.checked_add(hl)?;
        let rl: [u8; 4] = body.get(at..at.checked_add(4)?)?.try_into().ok()?;
        let rl = usize::try_from(u32::from_be_bytes(rl)).ok()?;
        at = at.checked_add(4)?;
        let end = at.checked_add(rl)?;
        if end > body.len() {
            return None;
        }
        out.push((host, body.slice(at..end)));
        at = end;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_round_trip() {
        let mut b = BytesMut::new();
        put_entry(&mut b, "h1", b"{\"a\":1}").unwrap();
        put_entry(&mut b, "", b"").unwrap();
        put_entry(&mut b, "h\u{e9}", &[0, 1, 2]).unwrap();
        let got = decode_chunk(&b.freeze()).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].0, "h1");
        assert_eq!(&got[0].1[..], b"{\"a\":1}");
        assert_eq!(got[2].0, "h\u{e9}");
    }

    #[test]
    fn malformed_chunks_are_refused() {
        let mut b = BytesMut::new();
        put_entry(&mut b, "host", b"reply").unwrap();
        let full = b.freeze();
        for cut in 1..full.len() {
            assert!(decode_chunk(&full.slice(..cut)).is_none(), "cut at {cut}");
        }
        // A length that points past the end, and one that would overflow.
        assert!(decode_chunk(&Bytes::from_static(&[0, 1, b'a', 0xff, 0xff, 0xff, 0xff])).is_none());
        assert!(decode_chunk(&Bytes::from_static(&[0xff, 0xff])).is_none());
        // Host ids that are not UTF-8.
        assert!(decode_chunk(&Bytes::from_static(&[0, 1, 0xff, 0, 0, 0, 0])).is_none());
        assert_eq!(decode_chunk(&Bytes::new()).unwrap().len(), 0);
    }

    #[test]
    fn fanout_round_trip_and_garbage() {
        let b = encode_fanout(b"filter", b"payload").unwrap();
        let (f, p) = decode_fanout(&b).unwrap();
        assert_eq!((&f[..], &p[..]), (&b"filter"[..], &b"payload"[..]));
        assert!(decode_fanout(&Bytes::from_static(&[0, 0])).is_none());
        assert!(decode_fanout(&Bytes::from_static(&[0, 0, 0, 9, 1])).is_none());
        assert!(decode_fanout(&Bytes::from_static(&[0xff, 0xff, 0xff, 0xff])).is_none());
    }
}
