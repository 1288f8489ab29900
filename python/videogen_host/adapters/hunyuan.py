"""HunyuanVideo: ``HunyuanVideoPipeline`` (text-to-video).

Mirrors diffusers 0.42.1 ``pipelines/hunyuan_video/pipeline_hunyuan_video.py`` ``__call__`` with its defaults
(``DEFAULT_PROMPT_TEMPLATE``, ``max_sequence_length=256``, ``true_cfg_scale=1.0``). ``guidance_scale`` is the
model's embedded (distilled) guidance; there is no classifier-free guidance pass, so a negative prompt has no effect
and is rejected.
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

MAX_SEQUENCE_LENGTH = 256


class HunyuanGeneration(DiffusersGeneration):
    default_guidance = 6.0

    def prepare(self, fresh: bool) -> None:
        import torch
        from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import (
            DEFAULT_PROMPT_TEMPLATE,
            retrieve_timesteps,
        )

        pipe = self.pipe
        req = self.req
        pipe._guidance_scale = self.guidance_scale
        pipe._attention_kwargs = None
        pipe._current_timestep = None
        pipe._interrupt = False
        device = pipe._execution_device
        batch_size = 1
        self.transformer_dtype = pipe.transformer.dtype

        if fresh:
            prompt_embeds, pooled_prompt_embeds, prompt_attention_mask = pipe.encode_prompt(
                prompt=req.prompt,
                prompt_2=None,
                prompt_template=DEFAULT_PROMPT_TEMPLATE,
                num_videos_per_prompt=1,
                prompt_embeds=None,
                pooled_prompt_embeds=None,
                prompt_attention_mask=None,
                device=device,
                max_sequence_length=MAX_SEQUENCE_LENGTH,
            )
            self.cond["prompt_embeds"] = prompt_embeds.to(self.transformer_dtype)
            self.cond["prompt_attention_mask"] = prompt_attention_mask.to(self.transformer_dtype)
            self.cond["pooled_prompt_embeds"] = pooled_prompt_embeds.to(self.transformer_dtype)

        sigmas = np.linspace(1.0, 0.0, req.steps + 1)[:-1]
        timesteps, _ = retrieve_timesteps(pipe.scheduler, req.steps, device, sigmas=sigmas)
        self.timesteps = timesteps

        if fresh:
            num_channels_latents = pipe.transformer.config.in_channels
            self.latents = pipe.prepare_latents(
                batch_size,
                num_channels_latents,
                req.height,
                req.width,
                req.frames,
                torch.float32,
                device,
                self.generator,
                None,
            )
        assert self.latents is not None
        self.guidance = (
            torch.tensor([self.guidance_scale] * self.latents.shape[0], dtype=self.transformer_dtype, device=device)
            * 1000.0
        )
        pipe.scheduler.set_begin_index(0)
        pipe._num_timesteps = len(timesteps)

    def denoise(self, i: int, t: torch.Tensor) -> None:
        pipe = self.pipe
        latents = self.latents
        assert latents is not None
        pipe._current_timestep = t
        latent_model_input = latents.to(self.transformer_dtype)
        timestep = t.expand(latents.shape[0]).to(latents.dtype)
        with pipe.transformer.cache_context("cond"):
            noise_pred = pipe.transformer(
                hidden_states=latent_model_input,
                timestep=timestep,
                encoder_hidden_states=self.cond["prompt_embeds"],
                encoder_attention_mask=self.cond["prompt_attention_mask"],
                pooled_projections=self.cond["pooled_prompt_embeds"],
                guidance=self.guidance,
                attention_kwargs=None,
                return_dict=False,
            )[0]
        self.latents = pipe.scheduler.step(noise_pred, t, latents, return_dict=False)[0]

    def decode_video(self, generator: torch.Generator) -> np.ndarray:
        pipe = self.pipe
        assert self.latents is not None
        latents = self.latents.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor
        video = pipe.vae.decode(latents, return_dict=False)[0]
        return pipe.video_processor.postprocess_video(video, output_type="np")


class HunyuanModel(DiffusersModel):
    adapter = "hunyuan"
    pipeline_classes: ClassVar[tuple[str, ...]] = ("HunyuanVideoPipeline",)
    generation_cls = HunyuanGeneration

    @classmethod
    def compute_supports(cls, pipe: Any) -> Supports:
        return Supports(image_to_video=False, audio=False, negative_prompt=False, guidance_scale=True)

    def validate(self, req: Request) -> None:
        super().validate(req)
        pipe = self.pipe
        p = pipe.transformer.config.patch_size
        check_multiple(req.height, math.lcm(16, pipe.vae_scale_factor_spatial * p), "height")
        check_multiple(req.width, math.lcm(16, pipe.vae_scale_factor_spatial * p), "width")
        check_frames(req.frames, pipe.vae_scale_factor_temporal * pipe.transformer.config.patch_size_t)


def load(spec: Any, device: str) -> HunyuanModel:
    model = HunyuanModel.load(spec, device)
    assert isinstance(model, HunyuanModel)
    return model
