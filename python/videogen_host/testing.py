"""Tiny, randomly initialised, deterministic pipelines for tests (no downloads).

CLI (stable; the Rust tests call it)::

    python -m videogen_host.testing make-tiny --adapter ADAPTER [--seed N] [--scheduler NAME] [--audio] OUT_DIR

``ADAPTER`` is one of ``wan wan-i2v ltx ltx-i2v cogvideox cogvideox-i2v hunyuan noop``. ``OUT_DIR`` is created (it
must not exist or be empty) and receives ``save_pretrained`` output that loads back through the production
``<Pipeline>.from_pretrained`` path. ``--seed`` changes the weight initialisation (a "different model"),
``--scheduler`` swaps the scheduler for one of :data:`SCHEDULERS` (``unipc`` and ``dpm++`` are the flow-matching
multistep solvers Wan ships with, ``cogvideox-dpm`` the stochastic CogVideoX one, ``flow-stochastic`` a
FlowMatch Euler that draws noise from torch's global RNG), ``--audio`` makes a ``noop``
model announce audio. On success one JSON line goes to stdout: ``{"adapter": <load adapter name>,
"variant": ADAPTER, "path": OUT_DIR, "pipeline": <class>, "request": <a request this model accepts>}``.

The component configs follow diffusers' own pipeline tests (tests/pipelines/*/test_*.py); tokenizers are built in
process with the ``tokenizers`` library and wrapped as ``PreTrainedTokenizerFast``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

VARIANTS = ("wan", "wan-i2v", "ltx", "ltx-i2v", "cogvideox", "cogvideox-i2v", "hunyuan", "noop")

# load adapter, pipeline class, and a request the tiny model accepts (4 steps, small sizes)
_SPECS: dict[str, dict[str, Any]] = {
    "wan": {"adapter": "wan", "pipeline": "WanPipeline", "width": 32, "height": 32, "frames": 9, "gs": 5.0},
    "wan-i2v": {
        "adapter": "wan",
        "pipeline": "WanImageToVideoPipeline",
        "width": 32,
        "height": 32,
        "frames": 9,
        "gs": 5.0,
        "image": True,
    },
    "ltx": {"adapter": "ltx", "pipeline": "LTXPipeline", "width": 32, "height": 32, "frames": 9, "gs": 3.0},
    "ltx-i2v": {
        "adapter": "ltx",
        "pipeline": "LTXImageToVideoPipeline",
        "width": 32,
        "height": 32,
        "frames": 9,
        "gs": 3.0,
        "image": True,
    },
    "cogvideox": {"adapter": "cogvideox", "pipeline": "CogVideoXPipeline", "width": 16, "height": 16, "frames": 9},
    "cogvideox-i2v": {
        "adapter": "cogvideox",
        "pipeline": "CogVideoXImageToVideoPipeline",
        "width": 16,
        "height": 16,
        "frames": 9,
        "image": True,
    },
    "hunyuan": {"adapter": "hunyuan", "pipeline": "HunyuanVideoPipeline", "width": 16, "height": 16, "frames": 9},
    "noop": {"adapter": "noop", "pipeline": "VideogenNoopPipeline", "width": 64, "height": 32, "frames": 9},
}

NOOP_CLASS = "VideogenNoopPipeline"

SCHEDULERS = ("default", "unipc", "dpm++", "cogvideox-dpm", "flow-stochastic")

_COGVIDEOX_SCHEDULER = {
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "clip_sample": False,
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "set_alpha_to_one": True,
    "snr_shift_scale": 3.0,
    "timestep_spacing": "trailing",
}


def make_scheduler(name: str) -> Any:
    """A scheduler by :data:`SCHEDULERS` name (configs as the released Wan 2.1 / CogVideoX model dirs)."""
    import diffusers

    if name == "unipc":
        return diffusers.UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=3.0
        )
    if name == "dpm++":
        return diffusers.DPMSolverMultistepScheduler(
            prediction_type="flow_prediction",
            use_flow_sigmas=True,
            num_train_timesteps=1000,
            flow_shift=3.0,
            algorithm_type="dpmsolver++",
            solver_order=2,
        )
    if name == "cogvideox-dpm":
        return diffusers.CogVideoXDPMScheduler(**_COGVIDEOX_SCHEDULER)
    if name == "flow-stochastic":  # draws its noise from torch's global RNG (pipelines pass it no generator)
        return diffusers.FlowMatchEulerDiscreteScheduler(shift=7.0, stochastic_sampling=True)
    raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")


_WORDS = (  # noqa: SIM905 - a word list reads better as text
    "a an the of in on at to and with from by for over under near red green blue white black fox dog cat bird "
    "snow grass water sky sun moon tree forest city street car run runs running walk walks jump fly flies swim "
    "dance monkey girl boy man woman camera slow fast close up wide shot light dark night day morning evening "
    "video scene frame high quality low blurry static describe main content theme color shape size texture "
    "background style atmosphere movement objects"
).split()


def spec(variant: str) -> dict[str, Any]:
    if variant not in _SPECS:
        raise ValueError(f"unknown tiny variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    return dict(_SPECS[variant])


def example_request(variant: str, *, seed: int = 42, steps: int = 4) -> dict[str, Any]:
    """A request the tiny model of ``variant`` accepts; ``image`` present (its bytes are up to the caller)."""
    s = spec(variant)
    req: dict[str, Any] = {
        "prompt": "a red fox runs in the snow",
        "negative_prompt": None,
        "seed": seed,
        "width": s["width"],
        "height": s["height"],
        "frames": s["frames"],
        "fps": 16,
        "steps": steps,
        "guidance_scale": s.get("gs", 6.0),
        "image": {"width": s["width"], "height": s["height"]} if s.get("image") else None,
    }
    if variant == "hunyuan":
        req["guidance_scale"] = 6.0
    return req


def example_image(width: int, height: int, seed: int = 7) -> bytes:
    """Deterministic RGB bytes (a gradient with a seed-dependent offset)."""
    out = bytearray(width * height * 3)
    k = 0
    for y in range(height):
        for x in range(width):
            out[k] = (x * 255 // max(width - 1, 1) + seed) % 256
            out[k + 1] = (y * 255 // max(height - 1, 1) + 3 * seed) % 256
            out[k + 2] = ((x + y) * 7 + 5 * seed) % 256
            k += 3
    return bytes(out)


# --------------------------------------------------------------------------------------------------------------------
# Tokenizers


def make_tokenizer(
    specials: dict[str, int], *, bos: str | None, eos: str | None, pad: str, unk: str, model_max_length: int
) -> Any:
    """A word-level tokenizer (lower-cased, whitespace/punctuation split) wrapped as ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = dict(specials)
    nxt = max(vocab.values()) + 1
    for w in [*_WORDS, *"abcdefghijklmnopqrstuvwxyz0123456789.,:;!?'\"-()<>|{}_"]:
        if w not in vocab:
            vocab[w] = nxt
            nxt += 1
    tok = Tokenizer(WordLevel(vocab, unk_token=unk))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    single = " ".join(x for x in ((bos or ""), "$A", (eos or "")) if x)
    pair = " ".join(x for x in ((bos or ""), "$A", (eos or ""), "$B", (eos or "")) if x)
    special_tokens = [(t, vocab[t]) for t in (bos, eos) if t]
    tok.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=special_tokens)
    kwargs: dict[str, Any] = {"pad_token": pad, "unk_token": unk}
    if bos:
        kwargs["bos_token"] = bos
    if eos:
        kwargs["eos_token"] = eos
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=model_max_length, **kwargs)


def t5_tokenizer(model_max_length: int = 512) -> Any:
    return make_tokenizer(
        {"<pad>": 0, "</s>": 1, "<unk>": 2},
        bos=None,
        eos="</s>",
        pad="<pad>",
        unk="<unk>",
        model_max_length=model_max_length,
    )


def t5_encoder(seed: int, *, umt5: bool = False) -> Any:
    """A tiny T5 (or UMT5, as Wan ships) encoder with 32-dim outputs."""
    import torch
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    config_cls, model_cls = (UMT5Config, UMT5EncoderModel) if umt5 else (T5Config, T5EncoderModel)
    config = config_cls(
        vocab_size=256,
        d_model=32,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        is_encoder_decoder=False,
        use_cache=False,
    )
    torch.manual_seed(seed)
    return model_cls(config).eval()


# --------------------------------------------------------------------------------------------------------------------
# Pipelines


def build(variant: str, seed: int = 0) -> Any:
    """The tiny pipeline object of ``variant`` (not for ``noop``)."""
    import torch

    torch.manual_seed(seed)
    if variant in ("wan", "wan-i2v"):
        return _build_wan(variant == "wan-i2v", seed)
    if variant in ("ltx", "ltx-i2v"):
        return _build_ltx(variant == "ltx-i2v", seed)
    if variant in ("cogvideox", "cogvideox-i2v"):
        return _build_cogvideox(variant == "cogvideox-i2v", seed)
    if variant == "hunyuan":
        return _build_hunyuan(seed)
    raise ValueError(f"no tiny pipeline for {variant!r}")


def _build_wan(i2v: bool, seed: int) -> Any:
    import torch
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel

    torch.manual_seed(seed)
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=7.0)
    text_encoder = t5_encoder(seed, umt5=True)
    tokenizer = t5_tokenizer()
    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=36 if i2v else 16,
        out_channels=16,
        text_dim=32,
        freq_dim=256,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
        image_dim=4 if i2v else None,
    )
    if not i2v:
        from diffusers import WanPipeline

        return WanPipeline(
            transformer=transformer, vae=vae, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer
        )
    from diffusers import WanImageToVideoPipeline
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    image_encoder = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=4,
            projection_dim=4,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            intermediate_size=16,
            patch_size=4,
        )
    ).eval()
    image_processor = CLIPImageProcessor(crop_size=32, size=32)
    return WanImageToVideoPipeline(
        transformer=transformer,
        vae=vae,
        scheduler=scheduler,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        image_encoder=image_encoder,
        image_processor=image_processor,
    )


def _build_ltx(i2v: bool, seed: int) -> Any:
    import torch
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXImageToVideoPipeline,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )

    torch.manual_seed(seed)
    transformer = LTXVideoTransformer3DModel(
        in_channels=8,
        out_channels=8,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=4,
        attention_head_dim=8,
        cross_attention_dim=32,
        num_layers=1,
        caption_channels=32,
    )
    torch.manual_seed(seed)
    vae = AutoencoderKLLTXVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=8,
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False),
        decoder_inject_noise=(False, False, False, False, False),
        upsample_residual=(False, False, False, False),
        upsample_factor=(1, 1, 1, 1),
        timestep_conditioning=False,
        patch_size=1,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
    )
    scheduler = FlowMatchEulerDiscreteScheduler()
    cls = LTXImageToVideoPipeline if i2v else LTXPipeline
    return cls(
        transformer=transformer,
        vae=vae,
        scheduler=scheduler,
        text_encoder=t5_encoder(seed),
        tokenizer=t5_tokenizer(128),
    )


def _build_cogvideox(i2v: bool, seed: int) -> Any:
    import torch
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXImageToVideoPipeline,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )

    torch.manual_seed(seed)
    common: dict[str, Any] = {
        "out_channels": 4,
        "time_embed_dim": 2,
        "text_embed_dim": 32,
        "num_layers": 1,
        "sample_width": 2,
        "sample_height": 2,
        "sample_frames": 9,
        "patch_size": 2,
        "temporal_compression_ratio": 4,
        "max_text_seq_length": 16,
    }
    if i2v:
        # Image-to-video: the image latents are concatenated (8 input channels), rotary + learned positions.
        transformer = CogVideoXTransformer3DModel(
            num_attention_heads=2,
            attention_head_dim=16,
            in_channels=8,
            use_rotary_positional_embeddings=True,
            use_learned_positional_embeddings=True,
            **common,
        )
    else:
        transformer = CogVideoXTransformer3DModel(num_attention_heads=4, attention_head_dim=8, in_channels=4, **common)
    torch.manual_seed(seed)
    vae = AutoencoderKLCogVideoX(
        in_channels=3,
        out_channels=3,
        down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=4,
    )
    # CogVideoX ships CogVideoXDDIMScheduler (5B) / CogVideoXDPMScheduler; DDIM keeps the tiny test deterministic.
    scheduler = CogVideoXDDIMScheduler(**_COGVIDEOX_SCHEDULER)
    cls = CogVideoXImageToVideoPipeline if i2v else CogVideoXPipeline
    return cls(
        transformer=transformer, vae=vae, scheduler=scheduler, text_encoder=t5_encoder(seed), tokenizer=t5_tokenizer()
    )


def _build_hunyuan(seed: int) -> Any:
    import torch
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    torch.manual_seed(seed)
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=10,
        num_layers=1,
        num_single_layers=1,
        num_refiner_layers=1,
        patch_size=1,
        patch_size_t=1,
        guidance_embeds=True,
        text_embed_dim=16,
        pooled_projection_dim=8,
        rope_axes_dim=(2, 4, 4),
    )
    torch.manual_seed(seed)
    vae = AutoencoderKLHunyuanVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        act_fn="silu",
        norm_num_groups=4,
        scaling_factor=0.476986,
        spatial_compression_ratio=8,
        temporal_compression_ratio=4,
        mid_block_add_attention=True,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=7.0)
    llama = LlamaConfig(
        bos_token_id=0,
        eos_token_id=2,
        hidden_size=16,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=2,
        pad_token_id=1,
        vocab_size=256,
        hidden_act="gelu",
    )
    clip = CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=2,
        hidden_size=8,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=2,
        pad_token_id=1,
        vocab_size=256,
        hidden_act="gelu",
        projection_dim=32,
        max_position_embeddings=77,
    )
    torch.manual_seed(seed)
    text_encoder = LlamaModel(llama).eval()
    torch.manual_seed(seed)
    text_encoder_2 = CLIPTextModel(clip).eval()
    tokenizer = make_tokenizer(
        {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3},
        bos="<s>",
        eos=None,
        pad="<pad>",
        unk="<unk>",
        model_max_length=1024,
    )
    tokenizer_2 = make_tokenizer(
        {"<|startoftext|>": 0, "<pad>": 1, "<|endoftext|>": 2, "<unk>": 3},
        bos="<|startoftext|>",
        eos="<|endoftext|>",
        pad="<pad>",
        unk="<unk>",
        model_max_length=77,
    )
    return HunyuanVideoPipeline(
        transformer=transformer,
        vae=vae,
        scheduler=scheduler,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
    )


# --------------------------------------------------------------------------------------------------------------------
# noop


def make_noop(out_dir: Path, seed: int = 0, audio: bool = False) -> None:
    """A model dir for the ``noop`` adapter: ``model_index.json`` plus a small safetensors weights file."""
    import numpy as np
    from safetensors.numpy import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {"_class_name": NOOP_CLASS, "_videogen_adapter": "noop", "seed": seed}
    if audio:
        index["audio"] = {"sample_rate": 16000, "channels": 2}
    (out_dir / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", "utf-8")
    rng = np.random.default_rng(seed)
    save_file({"weight": rng.standard_normal((16, 16)).astype(np.float32)}, str(out_dir / "noop.safetensors"))


# --------------------------------------------------------------------------------------------------------------------
# make-tiny


def make_tiny(
    variant: str, out_dir: str | os.PathLike[str], seed: int = 0, audio: bool = False, scheduler: str = "default"
) -> dict[str, Any]:
    s = spec(variant)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty")
    if audio and variant != "noop":
        raise ValueError("--audio is only for the noop adapter")
    if scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
    if scheduler != "default" and variant == "noop":
        raise ValueError("--scheduler does not apply to the noop adapter")
    if variant == "noop":
        make_noop(out, seed, audio)
    else:
        pipe = build(variant, seed)
        if scheduler != "default":
            pipe.scheduler = make_scheduler(scheduler)
        out.mkdir(parents=True, exist_ok=True)
        pipe.save_pretrained(str(out))
    return {
        "adapter": s["adapter"],
        "variant": variant,
        "path": str(out),
        "pipeline": s["pipeline"],
        "request": example_request(variant),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m videogen_host.testing", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make-tiny", help="write a tiny random pipeline to OUT_DIR")
    mk.add_argument("--adapter", required=True, choices=VARIANTS)
    mk.add_argument("--seed", type=int, default=0, help="weight initialisation seed (default 0)")
    mk.add_argument("--scheduler", default="default", choices=SCHEDULERS, help="swap the scheduler (default: keep)")
    mk.add_argument("--audio", action="store_true", help="noop only: the model announces stereo 16 kHz audio")
    mk.add_argument("out_dir")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if args.adapter != "noop":
        import diffusers
        import transformers

        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()
    try:
        info = make_tiny(args.adapter, args.out_dir, args.seed, args.audio, args.scheduler)
    except (ValueError, FileExistsError) as e:
        print(f"make-tiny: {e}", file=sys.stderr)
        return 2
    print(json.dumps(info, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
