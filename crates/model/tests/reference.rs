//! Behaviour of the reference model through the public seam only.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking

use proptest::prelude::*;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::{Duration, Instant};
use videogen_model::{
    GenerationRequest, Model, ModelError, REFERENCE_DEFAULT_STEPS, ReferenceConfig, ReferenceModel, RgbImage,
    checkpoint_info,
};

fn model() -> ReferenceModel {
    ReferenceModel::new(ReferenceConfig::instant())
}

fn small(prompt: &str, seed: u64) -> GenerationRequest {
    let mut r = GenerationRequest::new(prompt, seed, 64, 48, 16);
    r.steps = 8;
    r
}

fn run_to_end(g: &mut Box<dyn videogen_model::Generation>) {
    while !g.is_done() {
        g.step().unwrap();
    }
}

fn finished(req: &GenerationRequest) -> Box<dyn videogen_model::Generation> {
    let mut g = model().start(req).unwrap();
    run_to_end(&mut g);
    g
}

/// Mean absolute per-byte difference of two frames.
fn diff(a: &RgbImage, b: &RgbImage) -> f64 {
    assert_eq!((a.width, a.height), (b.width, b.height));
    let s: u64 = a.data.iter().zip(&b.data).map(|(&x, &y)| x.abs_diff(y) as u64).sum();
    s as f64 / a.data.len() as f64
}

/// Rewrites the trailer so edited bytes pass the integrity check.
fn fix_crc(b: &mut [u8]) {
    let n = b.len();
    let crc = crc32fast::hash(&b[..n - 4]);
    b[n - 4..].copy_from_slice(&crc.to_le_bytes());
}

fn err_code(r: Result<Box<dyn videogen_model::Generation>, ModelError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(e) => e.code(),
    }
}

#[test]
fn identity_and_defaults() {
    let m = ReferenceModel::new(ReferenceConfig::default());
    assert_eq!(m.id(), videogen_core::spec::REFERENCE_MODEL);
    assert_eq!(m.version(), "1");
    assert_eq!(m.config().step_time, Duration::from_millis(100));
    assert_eq!(m.config().load_time, Duration::ZERO);
    assert_eq!(REFERENCE_DEFAULT_STEPS, 30);
    // Usable as a shared trait object.
    let shared: Arc<dyn Model> = Arc::new(model());
    shared.load().unwrap();
}

#[test]
fn load_is_idempotent_and_cheap_after_first() {
    let m = ReferenceModel::new(ReferenceConfig {
        load_time: Duration::from_millis(50),
        ..ReferenceConfig::instant()
    });
    assert!(!m.is_loaded());
    // Concurrent first callers all return only once the one load is done.
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                m.load().unwrap();
                assert!(m.is_loaded(), "a caller returned before the load finished");
            });
        }
    });
    for _ in 0..3 {
        m.load().unwrap();
        assert!(m.is_loaded());
    }
}

#[test]
fn progress_and_shapes() {
    let req = small("shapes", 1);
    let mut g = model().start(&req).unwrap();
    assert_eq!((g.steps_done(), g.total_steps(), g.frame_count()), (0, 8, 16));
    assert!(!g.is_done());
    // A preview before any step works and has the output size.
    let f = g.decode_frame(0);
    assert_eq!((f.width, f.height, f.data.len()), (64, 48, 64 * 48 * 3));
    run_to_end(&mut g);
    assert!(g.is_done());
    assert_eq!(g.steps_done(), 8);
    let before = g.checkpoint().unwrap();
    g.step().unwrap(); // no-op once done
    assert_eq!(g.steps_done(), 8);
    assert_eq!(g.checkpoint().unwrap(), before);
    // Out-of-range index decodes the last frame instead of panicking.
    assert_eq!(g.decode_frame(999).data, g.decode_frame(15).data);
    let info = checkpoint_info(&before).unwrap();
    assert_eq!((info.step, info.total_steps), (8, 8));
    assert_eq!(
        (info.model_id.as_str(), info.model_version.as_str()),
        ("videogen-ref", "1")
    );
    assert_eq!(info.params_hash, req.params_hash());
    assert_eq!(info.latent_dims, req.latent_dims());
    assert_eq!(info.size_bytes, before.len());
}

#[test]
fn deterministic_across_runs() {
    let req = small("a lighthouse at dusk", 9);
    let (a, b) = (finished(&req), finished(&req));
    assert_eq!(a.checkpoint().unwrap(), b.checkpoint().unwrap());
    for i in [0, 5, 15] {
        assert_eq!(a.decode_frame(i).data, b.decode_frame(i).data);
    }
}

#[test]
fn golden_output_is_pinned() {
    // Any change to the arithmetic must bump REFERENCE_VERSION (old
    // checkpoints would resume wrongly otherwise) and then this hash.
    let g = finished(&small("golden", 5));
    let mut h = Sha256::new();
    h.update(g.checkpoint().unwrap());
    h.update(&g.decode_frame(7).data);
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, "91e7f1c714c4c97f86b72c278ca3275ffb8df84d9125357d0aafe9eaf39b5e1e");
}

#[test]
fn resume_at_any_step_is_bit_identical() {
    let mut req = small("resume me", 3);
    req.first_frame = Some(RgbImage {
        width: 5,
        height: 3,
        data: (0..45).collect(),
    });
    let full = finished(&req);
    let want = full.checkpoint().unwrap();
    let m = model();
    for k in 0..=req.steps {
        let mut g = m.start(&req).unwrap();
        for _ in 0..k {
            g.step().unwrap();
        }
        let ck = g.checkpoint().unwrap();
        drop(g);
        let mut r = m.resume(&req, &ck).unwrap();
        assert_eq!(r.steps_done(), k);
        // Resuming a resumed generation must also be exact.
        if k > 0 && k < req.steps {
            r.step().unwrap();
            r = m.resume(&req, &r.checkpoint().unwrap()).unwrap();
        }
        run_to_end(&mut r);
        assert_eq!(r.checkpoint().unwrap(), want, "resumed at step {k}");
        for i in [0, 6, 15] {
            assert_eq!(r.decode_frame(i).data, full.decode_frame(i).data, "frame {i} at k={k}");
        }
    }
}

#[test]
fn resume_refuses_bad_checkpoints() {
    let req = small("guarded", 11);
    let m = model();
    let mut g = m.start(&req).unwrap();
    g.step().unwrap();
    let ck = g.checkpoint().unwrap();
    assert_eq!(err_code(m.resume(&req, &ck)), "ok");

    // Damaged bytes anywhere: header, latents, trailer.
    for i in [0, 9, 20, 60, ck.len() / 2, ck.len() - 1] {
        let mut bad = ck.clone();
        bad[i] ^= 0x01;
        assert_eq!(err_code(m.resume(&req, &bad)), "corrupt_checkpoint", "flip at {i}");
    }
    for n in [0, 4, 8, 100, ck.len() - 1] {
        assert_eq!(
            err_code(m.resume(&req, &ck[..n])),
            "corrupt_checkpoint",
            "truncated to {n}"
        );
    }
    let mut longer = ck.clone();
    longer.push(0);
    assert_eq!(err_code(m.resume(&req, &longer)), "corrupt_checkpoint");

    // Another model version (well-formed bytes).
    let mut other = ck.clone();
    let pos = 8 + 2 + 2 + "videogen-ref".len() + 2;
    assert_eq!(other[pos], b'1');
    other[pos] = b'2';
    fix_crc(&mut other);
    assert_eq!(checkpoint_info(&other).unwrap().model_version, "2");
    assert_eq!(err_code(m.resume(&req, &other)), "checkpoint_mismatch");

    // Another model id of the same length.
    let mut other = ck.clone();
    other[12] = b'X';
    fix_crc(&mut other);
    assert_eq!(err_code(m.resume(&req, &other)), "checkpoint_mismatch");

    // A different request: every parameter matters.
    let mut variants = vec![small("guarded!", 11), small("guarded", 12)];
    let mut r = small("guarded", 11);
    r.steps = 9;
    variants.push(r);
    let mut r = small("guarded", 11);
    r.style = Some("noir".into());
    variants.push(r);
    let mut r = small("guarded", 11);
    r.width = 72;
    variants.push(r);
    for v in &variants {
        assert_eq!(err_code(m.resume(v, &ck)), "checkpoint_mismatch", "{v:?}");
    }

    // An invalid request is reported as such even with a good checkpoint.
    let mut inv = req.clone();
    inv.steps = 0;
    assert_eq!(err_code(m.resume(&inv, &ck)), "invalid_request");
}

#[test]
fn invalid_requests_are_rejected() {
    let m = model();
    let tweaks: Vec<fn(&mut GenerationRequest)> = vec![
        |r| r.steps = 0,
        |r| r.frames = 0,
        |r| r.frames = 10,
        |r| r.frames = 1004,
        |r| r.width = 0,
        |r| r.width = 100,
        |r| r.height = 4,
        |r| r.width = 4104,
        |r| r.height = 8192,
        |r| {
            r.first_frame = Some(RgbImage {
                width: 10,
                height: 10,
                data: vec![1, 2, 3],
            })
        },
    ];
    for (i, t) in tweaks.iter().enumerate() {
        let mut r = small("x", 0);
        t(&mut r);
        let e = m.start(&r).err().unwrap_or_else(|| panic!("case {i} accepted"));
        assert_eq!(e.code(), "invalid_request", "case {i}");
        assert!(!e.is_retryable());
    }
}

#[test]
fn tiny_shapes_work() {
    // One latent cell, one latent frame, one step.
    let mut r = GenerationRequest::new("tiny", 0, 8, 8, 4);
    r.steps = 1;
    let g = finished(&r);
    assert_eq!(g.decode_frame(3).data.len(), 8 * 8 * 3);
}

#[test]
fn output_depends_on_prompt_seed_and_time() {
    let base = finished(&small("a red fox in snow", 1));
    let other_prompt = finished(&small("deep blue ocean", 1));
    let other_seed = finished(&small("a red fox in snow", 2));
    let mut styled = small("a red fox in snow", 1);
    styled.style = Some("noir".into());
    let styled = finished(&styled);
    let f = base.decode_frame(4);
    assert!(diff(&f, &other_prompt.decode_frame(4)) > 10.0);
    assert!(diff(&f, &other_seed.decode_frame(4)) > 3.0);
    assert!(diff(&f, &styled.decode_frame(4)) > 3.0);
    // Frames move over time, and smoothly: neighbours differ less than far frames.
    let near = diff(&base.decode_frame(4), &base.decode_frame(5));
    let far = diff(&base.decode_frame(0), &base.decode_frame(15));
    assert!(far > 1.0 && near < far, "near {near} far {far}");
    // Not a flat image.
    let (min, max) = f.data.iter().fold((255u8, 0u8), |(a, b), &v| (a.min(v), b.max(v)));
    assert!(max - min > 60, "contrast {min}..{max}");
}

#[test]
fn first_frame_shapes_the_start_and_fades() {
    let plain = small("meadow", 4);
    let mut cond = plain.clone();
    // A solid red 100x60 image (any size is accepted).
    let data = [255u8, 0, 0].repeat(100 * 60);
    cond.first_frame = Some(RgbImage {
        width: 100,
        height: 60,
        data,
    });
    let (a, b) = (finished(&plain), finished(&cond));
    let red = |f: &RgbImage| {
        f.data.chunks_exact(3).map(|p| p[0] as f64 - p[2] as f64).sum::<f64>() / (f.data.len() / 3) as f64
    };
    let boost0 = red(&b.decode_frame(0)) - red(&a.decode_frame(0));
    let boost_last = red(&b.decode_frame(15)) - red(&a.decode_frame(15));
    assert!(boost0 > 60.0, "frame 0 red boost {boost0}");
    assert!(boost_last < boost0 / 3.0, "fades: {boost_last} vs {boost0}");
}

#[test]
fn preview_changes_while_denoising() {
    let req = small("preview", 8);
    let mut g = model().start(&req).unwrap();
    let p0 = g.decode_frame(2);
    for _ in 0..4 {
        g.step().unwrap();
    }
    let p4 = g.decode_frame(2);
    run_to_end(&mut g);
    let done = g.decode_frame(2);
    assert!(diff(&p0, &done) > diff(&p4, &done));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let m = model();
        let req = small("garbage", 1);
        prop_assert!(m.resume(&req, &bytes).is_err());
        prop_assert!(checkpoint_info(&bytes).is_err());
        // Garbage behind a valid magic as well.
        let mut with_magic = b"VGMCKPT\0".to_vec();
        with_magic.extend_from_slice(&bytes);
        prop_assert!(m.resume(&req, &with_magic).is_err());
        fix_crc_if_long(&mut with_magic);
        let _ = checkpoint_info(&with_magic);
        prop_assert!(m.resume(&req, &with_magic).is_err());
    }

    #[test]
    fn damaged_checkpoints_are_refused(cut in 0usize..10_000, pos in any::<usize>(), bit in 0u8..8) {
        let req = small("damage", 2);
        let m = model();
        let mut g = m.start(&req).unwrap();
        g.step().unwrap();
        let ck = g.checkpoint().unwrap();
        let cut = cut % ck.len();
        prop_assert_eq!(err_code(m.resume(&req, &ck[..cut])), "corrupt_checkpoint");
        let mut flipped = ck.clone();
        flipped[pos % ck.len()] ^= 1 << bit;
        prop_assert_eq!(err_code(m.resume(&req, &flipped)), "corrupt_checkpoint");
    }
}

fn fix_crc_if_long(b: &mut [u8]) {
    if b.len() >= 12 {
        fix_crc(b);
    }
}

/// Release-build timings for a 4 s 1280x720 clip; run with
/// `cargo test -p videogen-model --release -- --ignored --nocapture`.
#[test]
#[ignore]
fn timing_720p_4s() {
    let req = GenerationRequest::new("timing: a kite over hills", 1, 1280, 720, 96);
    let fast = model();
    let t = Instant::now();
    let mut g = fast.start(&req).unwrap();
    let start = t.elapsed();
    let t = Instant::now();
    run_to_end(&mut g);
    let per_step = t.elapsed() / req.steps;
    let t = Instant::now();
    for i in 0..g.frame_count() {
        std::hint::black_box(g.decode_frame(i));
    }
    let per_frame = t.elapsed() / g.frame_count();
    let ck = g.checkpoint().unwrap();

    let real = ReferenceModel::new(ReferenceConfig::default());
    let t = Instant::now();
    let mut g = real.start(&req).unwrap();
    run_to_end(&mut g);
    for i in 0..g.frame_count() {
        std::hint::black_box(g.decode_frame(i));
    }
    let clip = t.elapsed();
    println!(
        "start {start:?}; compute/step {per_step:?}; decode/frame {per_frame:?}; \
         checkpoint {} bytes; whole clip at 100 ms/step incl. decode {clip:?}",
        ck.len()
    );
}

#[test]
fn the_optional_soundtrack_is_seeded_by_the_request_and_lasts_the_clip() {
    let m = ReferenceModel::new(ReferenceConfig {
        audio: true,
        ..ReferenceConfig::instant()
    });
    let audio_of = |req: &GenerationRequest| {
        let mut g = m.start(req).unwrap();
        while !g.is_done() {
            g.step().unwrap();
        }
        g.into_frames().unwrap().audio().cloned().expect("a soundtrack")
    };
    let req = small("a red fox", 1);
    let a = audio_of(&req);
    assert_eq!((a.sample_rate, a.channels), (48_000, 2));
    // 16 frames at 24 fps = 2/3 s.
    assert_eq!(a.samples.len(), 32_000 * 2);
    assert!(a.samples.iter().all(|v| v.abs() <= 1.0) && a.samples.iter().any(|v| v.abs() > 0.05));
    assert_eq!(audio_of(&req), a, "deterministic");
    assert_ne!(
        audio_of(&small("a blue whale", 1)).samples,
        a.samples,
        "seeded by the request"
    );
    // Off by default.
    let silent = ReferenceModel::new(ReferenceConfig::instant());
    let g = silent.start(&req).unwrap();
    assert!(g.into_frames().unwrap().audio().is_none());
}
