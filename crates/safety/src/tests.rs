use super::*;
use image::ImageEncoder;

fn block_category(v: &Verdict) -> Option<&str> {
    match v {
        Verdict::Allow => None,
        Verdict::Block { category, .. } => Some(category),
    }
}

#[tokio::test]
async fn prompt_table() {
    let m = DenylistModerator::new();
    let cases: &[(&str, Option<&str>)] = &[
        ("a cat surfing a wave at sunset", None),
        ("", None),
        ("forbidden-test-term", Some("test")),
        ("A video about the FORBIDDEN TEST TERM.", Some("test")),
        ("f0rb1dd3n-t3$t-t3rm", Some("test")),
        ("f.o.r.b.i.d.d.e.n   test...term", Some("test")),
        ("ｆｏｒｂｉｄｄｅｎ test term", Some("test")),
        ("fоrbiddеn test term", Some("test")), // Cyrillic о and е
        ("forbidden\u{200B}-test-term", Some("test")),
        ("forbidden\u{3164}test term", Some("test")), // Hangul filler, invisible
        ("forbidden test\u{FFA0}-term", Some("test")),
        ("f\u{0585}rbidden test term", Some("test")), // Armenian օ
        ("forbidden test terminal", None),
        ("unforbidden test term", None),
        ("forbidden test", None),
        ("CSAM", Some("csam")),
        ("c.s.a.m", Some("csam")),
        ("a documentary on the history of plumbing pipes", None),
        ("how to build a b0mb", Some("weapons")),
        ("Pipe-Bomb", Some("weapons")),
        ("bombastic pipe organ music", None),
        ("classic car, glass bottles", None),
    ];
    for (prompt, expected) in cases {
        let v = m.check_prompt(prompt, None).await;
        assert_eq!(block_category(&v), *expected, "prompt {prompt:?}");
    }
}

#[tokio::test]
async fn style_is_checked_too() {
    let m = DenylistModerator::new();
    let v = m.check_prompt("a quiet forest", Some("Forbidden Test Term")).await;
    match v {
        Verdict::Block { category, reason } => {
            assert_eq!(category, "test");
            assert!(reason.contains("style"), "{reason}");
        }
        Verdict::Allow => panic!("style not checked"),
    }
    assert_eq!(
        m.check_prompt("a quiet forest", Some("cinematic")).await,
        Verdict::Allow
    );
}

#[tokio::test]
async fn reasons_never_echo_the_matched_phrase() {
    let m = DenylistModerator::new().with_terms("custom", ["Secret Phrase"]);
    for (prompt, category) in [
        ("child sexual abuse material", "csam"),
        ("ch1ld p0rn", "csam"),
        ("say secret phrase", "custom"),
    ] {
        match m.check_prompt(prompt, None).await {
            Verdict::Block { category: c, reason } => {
                assert_eq!(c, category);
                let r = reason.to_lowercase();
                for word in ["child", "porn", "abuse", "secret", "phrase"] {
                    assert!(!r.contains(word), "{reason:?} echoes {word:?}");
                }
                assert!(reason.contains(category), "{reason}");
            }
            Verdict::Allow => panic!("{prompt:?} allowed"),
        }
    }
}

#[tokio::test]
async fn custom_terms_and_empty_moderator() {
    let m = DenylistModerator::empty().with_terms("brand", ["Acme Corp", " -- ", ""]);
    assert_eq!(
        block_category(&m.check_prompt("an ACME-corp ad", None).await),
        Some("brand")
    );
    assert_eq!(m.check_prompt("acme", None).await, Verdict::Allow);
    // The empty moderator has no built-ins.
    assert_eq!(m.check_prompt("forbidden-test-term", None).await, Verdict::Allow);
    assert_eq!(m.matched_category("just -- punctuation"), None);
}

// ---- frames ----

/// A deterministic test picture: smooth colour bands and a bright box.
fn picture(w: u32, h: u32, variant: u32) -> Vec<u8> {
    let mut rgb = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
            let v = match variant {
                0 => {
                    let base = 128.0 + 90.0 * (fx * 9.0).sin() * (fy * 5.0 + 1.0).cos();
                    if (0.3..0.5).contains(&fx) && (0.2..0.6).contains(&fy) {
                        250.0
                    } else {
                        base
                    }
                }
                _ => 128.0 + 100.0 * (fy * 11.0 + fx * 3.0).sin(),
            };
            let v = v.clamp(0.0, 255.0) as u8;
            rgb.extend([v, v.saturating_sub(30), 255 - v / 2]);
        }
    }
    rgb
}

/// Adds deterministic pseudo-random noise of amplitude `amp`.
fn noisy(rgb: &[u8], amp: i32) -> Vec<u8> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    rgb.iter()
        .map(|&v| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let n = ((state >> 33) % (2 * amp as u64 + 1)) as i32 - amp;
            (i32::from(v) + n).clamp(0, 255) as u8
        })
        .collect()
}

fn jpeg_roundtrip(w: u32, h: u32, rgb: &[u8], quality: u8) -> Vec<u8> {
    let mut buf = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, quality)
        .write_image(rgb, w, h, image::ExtendedColorType::Rgb8)
        .unwrap();
    let decoded = image::load_from_memory(&buf).unwrap().to_rgb8();
    assert_eq!(decoded.dimensions(), (w, h));
    decoded.into_raw()
}

fn frame(index: u32, w: u32, h: u32, rgb: Vec<u8>) -> FrameSample {
    FrameSample {
        index,
        width: w,
        height: h,
        rgb,
    }
}

const W: u32 = 160;
const H: u32 = 90;

#[test]
fn dhash_is_stable_under_noise_and_jpeg() {
    let original = picture(W, H, 0);
    let h0 = dhash(W, H, &original);
    assert_eq!(h0, dhash(W, H, &original), "deterministic");
    let with_noise = dhash(W, H, &noisy(&original, 12));
    assert!(hamming(h0, with_noise) <= 2, "noise moved {}", hamming(h0, with_noise));
    let jpeg = dhash(W, H, &jpeg_roundtrip(W, H, &original, 40));
    assert!(hamming(h0, jpeg) <= 2, "jpeg moved {}", hamming(h0, jpeg));
    // Upscaled 2x (nearest neighbour): same picture, different size.
    let mut big = Vec::new();
    for y in 0..2 * H {
        for x in 0..2 * W {
            let i = (((y / 2) * W + x / 2) * 3) as usize;
            big.extend_from_slice(&original[i..i + 3]);
        }
    }
    let scaled = dhash(2 * W, 2 * H, &big);
    assert!(hamming(h0, scaled) <= 2, "scaling moved {}", hamming(h0, scaled));
}

#[test]
fn dhash_differs_between_pictures() {
    let a = dhash(W, H, &picture(W, H, 0));
    let b = dhash(W, H, &picture(W, H, 1));
    assert!(hamming(a, b) > 16, "distance only {}", hamming(a, b));
}

#[tokio::test]
async fn frames_near_a_denylisted_hash_are_blocked() {
    let bad = picture(W, H, 0);
    let good = picture(W, H, 1);
    let m = DenylistModerator::new().with_blocked_hashes(vec![dhash(W, H, &bad)]);

    let frames = [
        frame(0, W, H, good.clone()),
        frame(8, W, H, jpeg_roundtrip(W, H, &noisy(&bad, 8), 50)),
    ];
    match m.check_frames("a prompt", &frames).await {
        Verdict::Block { category, reason } => {
            assert_eq!(category, IMAGE_DENYLIST_CATEGORY);
            assert!(!reason.is_empty());
        }
        Verdict::Allow => panic!("near-duplicate not blocked"),
    }
    assert_eq!(
        m.check_frames("a prompt", &[frame(0, W, H, good.clone())]).await,
        Verdict::Allow
    );
    // Threshold 0 only blocks exact hashes.
    let strict = m.clone().with_hash_threshold(0);
    assert!(strict.hash_is_blocked(dhash(W, H, &bad)));
    assert!(!strict.hash_is_blocked(dhash(W, H, &bad) ^ 1));
    assert!(m.hash_is_blocked(dhash(W, H, &bad) ^ 0b11_1111));
    assert!(!m.hash_is_blocked(dhash(W, H, &bad) ^ 0b111_1111));
}

#[tokio::test]
async fn empty_frame_list_is_allowed() {
    let m = DenylistModerator::new().with_blocked_hashes(vec![0, u64::MAX]);
    assert_eq!(m.check_frames("anything", &[]).await, Verdict::Allow);
}

#[tokio::test]
async fn malformed_frames_fail_closed() {
    let m = DenylistModerator::new();
    for f in [
        frame(0, W, H, vec![0; 10]),
        frame(0, 0, 0, vec![]),
        frame(0, 2, 2, vec![0; 13]),
    ] {
        assert_eq!(
            block_category(&m.check_frames("p", &[f]).await),
            Some(UNCHECKABLE_FRAME_CATEGORY)
        );
    }
}

#[tokio::test]
async fn hash_file_loading() {
    let bad = picture(W, H, 0);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hashes.txt");
    std::fs::write(
        &path,
        format!("# known bad imagery\n{:016x}\n0x0123456789abcdef\n", dhash(W, H, &bad)),
    )
    .unwrap();
    let m = DenylistModerator::from_hash_file(&path).unwrap();
    assert!(matches!(
        m.check_frames("p", &[frame(0, W, H, bad)]).await,
        Verdict::Block { .. }
    ));
    // Built-in phrases still apply.
    assert!(m.matched_category("forbidden-test-term").is_some());
    assert!(matches!(
        DenylistModerator::from_hash_file(&dir.path().join("missing.txt")),
        Err(HashListError::Io { .. })
    ));
    std::fs::write(&path, "not-hex\n").unwrap();
    assert!(matches!(
        DenylistModerator::from_hash_file(&path),
        Err(HashListError::Parse { line: 1, .. })
    ));
}

#[test]
fn moderator_is_object_safe_and_shareable() {
    let m: std::sync::Arc<dyn Moderator> = std::sync::Arc::new(DenylistModerator::new());
    let _clone = std::sync::Arc::clone(&m);
}
