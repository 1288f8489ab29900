"""Wan 2.1 / 2.2: ``WanPipeline`` (text-to-video) and ``WanImageToVideoPipeline`` (when model_index.json says so).

Mirrors diffusers 0.42.1 ``pipelines/wan/pipeline_wan.py`` and ``pipeline_wan_i2v.py`` ``__call__`` (one prompt, one
video, ``max_sequence_length=512``, ``attention_kwargs=None``), including the two-transformer Wan 2.2 split
(``boundary_ratio``) and ``expand_timesteps``.
"""

from __future__ import annotations

import logging
import math
import types
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..errors import InvalidRequest
from ..request import Request
from .base import Supports, check_frames, check_multiple
from .diffusers_base import DiffusersGeneration, DiffusersModel

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

MAX_SEQUENCE_LENGTH = 512


def ensure_ftfy_shim() -> None:
    """diffusers 0.42.1's ``pipeline_wan_i2v.basic_clean`` calls ``ftfy.fix_text`` unconditionally (``pipeline_wan``
    skips it when ftfy is missing) and fails with NameError without ftfy. Without ftfy, give that module the
    identity, so image-to-video cleans prompts exactly as text-to-video does."""
    import diffusers.pipelines.wan.pipeline_wan_i2v as i2v

    if not hasattr(i2v, "ftfy"):
        log.warning("ftfy is not installed: Wan image-to-video prompts are not ftfy-fixed (as for text-to-video)")
        i2v.ftfy = types.SimpleNamespace(fix_text=lambda text: text)  # type: ignore[attr-defined]


class WanGeneration(DiffusersGeneration):
    default_guidance = 5.0

    def prepare(self, fresh: bool) -> None:
        import torch
        from diffusers import WanImageToVideoPipeline

        pipe = self.pipe
        req = self.req
        self.i2v = isinstance(pipe, WanImageToVideoPipeline)
        height, width, num_frames = req.height, req.width, req.frames
        guidance_scale = self.guidance_scale
        guidance_scale_2 = guidance_scale if pipe.config.boundary_ratio is not None else None
        self.guidance_scale_2 = guidance_scale_2
        pipe._guidance_scale = guidance_scale
        pipe._guidance_scale_2 = guidance_scale_2
        pipe._attention_kwargs = None
        pipe._current_timestep = None
        pipe._interrupt = False
        device = pipe._execution_device
        self.do_cfg = pipe.do_classifier_free_guidance
        batch_size = 1
        transformer = pipe.transformer if pipe.transformer is not None else pipe.transformer_2
        self.transformer_dtype = transformer.dtype
        image = None
        if fresh and self.i2v:
            assert req.image is not None
            image = req.image.to_pil()

        if fresh:
            prompt_embeds, negative_prompt_embeds = pipe.encode_prompt(
                prompt=req.prompt,
                negative_prompt=req.negative_prompt,
                do_classifier_free_guidance=self.do_cfg,
                num_videos_per_prompt=1,
                prompt_embeds=None,
                negative_prompt_embeds=None,
                max_sequence_length=MAX_SEQUENCE_LENGTH,
                device=device,
            )
            prompt_embeds = prompt_embeds.to(self.transformer_dtype)
            if negative_prompt_embeds is not None:
                negative_prompt_embeds = negative_prompt_embeds.to(self.transformer_dtype)
            self.cond["prompt_embeds"] = prompt_embeds
            self.cond["negative_prompt_embeds"] = negative_prompt_embeds

            if self.i2v:
                image_embeds = None
                if pipe.transformer is not None and pipe.transformer.config.image_dim is not None:
                    image_embeds = pipe.encode_image(image, device)
                    image_embeds = image_embeds.repeat(batch_size, 1, 1)
                    image_embeds = image_embeds.to(self.transformer_dtype)
                self.cond["image_embeds"] = image_embeds

        pipe.scheduler.set_timesteps(req.steps, device=device)
        self.timesteps = pipe.scheduler.timesteps

        if self.i2v:
            if fresh:
                num_channels_latents = pipe.vae.config.z_dim
                image_t = pipe.video_processor.preprocess(image, height=height, width=width).to(
                    device, dtype=torch.float32
                )
                outputs = pipe.prepare_latents(
                    image_t,
                    batch_size,
                    num_channels_latents,
                    height,
                    width,
                    num_frames,
                    torch.float32,
                    device,
                    self.generator,
                    None,
                    None,
                )
                if pipe.config.expand_timesteps:
                    self.latents, self.cond["condition"], self.cond["first_frame_mask"] = outputs
                else:
                    self.latents, self.cond["condition"] = outputs
        else:
            if fresh:
                num_channels_latents = transformer.config.in_channels
                self.latents = pipe.prepare_latents(
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
            assert self.latents is not None
            self.mask = torch.ones(self.latents.shape, dtype=torch.float32, device=device)
            pipe.scheduler.set_begin_index(0)
        pipe._num_timesteps = len(self.timesteps)

        if pipe.config.boundary_ratio is not None:
            self.boundary_timestep = pipe.config.boundary_ratio * pipe.scheduler.config.num_train_timesteps
        else:
            self.boundary_timestep = None

    def denoise(self, i: int, t: torch.Tensor) -> None:
        pipe = self.pipe
        latents = self.latents
        assert latents is not None and self.timesteps is not None
        pipe._current_timestep = t
        if self.boundary_timestep is None or t >= self.boundary_timestep:
            current_model = pipe.transformer
            current_guidance_scale = self.guidance_scale
        else:
            current_model = pipe.transformer_2
            current_guidance_scale = self.guidance_scale_2
        prompt_embeds = self.cond["prompt_embeds"]
        negative_prompt_embeds = self.cond["negative_prompt_embeds"]

        if not self.i2v:
            latent_model_input = latents.to(self.transformer_dtype)
            if pipe.config.expand_timesteps:
                temp_ts = (self.mask[0][0][:, ::2, ::2] * t).flatten()
                timestep = temp_ts.unsqueeze(0).expand(latents.shape[0], -1)
            else:
                timestep = t.expand(latents.shape[0])
            cache_context_kwargs = {
                "step_index": i,
                "sigma": float(pipe.scheduler.sigmas[i]),
                "num_inference_steps": len(self.timesteps),
            }
            with current_model.cache_context("cond", **cache_context_kwargs):
                noise_pred = current_model(
                    hidden_states=latent_model_input,
                    timestep=timestep,
                    encoder_hidden_states=prompt_embeds,
                    attention_kwargs=None,
                    return_dict=False,
                )[0]
            if self.do_cfg:
                with current_model.cache_context("uncond", **cache_context_kwargs):
                    noise_uncond = current_model(
                        hidden_states=latent_model_input,
                        timestep=timestep,
                        encoder_hidden_states=negative_prompt_embeds,
                        attention_kwargs=None,
                        return_dict=False,
                    )[0]
                noise_pred = noise_uncond + current_guidance_scale * (noise_pred - noise_uncond)
        else:
            import torch

            condition = self.cond["condition"]
            image_embeds = self.cond.get("image_embeds")
            if pipe.config.expand_timesteps:
                first_frame_mask = self.cond["first_frame_mask"]
                latent_model_input = (1 - first_frame_mask) * condition + first_frame_mask * latents
                latent_model_input = latent_model_input.to(self.transformer_dtype)
                temp_ts = (first_frame_mask[0][0][:, ::2, ::2] * t).flatten()
                timestep = temp_ts.unsqueeze(0).expand(latents.shape[0], -1)
            else:
                latent_model_input = torch.cat([latents, condition], dim=1).to(self.transformer_dtype)
                timestep = t.expand(latents.shape[0])
            with current_model.cache_context("cond"):
                noise_pred = current_model(
                    hidden_states=latent_model_input,
                    timestep=timestep,
                    encoder_hidden_states=prompt_embeds,
                    encoder_hidden_states_image=image_embeds,
                    attention_kwargs=None,
                    return_dict=False,
                )[0]
            if self.do_cfg:
                with current_model.cache_context("uncond"):
                    noise_uncond = current_model(
                        hidden_states=latent_model_input,
                        timestep=timestep,
                        encoder_hidden_states=negative_prompt_embeds,
                        encoder_hidden_states_image=image_embeds,
                        attention_kwargs=None,
                        return_dict=False,
                    )[0]
                    noise_pred = noise_uncond + current_guidance_scale * (noise_pred - noise_uncond)

        self.latents = pipe.scheduler.step(noise_pred, t, latents, return_dict=False)[0]

    def decode_video(self, generator: torch.Generator) -> np.ndarray:
        import torch
        from diffusers.utils.torch_utils import get_module_execution_device

        pipe = self.pipe
        latents = self.latents
        assert latents is not None
        if self.i2v and pipe.config.expand_timesteps:
            first_frame_mask = self.cond["first_frame_mask"]
            latents = (1 - first_frame_mask) * self.cond["condition"] + first_frame_mask * latents
        latents = latents.to(get_module_execution_device(pipe.vae), dtype=pipe.vae.dtype)
        latents_mean = (
            torch.tensor(pipe.vae.config.latents_mean)
            .view(1, pipe.vae.config.z_dim, 1, 1, 1)
            .to(latents.device, latents.dtype)
        )
        latents_std = 1.0 / torch.tensor(pipe.vae.config.latents_std).view(1, pipe.vae.config.z_dim, 1, 1, 1).to(
            latents.device, latents.dtype
        )
        latents = latents / latents_std + latents_mean
        video = pipe.vae.decode(latents, return_dict=False)[0]
        return pipe.video_processor.postprocess_video(video, output_type="np")


class WanModel(DiffusersModel):
    adapter = "wan"
    pipeline_classes: ClassVar[tuple[str, ...]] = ("WanPipeline", "WanImageToVideoPipeline")
    generation_cls = WanGeneration

    @classmethod
    def compute_supports(cls, pipe: Any) -> Supports:
        i2v = type(pipe).__name__ == "WanImageToVideoPipeline"
        return Supports(
            image_to_video=i2v, audio=False, negative_prompt=True, guidance_scale=True, text_to_video=not i2v
        )

    def validate(self, req: Request) -> None:
        super().validate(req)
        pipe = self.pipe
        transformer = pipe.transformer if pipe.transformer is not None else pipe.transformer_2
        patch = transformer.config.patch_size
        h_mult = math.lcm(16, pipe.vae_scale_factor_spatial * patch[1])
        w_mult = math.lcm(16, pipe.vae_scale_factor_spatial * patch[2])
        check_multiple(req.height, h_mult, "height")
        check_multiple(req.width, w_mult, "width")
        check_frames(req.frames, pipe.vae_scale_factor_temporal)
        if req.steps < 1:
            raise InvalidRequest("`steps` must be >= 1", "steps")


def load(spec: Any, device: str) -> WanModel:
    ensure_ftfy_shim()
    model = WanModel.load(spec, device)
    assert isinstance(model, WanModel)
    return model
