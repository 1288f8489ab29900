"""LTX-Video: ``LTXPipeline`` and ``LTXImageToVideoPipeline``.

Both run on the same weights, so either model_index.json class serves both kinds of request: a request with
``image`` runs ``LTXImageToVideoPipeline``, one without runs ``LTXPipeline`` (sharing the loaded components).
Mirrors diffusers 0.42.1 ``pipelines/ltx/pipeline_ltx.py`` / ``pipeline_ltx_image2video.py`` ``__call__`` with its
defaults (``max_sequence_length=128``, ``guidance_rescale=0``, ``decode_timestep=0``, ``decode_noise_scale=None``);
the request's ``fps`` is the pipeline's ``frame_rate``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..request import Request
from .base import Supports, check_frames, check_multiple
from .diffusers_base import DiffusersGeneration, DiffusersModel

if TYPE_CHECKING:
    import torch

MAX_SEQUENCE_LENGTH = 128
DECODE_TIMESTEP = 0.0
DECODE_NOISE_SCALE = None
GUIDANCE_RESCALE = 0.0


class LTXGeneration(DiffusersGeneration):
    default_guidance = 3.0

    def prepare(self, fresh: bool) -> None:
        import torch
        from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift, retrieve_timesteps

        pipe = self.pipe
        req = self.req
        self.i2v = req.image is not None
        height, width, num_frames = req.height, req.width, req.frames
        num_inference_steps = req.steps
        pipe._guidance_scale = self.guidance_scale
        pipe._guidance_rescale = GUIDANCE_RESCALE
        pipe._attention_kwargs = None
        pipe._interrupt = False
        pipe._current_timestep = None
        self.do_cfg = pipe.do_classifier_free_guidance
        batch_size = 1
        device = pipe._execution_device

        if fresh:
            (
                prompt_embeds,
                prompt_attention_mask,
                negative_prompt_embeds,
                negative_prompt_attention_mask,
            ) = pipe.encode_prompt(
                prompt=req.prompt,
                negative_prompt=req.negative_prompt,
                do_classifier_free_guidance=self.do_cfg,
                num_videos_per_prompt=1,
                prompt_embeds=None,
                negative_prompt_embeds=None,
                prompt_attention_mask=None,
                negative_prompt_attention_mask=None,
                max_sequence_length=MAX_SEQUENCE_LENGTH,
                device=device,
            )
            if self.do_cfg:
                prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds], dim=0)
                prompt_attention_mask = torch.cat([negative_prompt_attention_mask, prompt_attention_mask], dim=0)
            self.cond["prompt_embeds"] = prompt_embeds
            self.cond["prompt_attention_mask"] = prompt_attention_mask

            num_channels_latents = pipe.transformer.config.in_channels
            if self.i2v:
                assert req.image is not None
                image = pipe.video_processor.preprocess(req.image.to_pil(), height=height, width=width)
                image = image.to(device=device, dtype=prompt_embeds.dtype)
                latents, conditioning_mask = pipe.prepare_latents(
                    image,
                    batch_size,
                    num_channels_latents,
                    height,
                    width,
                    num_frames,
                    torch.float32,
                    device,
                    self.generator,
                    None,
                )
                if self.do_cfg:
                    conditioning_mask = torch.cat([conditioning_mask, conditioning_mask])
                self.cond["conditioning_mask"] = conditioning_mask
            else:
                latents = pipe.prepare_latents(
                    batch_size,
                    num_channels_latents,
                    height,
                    width,
                    num_frames,
                    torch.float32,
                    device,
                    self.generator,
                    None,
                )
            self.latents = latents

        self.latent_num_frames = (num_frames - 1) // pipe.vae_temporal_compression_ratio + 1
        self.latent_height = height // pipe.vae_spatial_compression_ratio
        self.latent_width = width // pipe.vae_spatial_compression_ratio
        video_sequence_length = self.latent_num_frames * self.latent_height * self.latent_width
        sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        mu = calculate_shift(
            video_sequence_length,
            pipe.scheduler.config.get("base_image_seq_len", 256),
            pipe.scheduler.config.get("max_image_seq_len", 4096),
            pipe.scheduler.config.get("base_shift", 0.5),
            pipe.scheduler.config.get("max_shift", 1.15),
        )
        timesteps, _ = retrieve_timesteps(pipe.scheduler, num_inference_steps, device, None, sigmas=sigmas, mu=mu)
        self.timesteps = timesteps
        pipe._num_timesteps = len(timesteps)
        self.rope_interpolation_scale = (
            pipe.vae_temporal_compression_ratio / req.fps,
            pipe.vae_spatial_compression_ratio,
            pipe.vae_spatial_compression_ratio,
        )

    def denoise(self, i: int, t: torch.Tensor) -> None:
        import torch
        from diffusers.pipelines.ltx.pipeline_ltx import rescale_noise_cfg

        pipe = self.pipe
        latents = self.latents
        assert latents is not None
        prompt_embeds = self.cond["prompt_embeds"]
        assert prompt_embeds is not None
        pipe._current_timestep = t
        latent_model_input = torch.cat([latents] * 2) if self.do_cfg else latents
        latent_model_input = latent_model_input.to(prompt_embeds.dtype)
        timestep = t.expand(latent_model_input.shape[0])
        if self.i2v:
            timestep = timestep.unsqueeze(-1) * (1 - self.cond["conditioning_mask"])

        with pipe.transformer.cache_context("cond_uncond"):
            noise_pred = pipe.transformer(
                hidden_states=latent_model_input,
                encoder_hidden_states=prompt_embeds,
                timestep=timestep,
                encoder_attention_mask=self.cond["prompt_attention_mask"],
                num_frames=self.latent_num_frames,
                height=self.latent_height,
                width=self.latent_width,
                rope_interpolation_scale=self.rope_interpolation_scale,
                attention_kwargs=None,
                return_dict=False,
            )[0]
        noise_pred = noise_pred.float()

        if self.do_cfg:
            noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
            noise_pred = noise_pred_uncond + self.guidance_scale * (noise_pred_text - noise_pred_uncond)
            if GUIDANCE_RESCALE > 0:
                noise_pred = rescale_noise_cfg(noise_pred, noise_pred_text, guidance_rescale=GUIDANCE_RESCALE)

        if not self.i2v:
            self.latents = pipe.scheduler.step(noise_pred, t, latents, return_dict=False)[0]
            return
        p, pt = pipe.transformer_spatial_patch_size, pipe.transformer_temporal_patch_size
        dims = (self.latent_num_frames, self.latent_height, self.latent_width)
        noise_pred = pipe._unpack_latents(noise_pred, *dims, p, pt)
        latents = pipe._unpack_latents(latents, *dims, p, pt)
        noise_pred = noise_pred[:, :, 1:]
        noise_latents = latents[:, :, 1:]
        pred_latents = pipe.scheduler.step(noise_pred, t, noise_latents, return_dict=False)[0]
        latents = torch.cat([latents[:, :, :1], pred_latents], dim=2)
        self.latents = pipe._pack_latents(latents, p, pt)

    def decode_video(self, generator: torch.Generator) -> np.ndarray:
        import torch
        from diffusers.utils.torch_utils import randn_tensor

        pipe = self.pipe
        prompt_embeds = self.cond["prompt_embeds"]
        assert prompt_embeds is not None and self.latents is not None
        device = pipe._execution_device
        batch_size = 1
        latents = pipe._unpack_latents(
            self.latents,
            self.latent_num_frames,
            self.latent_height,
            self.latent_width,
            pipe.transformer_spatial_patch_size,
            pipe.transformer_temporal_patch_size,
        )
        latents = pipe._denormalize_latents(
            latents, pipe.vae.latents_mean, pipe.vae.latents_std, pipe.vae.config.scaling_factor
        )
        latents = latents.to(prompt_embeds.dtype)
        if not pipe.vae.config.timestep_conditioning:
            timestep = None
        else:
            if self.i2v:
                noise = torch.randn(latents.shape, generator=generator, device=device, dtype=latents.dtype)
            else:
                noise = randn_tensor(latents.shape, generator=generator, device=device, dtype=latents.dtype)
            decode_timestep = [DECODE_TIMESTEP] * batch_size
            decode_noise_scale = decode_timestep if DECODE_NOISE_SCALE is None else [DECODE_NOISE_SCALE] * batch_size
            timestep = torch.tensor(decode_timestep, device=device, dtype=latents.dtype)
            scale = torch.tensor(decode_noise_scale, device=device, dtype=latents.dtype)[:, None, None, None, None]
            latents = (1 - scale) * latents + scale * noise
        if not self.i2v:
            latents = latents.to(pipe.vae.dtype)
        video = pipe.vae.decode(latents, timestep, return_dict=False)[0]
        return pipe.video_processor.postprocess_video(video, output_type="np")


class LTXModel(DiffusersModel):
    adapter = "ltx"
    pipeline_classes: ClassVar[tuple[str, ...]] = ("LTXPipeline", "LTXImageToVideoPipeline")
    generation_cls = LTXGeneration

    def __init__(self, spec: Any, weights_hash: str, pipe: Any, device: str) -> None:
        from diffusers import LTXImageToVideoPipeline, LTXPipeline

        super().__init__(spec, weights_hash, pipe, device)
        components = pipe.components
        self.t2v = pipe if isinstance(pipe, LTXPipeline) else LTXPipeline(**components)
        self.i2v = pipe if isinstance(pipe, LTXImageToVideoPipeline) else LTXImageToVideoPipeline(**components)
        for p in (self.t2v, self.i2v):
            p.set_progress_bar_config(disable=True)

    @classmethod
    def compute_supports(cls, pipe: Any) -> Supports:
        return Supports(image_to_video=True, audio=False, negative_prompt=True, guidance_scale=True)

    def pipe_for(self, req: Request) -> Any:
        import copy

        pipe = self.i2v if req.image is not None else self.t2v
        pipe.scheduler = copy.deepcopy(self._scheduler0)
        return pipe

    def validate(self, req: Request) -> None:
        super().validate(req)
        pipe = self.pipe
        mult = math.lcm(32, pipe.vae_spatial_compression_ratio * pipe.transformer_spatial_patch_size)
        check_multiple(req.height, mult, "height")
        check_multiple(req.width, mult, "width")
        check_frames(req.frames, pipe.vae_temporal_compression_ratio * pipe.transformer_temporal_patch_size)

    def unload(self) -> None:
        self.t2v = None
        self.i2v = None
        super().unload()


def load(spec: Any, device: str) -> LTXModel:
    model = LTXModel.load(spec, device)
    assert isinstance(model, LTXModel)
    return model
