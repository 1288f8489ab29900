"""CogVideoX: ``CogVideoXPipeline`` and ``CogVideoXImageToVideoPipeline`` (per model_index.json).

Mirrors diffusers 0.42.1 ``pipelines/cogvideo/pipeline_cogvideox.py`` / ``pipeline_cogvideox_image2video.py``
``__call__`` with ``use_dynamic_cfg=False``, ``eta=0.0``; ``max_sequence_length`` is the transformer's
``max_text_seq_length`` (226 for the released models, the pipeline default). The DPM scheduler's loop-local
``old_pred_original_sample`` is kept as a stored tensor.
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

ETA = 0.0


class CogVideoXGeneration(DiffusersGeneration):
    default_guidance = 6.0

    def prepare(self, fresh: bool) -> None:
        import torch
        from diffusers import CogVideoXImageToVideoPipeline
        from diffusers.pipelines.cogvideo.pipeline_cogvideox import retrieve_timesteps

        pipe = self.pipe
        req = self.req
        self.i2v = isinstance(pipe, CogVideoXImageToVideoPipeline)
        height, width, num_frames = req.height, req.width, req.frames
        pipe._guidance_scale = self.guidance_scale
        pipe._attention_kwargs = None
        pipe._current_timestep = None
        pipe._interrupt = False
        batch_size = 1
        device = pipe._execution_device
        self.do_cfg = self.guidance_scale > 1.0
        max_sequence_length = pipe.transformer.config.max_text_seq_length

        if fresh:
            prompt_embeds, negative_prompt_embeds = pipe.encode_prompt(
                prompt=req.prompt,
                negative_prompt=req.negative_prompt,
                do_classifier_free_guidance=self.do_cfg,
                num_videos_per_prompt=1,
                prompt_embeds=None,
                negative_prompt_embeds=None,
                max_sequence_length=max_sequence_length,
                device=device,
            )
            if self.do_cfg:
                prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds], dim=0)
            self.cond["prompt_embeds"] = prompt_embeds
        prompt_embeds = self.cond["prompt_embeds"]
        assert prompt_embeds is not None

        timesteps, num_inference_steps = retrieve_timesteps(pipe.scheduler, req.steps, device, None)
        self.timesteps = timesteps
        self.num_inference_steps = num_inference_steps
        pipe._num_timesteps = len(timesteps)

        latent_frames = (num_frames - 1) // pipe.vae_scale_factor_temporal + 1
        patch_size_t = pipe.transformer.config.patch_size_t
        additional_frames = 0
        if patch_size_t is not None and latent_frames % patch_size_t != 0:
            additional_frames = patch_size_t - latent_frames % patch_size_t
            num_frames += additional_frames * pipe.vae_scale_factor_temporal
        self.additional_frames = additional_frames

        if fresh:
            if self.i2v:
                assert req.image is not None
                image = pipe.video_processor.preprocess(req.image.to_pil(), height=height, width=width).to(
                    device, dtype=prompt_embeds.dtype
                )
                latent_channels = pipe.transformer.config.in_channels // 2
                self.latents, self.cond["image_latents"] = pipe.prepare_latents(
                    image,
                    batch_size,
                    latent_channels,
                    num_frames,
                    height,
                    width,
                    prompt_embeds.dtype,
                    device,
                    self.generator,
                    None,
                )
            else:
                latent_channels = pipe.transformer.config.in_channels
                self.latents = pipe.prepare_latents(
                    batch_size,
                    latent_channels,
                    num_frames,
                    height,
                    width,
                    prompt_embeds.dtype,
                    device,
                    self.generator,
                    None,
                )
            self.cond["old_pred_original_sample"] = None
        assert self.latents is not None

        self.extra_step_kwargs = pipe.prepare_extra_step_kwargs(self.generator, ETA)
        self.image_rotary_emb = (
            pipe._prepare_rotary_positional_embeddings(height, width, self.latents.size(1), device)
            if pipe.transformer.config.use_rotary_positional_embeddings
            else None
        )
        self.ofs_emb = None
        if self.i2v and pipe.transformer.config.ofs_embed_dim is not None:
            self.ofs_emb = self.latents.new_full((1,), fill_value=2.0)

    def denoise(self, i: int, t: torch.Tensor) -> None:
        import torch
        from diffusers import CogVideoXDPMScheduler

        pipe = self.pipe
        latents = self.latents
        prompt_embeds = self.cond["prompt_embeds"]
        assert latents is not None and prompt_embeds is not None and self.timesteps is not None
        pipe._current_timestep = t
        latent_model_input = torch.cat([latents] * 2) if self.do_cfg else latents
        latent_model_input = pipe.scheduler.scale_model_input(latent_model_input, t)
        kwargs: dict[str, Any] = {}
        if self.i2v:
            image_latents = self.cond["image_latents"]
            latent_image_input = torch.cat([image_latents] * 2) if self.do_cfg else image_latents
            latent_model_input = torch.cat([latent_model_input, latent_image_input], dim=2)
            kwargs["ofs"] = self.ofs_emb
        timestep = t.expand(latent_model_input.shape[0])
        with pipe.transformer.cache_context("cond_uncond"):
            noise_pred = pipe.transformer(
                hidden_states=latent_model_input,
                encoder_hidden_states=prompt_embeds,
                timestep=timestep,
                image_rotary_emb=self.image_rotary_emb,
                attention_kwargs=None,
                return_dict=False,
                **kwargs,
            )[0]
        noise_pred = noise_pred.float()
        if self.do_cfg:
            noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
            noise_pred = noise_pred_uncond + self.guidance_scale * (noise_pred_text - noise_pred_uncond)

        if not isinstance(pipe.scheduler, CogVideoXDPMScheduler):
            latents = pipe.scheduler.step(noise_pred, t, latents, **self.extra_step_kwargs, return_dict=False)[0]
        else:
            latents, old_pred_original_sample = pipe.scheduler.step(
                noise_pred,
                self.cond["old_pred_original_sample"],
                t,
                self.timesteps[i - 1] if i > 0 else None,
                latents,
                **self.extra_step_kwargs,
                return_dict=False,
            )
            self.cond["old_pred_original_sample"] = old_pred_original_sample
        self.latents = latents.to(prompt_embeds.dtype)

    def decode_video(self, generator: torch.Generator) -> np.ndarray:
        pipe = self.pipe
        assert self.latents is not None
        latents = self.latents[:, self.additional_frames :]
        video = pipe.decode_latents(latents)
        return pipe.video_processor.postprocess_video(video=video, output_type="np")


class CogVideoXModel(DiffusersModel):
    adapter = "cogvideox"
    pipeline_classes: ClassVar[tuple[str, ...]] = ("CogVideoXPipeline", "CogVideoXImageToVideoPipeline")
    generation_cls = CogVideoXGeneration

    @classmethod
    def compute_supports(cls, pipe: Any) -> Supports:
        i2v = type(pipe).__name__ == "CogVideoXImageToVideoPipeline"
        return Supports(
            image_to_video=i2v, audio=False, negative_prompt=True, guidance_scale=True, text_to_video=not i2v
        )

    def validate(self, req: Request) -> None:
        super().validate(req)
        pipe = self.pipe
        mult = math.lcm(8, pipe.vae_scale_factor_spatial * pipe.transformer.config.patch_size)
        check_multiple(req.height, mult, "height")
        check_multiple(req.width, mult, "width")
        check_frames(req.frames, pipe.vae_scale_factor_temporal)


def load(spec: Any, device: str) -> CogVideoXModel:
    model = CogVideoXModel.load(spec, device)
    assert isinstance(model, CogVideoXModel)
    return model
