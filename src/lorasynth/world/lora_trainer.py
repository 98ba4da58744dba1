"""DreamBooth-style LoRA training for many subjects at once: one batch, per-sample LoRA weights.

Each targeted nn.Linear of a frozen UNet is wrapped so that sample b of the batch gets its own
update: y_b = W x_b + s * B[k_b] A[k_b] x_b, where k_b is the subject of sample b. Training N
subjects together costs about one UNet pass per step instead of N, which is what makes a bank
of thousands of LoRAs buildable on a CPU.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm import tqdm

from lorasynth.errors import LorasynthError
from lorasynth.lora import LoraFile, LoraLayout, LoraModule
from lorasynth.lora.layout import LayoutRow


@dataclass(frozen=True)
class LoraTrainConfig:
    preset: str = "attn"
    rank: int = 4
    alpha: float | None = None  # None: alpha = rank (scale 1)
    steps: int = 200
    lr: float = 3e-3
    samples_per_subject: int = 4  # per step
    subject_prompt: str = "a photo of sks person"
    seed: int = 0
    # Start every subject's down factor from the same random draw (per module), so LoRAs of
    # different subjects differ only where training moved them, not by their initialisation.
    shared_init: bool = False
    # Train only the up factors, keeping the shared down draw fixed (LoRA-FA): every subject's
    # update then lies in one row space, dW = B_k A, linear in what is learned. Needs shared_init.
    train_down: bool = True

    def __post_init__(self) -> None:
        if not self.train_down and not self.shared_init:
            raise LorasynthError("train_down=False needs shared_init=True (one frozen down factor)")

    @property
    def scale(self) -> float:
        return (self.alpha if self.alpha is not None else self.rank) / self.rank

    def to_dict(self) -> dict:
        return asdict(self)


class BatchedLoraLinear(torch.nn.Module):
    """A frozen linear layer plus one LoRA per subject, chosen per sample via `subject_index`.

    Factors are stored flat, down (subjects, r, in_features) and up (subjects, out, r), as in
    a canonical vector; BatchedLoraConv reuses them for convolutions.
    """

    def __init__(
        self,
        base: torch.nn.Module,
        subjects: int,
        row: LayoutRow,
        scale: float,
        generator: torch.Generator,
        shared_init: bool = False,
    ) -> None:
        super().__init__()
        self.base = base
        self.scale = scale
        # Standard LoRA init: A small random, B zero, so training starts at the base model.
        bound = 1.0 / math.sqrt(row.in_features)
        draws = 1 if shared_init else subjects
        down = (torch.rand(draws, row.rank, row.in_features, generator=generator) * 2 - 1) * bound
        down = down.expand(subjects, -1, -1).clone()
        self.down = torch.nn.Parameter(down)
        self.up = torch.nn.Parameter(torch.zeros(subjects, row.out_features, row.rank))
        self.subject_index: torch.Tensor | None = None
        # Factors computed elsewhere (e.g. decoded from a latent being optimised), per subject.
        self.external: tuple[torch.Tensor, torch.Tensor] | None = None

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This batch's factors, one per sample: down (b, r, in), up (b, out, r)."""
        down_all, up_all = self.external if self.external is not None else (self.down, self.up)
        return down_all[self.subject_index], up_all[self.subject_index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.subject_index is None:
            return out
        down, up = self.factors()
        flat = x.reshape(x.shape[0], -1, x.shape[-1])  # (b, tokens, in)
        low = torch.einsum("bti,bri->btr", flat, down)
        delta = torch.einsum("btr,bor->bto", low, up)
        return out + self.scale * delta.reshape(out.shape)


class BatchedLoraConv(BatchedLoraLinear):
    """A frozen Conv2d plus one LoRA per subject: a kh x kw conv to r channels, then a 1x1 up.

    All samples' down convolutions run as one grouped convolution (one group per sample).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.subject_index is None:
            return out
        down, up = self.factors()
        b, channels = x.shape[:2]
        rank = down.shape[1]
        kernel = down.reshape(b * rank, channels, *self.base.kernel_size)
        low = torch.nn.functional.conv2d(
            x.reshape(1, b * channels, *x.shape[2:]),
            kernel,
            stride=self.base.stride,
            padding=self.base.padding,
            dilation=self.base.dilation,
            groups=b,
        ).reshape(b, rank, *out.shape[2:])
        return out + self.scale * torch.einsum("brhw,bor->bohw", low, up)


@contextlib.contextmanager
def batched_loras(
    unet: torch.nn.Module,
    layout: LoraLayout,
    subjects: int,
    scale: float,
    generator: torch.Generator,
    shared_init: bool = False,
) -> Iterator[dict[str, BatchedLoraLinear]]:
    """Wrap the layout's modules of `unet` in BatchedLoraLinear for the duration of the block."""
    modules = dict(unet.named_modules())
    wrapped: dict[str, BatchedLoraLinear] = {}
    try:
        for row in layout.rows:
            base = modules.get(row.module)
            kind = torch.nn.Conv2d if row.is_conv else torch.nn.Linear
            if not isinstance(base, kind):
                raise LorasynthError(
                    f"layout module {row.module!r} is not a {kind.__name__} layer of this UNet"
                )
            parent_name, _, child = row.module.rpartition(".")
            wrapper_type = BatchedLoraConv if row.is_conv else BatchedLoraLinear
            wrapper = wrapper_type(base, subjects, row, scale, generator, shared_init)
            # Factors are drawn on the CPU generator (same LoRAs on any device), then moved.
            wrapper.to(base.weight.device)
            modules[parent_name]._modules[child] = wrapper
            wrapped[row.module] = wrapper
        yield wrapped
    finally:
        for name, wrapper in wrapped.items():
            parent_name, _, child = name.rpartition(".")
            modules[parent_name]._modules[child] = wrapper.base


@contextlib.contextmanager
def loaded_loras(
    unet: torch.nn.Module, loras: Sequence[LoraFile], layout: LoraLayout
) -> Iterator[dict[str, BatchedLoraLinear]]:
    """Apply several existing LoRAs at once; choose per sample with `set_subjects` (inference)."""
    gen = torch.Generator().manual_seed(0)
    with batched_loras(unet, layout, len(loras), 1.0, gen) as wrapped, torch.no_grad():
        for name, wrapper in wrapped.items():
            rank = layout.row(name).rank
            for k, lora in enumerate(loras):
                module = lora.modules[name]
                r = module.rank
                wrapper.down[k].zero_()
                wrapper.up[k].zero_()
                wrapper.down[k, :r] = module.down
                wrapper.up[k, :, :r] = module.up * module.scale
            assert wrapper.down.shape[1] == rank
        yield wrapped


def set_subjects(wrapped: dict[str, BatchedLoraLinear], index: torch.Tensor | None) -> None:
    for wrapper in wrapped.values():
        wrapper.subject_index = None if index is None else index.to(wrapper.down.device)


@torch.no_grad()
def encode_images(vae, images: np.ndarray, generator: torch.Generator) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> scaled latents, sampled from the VAE posterior."""
    pixels = (
        torch.from_numpy(np.array(images, dtype=np.uint8, copy=True)).permute(0, 3, 1, 2).float()
        / 127.5
        - 1
    ).to(vae.device)
    dist = vae.encode(pixels).latent_dist
    return dist.sample(generator=generator) * vae.config.scaling_factor


@torch.no_grad()
def encode_prompts(pipe, prompts: Sequence[str]) -> torch.Tensor:
    tokens = pipe.tokenizer(
        list(prompts),
        padding="max_length",
        max_length=pipe.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    return pipe.text_encoder(tokens.input_ids.to(pipe.text_encoder.device))[0]


def train_subject_loras(
    pipe,
    layout: LoraLayout,
    images: np.ndarray,
    prompts: Sequence[Sequence[str]],
    config: LoraTrainConfig,
    progress: bool = True,
    snapshots: Collection[int] = (),
) -> tuple[list[LoraFile], dict]:
    """Train one LoRA per subject; images (S, n, H, W, 3) uint8, prompts[s][i] for image i.

    Runs on the pipeline's device; random draws come from a CPU generator, so a seed names the
    same training run everywhere (up to the device's arithmetic). Returns the LoRAs (module
    factors A, B and alpha, on the CPU) and a log with the loss curve and time; with
    `snapshots`, log["snapshots"][n] holds the LoRAs as they were after step n (a steps sweep
    in one run: with a constant learning rate they equal a run of n steps).
    """
    from diffusers import DDPMScheduler

    subjects, per_subject = images.shape[:2]
    gen = torch.Generator().manual_seed(config.seed)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    unet = pipe.unet
    device = unet.device
    unet.requires_grad_(False)
    latents = encode_images(pipe.vae, images.reshape(-1, *images.shape[2:]), gen)
    latents = latents.reshape(subjects, per_subject, *latents.shape[1:])
    text = encode_prompts(pipe, [p for subject in prompts for p in subject])
    text = text.reshape(subjects, per_subject, *text.shape[1:])

    log: dict = {"loss": [], "config": config.to_dict(), "subjects": subjects, "snapshots": {}}
    start = time.perf_counter()
    with batched_loras(unet, layout, subjects, config.scale, gen, config.shared_init) as wrapped:
        for w in wrapped.values():
            w.down.requires_grad_(config.train_down)
        params = [p for w in wrapped.values() for p in (w.down, w.up) if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
        subject_index = (
            torch.arange(subjects).repeat_interleave(config.samples_per_subject).to(device)
        )
        bar = tqdm(
            range(config.steps), desc=f"LoRAs x{subjects}", disable=not progress, leave=False
        )
        losses: list[torch.Tensor] = []
        rows = torch.arange(subjects, device=device)[:, None]
        for step in bar:
            pick = torch.randint(per_subject, (subjects, config.samples_per_subject), generator=gen)
            pick = pick.to(device)
            x0 = latents[rows, pick].flatten(0, 1)
            cond = text[rows, pick].flatten(0, 1)
            noise = torch.randn(x0.shape, generator=gen).to(device)
            t = torch.randint(scheduler.config.num_train_timesteps, (len(x0),), generator=gen).to(
                device
            )
            noisy = scheduler.add_noise(x0, noise, t)
            target = (
                noise
                if scheduler.config.prediction_type == "epsilon"
                else scheduler.get_velocity(x0, noise, t)
            )
            set_subjects(wrapped, subject_index)
            pred = unet(noisy, t, encoder_hidden_states=cond).sample
            loss = torch.nn.functional.mse_loss(pred, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            # Read losses back rarely: a sync every step would idle a GPU between steps.
            losses.append(loss.detach())
            if step % 50 == 0 or step + 1 == config.steps:
                bar.set_postfix(loss=f"{losses[-1].item():.4f}")
            if step + 1 in snapshots and step + 1 < config.steps:
                log["snapshots"][step + 1] = _export(wrapped, layout, config, subjects)
        set_subjects(wrapped, None)
        loras = _export(wrapped, layout, config, subjects)
        log["loss"] = torch.stack(losses).cpu().tolist() if losses else []
    if config.steps in snapshots:
        log["snapshots"][config.steps] = loras
    log["seconds"] = time.perf_counter() - start
    return loras, log


def _export(
    wrapped: dict[str, BatchedLoraLinear],
    layout: LoraLayout,
    config: LoraTrainConfig,
    subjects: int,
) -> list[LoraFile]:
    """Each subject's LoRA as it stands, copied to the CPU."""
    return [
        LoraFile(
            {
                name: LoraModule(
                    w.down[k].detach().cpu().clone(),
                    w.up[k].detach().cpu().clone(),
                    float(config.alpha or config.rank),
                    layout.row(name).kernel,
                )
                for name, w in wrapped.items()
            }
        )
        for k in range(subjects)
    ]
