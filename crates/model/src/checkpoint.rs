//! Checkpoint byte format: everything needed to continue a generation
//! bit-identically, and nothing derivable from the request.
//!
//! Layout (all integers little-endian):
//!
//! | field            | bytes                    |
//! |------------------|--------------------------|
//! | magic            | 8: `VGMCKPT\0`           |
//! | format version   | u16 (currently 1)        |
//! | model id         | u16 length + UTF-8       |
//! | model version    | u16 length + UTF-8       |
//! | params hash      | 32 (SHA-256, see [`crate::GenerationRequest::params_hash`]) |
//! | step, total      | u32, u32                 |
//! | RNG state        | 4 x u64 (xoshiro256**)   |
//! | latent dims      | u32 x 4: channels, frames, height, width |
//! | latents          | f32 x product(dims)      |
//! | CRC-32           | u32 over all bytes above |
//!
//! The CRC is checked before any field is trusted, so any damaged byte reads
//! as [`ModelError::CorruptCheckpoint`] rather than as a confusing mismatch.

use crate::ModelError;
use crate::request::LatentDims;

pub const MAGIC: &[u8; 8] = b"VGMCKPT\0";
pub const FORMAT_VERSION: u16 = 1;
const CRC_LEN: usize = 4;

/// A checkpoint's header, for logs and tools.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CheckpointInfo {
    pub format_version: u16,
    pub model_id: String,
    pub model_version: String,
    /// SHA-256 of the request parameters the checkpoint belongs to.
    pub params_hash: [u8; 32],
    /// Steps completed when the checkpoint was taken.
    pub step: u32,
    pub total_steps: u32,
    pub latent_dims: LatentDims,
    /// Size of the whole checkpoint in bytes.
    pub size_bytes: usize,
}

impl CheckpointInfo {
    /// Lower-case hex of [`CheckpointInfo::params_hash`].
    pub fn params_hash_hex(&self) -> String {
        self.params_hash.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// A parsed checkpoint whose latents are still raw bytes.
pub(crate) struct Parsed<'a> {
    pub info: CheckpointInfo,
    pub rng_state: [u64; 4],
    pub latents: &'a [u8],
}

impl Parsed<'_> {
    /// Latents as f32 (the length was checked while parsing).
    pub fn latents_f32(&self) -> Vec<f32> {
        self.latents
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }
}

/// The state to serialise.
pub(crate) struct State<'a> {
    pub model_id: &'a str,
    pub model_version: &'a str,
    pub params_hash: &'a [u8; 32],
    pub step: u32,
    pub total_steps: u32,
    pub rng_state: [u64; 4],
    pub dims: LatentDims,
    pub latents: &'a [f32],
}

pub(crate) fn encode(s: &State<'_>) -> Vec<u8> {
    let header = 8 + 2 + 2 + s.model_id.len() + 2 + s.model_version.len() + 32 + 8 + 32 + 16;
    let mut out = Vec::with_capacity(header + s.latents.len() * 4 + CRC_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    for text in [s.model_id, s.model_version] {
        // Ids are short constants; truncation to u16 is never hit in practice.
        let b = &text.as_bytes()[..text.len().min(u16::MAX as usize)];
        out.extend_from_slice(&(b.len() as u16).to_le_bytes());
        out.extend_from_slice(b);
    }
    out.extend_from_slice(s.params_hash);
    out.extend_from_slice(&s.step.to_le_bytes());
    out.extend_from_slice(&s.total_steps.to_le_bytes());
    for w in s.rng_state {
        out.extend_from_slice(&w.to_le_bytes());
    }
    for d in [s.dims.channels, s.dims.frames, s.dims.height, s.dims.width] {
        out.extend_from_slice(&d.to_le_bytes());
    }
    for v in s.latents {
        out.extend_from_slice(&v.to_le_bytes());
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Sequential reader that turns running off the end into `CorruptCheckpoint`.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], ModelError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| ModelError::CorruptCheckpoint(format!("truncated while reading {what}")))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], ModelError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }
    fn u16(&mut self, what: &str) -> Result<u16, ModelError> {
        self.array(what).map(u16::from_le_bytes)
    }
    fn u32(&mut self, what: &str) -> Result<u32, ModelError> {
        self.array(what).map(u32::from_le_bytes)
    }
    fn u64(&mut self, what: &str) -> Result<u64, ModelError> {
        self.array(what).map(u64::from_le_bytes)
    }
    fn string(&mut self, what: &str) -> Result<String, ModelError> {
        let len = self.u16(what)? as usize;
        let b = self.take(len, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| ModelError::CorruptCheckpoint(format!("{what} is not UTF-8")))
    }
}

pub(crate) fn parse(bytes: &[u8]) -> Result<Parsed<'_>, ModelError> {
    let corrupt = |m: &str| Err(ModelError::CorruptCheckpoint(m.to_string()));
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return corrupt("bad magic: not a videogen model checkpoint");
    }
    if bytes.len() < MAGIC.len() + 2 + CRC_LEN {
        return corrupt("truncated header");
    }
    let (body, trailer) = bytes.split_at(bytes.len() - CRC_LEN);
    let stored = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
    let actual = crc32fast::hash(body);
    if stored != actual {
        return Err(ModelError::CorruptCheckpoint(format!(
            "crc mismatch: stored {stored:08x}, computed {actual:08x} (truncated or damaged)"
        )));
    }
    let mut r = Reader {
        buf: body,
        pos: MAGIC.len(),
    };
    let format_version = r.u16("format version")?;
    if format_version != FORMAT_VERSION {
        return Err(ModelError::CheckpointMismatch(format!(
            "checkpoint format version {format_version}, this build reads {FORMAT_VERSION}"
        )));
    }
    let model_id = r.string("model id")?;
    let model_version = r.string("model version")?;
    let params_hash = r.array::<32>("params hash")?;
    let step = r.u32("step")?;
    let total_steps = r.u32("total steps")?;
    let mut rng_state = [0u64; 4];
    for w in &mut rng_state {
        *w = r.u64("rng state")?;
    }
    let latent_dims = LatentDims {
        channels: r.u32("latent dims")?,
        frames: r.u32("latent dims")?,
        height: r.u32("latent dims")?,
        width: r.u32("latent dims")?,
    };
    if step > total_steps {
        return corrupt("step beyond total steps");
    }
    let n = latent_dims
        .checked_len()
        .and_then(|n| n.checked_mul(4))
        .ok_or_else(|| ModelError::CorruptCheckpoint("latent dims overflow".into()))?;
    let remaining = body.len() - r.pos;
    if remaining != n {
        return Err(ModelError::CorruptCheckpoint(format!(
            "latents are {remaining} bytes, dims need {n}"
        )));
    }
    let latents = r.take(n, "latents")?;
    Ok(Parsed {
        info: CheckpointInfo {
            format_version,
            model_id,
            model_version,
            params_hash,
            step,
            total_steps,
            latent_dims,
            size_bytes: bytes.len(),
        },
        rng_state,
        latents,
    })
}

/// Parses and integrity-checks a checkpoint (magic, length, CRC) and returns
/// its header, without decoding the latents.
pub fn checkpoint_info(bytes: &[u8]) -> Result<CheckpointInfo, ModelError> {
    parse(bytes).map(|p| p.info)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let dims = LatentDims {
            channels: 2,
            frames: 1,
            height: 2,
            width: 3,
        };
        let latents: Vec<f32> = (0..12).map(|i| i as f32 * 0.5 - 1.0).collect();
        encode(&State {
            model_id: "m",
            model_version: "7",
            params_hash: &[9; 32],
            step: 3,
            total_steps: 5,
            rng_state: [1, 2, 3, 4],
            dims,
            latents: &latents,
        })
    }

    #[test]
    fn round_trip() {
        let b = sample();
        let p = parse(&b).unwrap();
        assert_eq!(p.info.model_id, "m");
        assert_eq!(p.info.model_version, "7");
        assert_eq!(p.info.step, 3);
        assert_eq!(p.info.total_steps, 5);
        assert_eq!(p.info.size_bytes, b.len());
        assert_eq!(p.info.params_hash_hex(), "09".repeat(32));
        assert_eq!(p.rng_state, [1, 2, 3, 4]);
        assert_eq!(p.latents_f32()[11], 4.5);
        assert_eq!(checkpoint_info(&b).unwrap(), p.info);
    }

    #[test]
    fn every_flipped_byte_is_corrupt() {
        let b = sample();
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x10;
            assert!(
                matches!(checkpoint_info(&c), Err(ModelError::CorruptCheckpoint(_))),
                "flip at {i}"
            );
        }
    }

    #[test]
    fn every_truncation_is_corrupt() {
        let b = sample();
        for n in 0..b.len() {
            assert!(matches!(
                checkpoint_info(&b[..n]),
                Err(ModelError::CorruptCheckpoint(_))
            ));
        }
    }

    #[test]
    fn unknown_format_version_is_mismatch() {
        let mut b = sample();
        b[8] = 2;
        let len = b.len();
        let crc = crc32fast::hash(&b[..len - 4]);
        b[len - 4..].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(checkpoint_info(&b), Err(ModelError::CheckpointMismatch(_))));
    }
}
