//! The frame of the model-host protocol (docs/MODEL_HOST.md): magic `VGH1`,
//! u32 header length, u64 payload length, a JSON-object header, raw payload.
//! Large data (latents, checkpoints, RGB frames) is always the payload.

use serde_json::{Map, Value};
use std::io::{Read, Write};

use crate::HostError;

pub const MAGIC: &[u8; 4] = b"VGH1";
/// Longest header either side may send.
pub const MAX_HEADER_BYTES: u32 = 1 << 20;
/// Payloads up to this size travel in the same write as their header.
const INLINE_PAYLOAD_BYTES: usize = 64 << 10;

/// One message.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub header: Map<String, Value>,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn new(header: Value) -> Self {
        Self::with_payload(header, Vec::new())
    }

    /// A frame from a JSON object (anything else becomes an empty header).
    pub fn with_payload(header: Value, payload: Vec<u8>) -> Self {
        let header = match header {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        Self { header, payload }
    }

    pub fn str(&self, key: &str) -> Option<&str> {
        self.header.get(key).and_then(Value::as_str)
    }

    pub fn u64(&self, key: &str) -> Option<u64> {
        self.header.get(key).and_then(Value::as_u64)
    }

    /// A `u32` field, or a protocol error naming it.
    pub fn need_u32(&self, key: &str) -> Result<u32, HostError> {
        self.u64(key)
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| HostError::Protocol(format!("reply lacks a valid {key:?}")))
    }
}

/// Writes one frame (header serialised compactly).
pub fn write_frame(w: &mut impl Write, header: &Map<String, Value>, payload: &[u8]) -> Result<(), HostError> {
    let head = serde_json::to_vec(header).map_err(|e| HostError::Protocol(e.to_string()))?;
    let head_len = u32::try_from(head.len())
        .ok()
        .filter(|n| *n <= MAX_HEADER_BYTES)
        .ok_or_else(|| HostError::Protocol(format!("header of {} bytes is too large", head.len())))?;
    // One write for the prefix, the header and a small payload: the peer
    // wakes once per message, not once per piece (this is most of a step's
    // round trip on a busy machine).
    let inline = payload.len() <= INLINE_PAYLOAD_BYTES;
    let mut buf = Vec::with_capacity(16 + head.len() + if inline { payload.len() } else { 0 });
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&head_len.to_le_bytes());
    buf.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    buf.extend_from_slice(&head);
    if inline {
        buf.extend_from_slice(payload);
    }
    w.write_all(&buf).map_err(HostError::io)?;
    if !inline {
        w.write_all(payload).map_err(HostError::io)?;
    }
    w.flush().map_err(HostError::io)
}

/// Reads one frame, refusing any that breaks a bound before allocating for it.
pub fn read_frame(r: &mut impl Read, max_payload: u64) -> Result<Frame, HostError> {
    let mut prefix = [0u8; 16];
    r.read_exact(&mut prefix).map_err(HostError::io)?;
    if &prefix[..4] != MAGIC {
        return Err(HostError::Protocol(format!("bad magic {:02x?}", &prefix[..4])));
    }
    let head_len = u32::from_le_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]);
    let mut n = [0u8; 8];
    n.copy_from_slice(&prefix[8..]);
    let payload_len = u64::from_le_bytes(n);
    if head_len > MAX_HEADER_BYTES {
        return Err(HostError::Protocol(format!("header of {head_len} bytes is too large")));
    }
    if payload_len > max_payload {
        return Err(HostError::Protocol(format!(
            "payload of {payload_len} bytes exceeds the {max_payload}-byte bound"
        )));
    }
    let mut head = vec![0u8; head_len as usize];
    r.read_exact(&mut head).map_err(HostError::io)?;
    let header = match serde_json::from_slice(&head) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Err(HostError::Protocol("header is not a JSON object".into())),
        Err(e) => return Err(HostError::Protocol(format!("header is not JSON: {e}"))),
    };
    let len = usize::try_from(payload_len).map_err(|_| HostError::Protocol("payload too large".into()))?;
    let mut payload = Vec::new();
    payload
        .try_reserve_exact(len)
        .map_err(|_| HostError::Protocol(format!("cannot allocate a {len}-byte payload")))?;
    r.take(payload_len).read_to_end(&mut payload).map_err(HostError::io)?;
    if payload.len() != len {
        return Err(HostError::Exited("connection closed inside a frame".into()));
    }
    Ok(Frame { header, payload })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn encode(header: Value, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let Value::Object(m) = header else { unreachable!() };
        write_frame(&mut out, &m, payload).unwrap();
        out
    }

    #[test]
    fn round_trip() {
        let bytes = encode(json!({"op": "step", "n": 3}), &[1, 2, 3]);
        let f = read_frame(&mut bytes.as_slice(), 10).unwrap();
        assert_eq!(f.str("op"), Some("step"));
        assert_eq!(f.u64("n"), Some(3));
        assert_eq!(f.payload, vec![1, 2, 3]);
        // Two frames back to back.
        let mut two = encode(json!({"a": 1}), b"");
        two.extend(encode(json!({"b": 2}), b"xy"));
        let mut r = two.as_slice();
        assert_eq!(read_frame(&mut r, 10).unwrap().u64("a"), Some(1));
        assert_eq!(read_frame(&mut r, 10).unwrap().payload, b"xy");
        // A payload too large to travel with its header.
        let big: Vec<u8> = (0..INLINE_PAYLOAD_BYTES + 7).map(|i| i as u8).collect();
        let bytes = encode(json!({"op": "frame"}), &big);
        assert_eq!(read_frame(&mut bytes.as_slice(), 1 << 20).unwrap().payload, big);
    }

    #[test]
    fn bounds_and_garbage_are_refused() {
        let ok = encode(json!({"op": "x"}), &[0; 11]);
        assert!(matches!(
            read_frame(&mut ok.as_slice(), 10),
            Err(HostError::Protocol(_))
        ));
        let mut bad_magic = ok.clone();
        bad_magic[0] = b'X';
        assert!(matches!(
            read_frame(&mut bad_magic.as_slice(), 100),
            Err(HostError::Protocol(_))
        ));
        let mut huge_header = ok.clone();
        huge_header[4..8].copy_from_slice(&(MAX_HEADER_BYTES + 1).to_le_bytes());
        assert!(matches!(
            read_frame(&mut huge_header.as_slice(), 100),
            Err(HostError::Protocol(_))
        ));
        let not_object = {
            let mut v = Vec::new();
            v.extend_from_slice(MAGIC);
            v.extend_from_slice(&2u32.to_le_bytes());
            v.extend_from_slice(&0u64.to_le_bytes());
            v.extend_from_slice(b"[]");
            v
        };
        assert!(matches!(
            read_frame(&mut not_object.as_slice(), 100),
            Err(HostError::Protocol(_))
        ));
        let truncated = &ok[..ok.len() - 3];
        assert!(read_frame(&mut &truncated[..], 100).is_err());
    }
}
