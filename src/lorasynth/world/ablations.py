"""The evaluation's ablation models, built once by `world build --stage ablations`.

Each ablation is the default prior (AdaLoRA, v target) with one thing changed:
- representation: the prior over another representation than the default's (VAE latents, PCA
  or ridge coefficients, raw normalised vectors: `diffusion-vae`, `diffusion-pca`, ...); a VAE
  one trains its own LoRA VAE (the world's VAE config);
- latent size: the default representation at another width (`diffusion-latent32`): a LoRA VAE
  with another latent width and a prior over it, or another PCA/ridge dimension;
- bank size: the prior trained on the bank's first N subjects only (`diffusion-bank500`);
- target: eps / x0 / v;
- anchor: the prior alone (`diffusion-plain`, the paper's) or around lincomb's LoRA
  (`diffusion-lincomb`, PriorTrainConfig.anchor).
Every group but the anchor changes the *plain* prior (the default's config without an anchor:
the paper's method), so the curves measure the paper's design choices whichever the default is;
the anchor group then links them to the shipped default.

They are not shipped (the budget holds the default and the AdaNorm/target variants); they land
in build/mini-world[/<domain>]/synthesis-ablations/<name>/ (prior.safetensors, and for a latent
size its own lora-vae.safetensors) where `lorasynth evaluate` finds them. An absent one is
reported as absent, never trained by the evaluation.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from lorasynth.atomic import write_json_atomic
from lorasynth.bank import Bank
from lorasynth.bank.conditions import CONDITIONS_FILE
from lorasynth.domains import Domain, get_domain
from lorasynth.models.store import save_half_model_copy
from lorasynth.train import PriorTrainConfig, VAETrainConfig, train_prior, train_vae

ABLATIONS_DIR = "synthesis-ablations"
GROUPS = ("representation", "latent_size", "bank_size", "target", "anchor")


@dataclass(frozen=True)
class AblationConfig:
    representations: tuple[str, ...] = ("vae", "pca", "raw")  # the default's own is skipped
    latent_sizes: tuple[int, ...] = (32, 64, 256)  # past 128 (the embedding): + residual PCA
    bank_sizes: tuple[int, ...] = (250, 500, 1000)  # those below the bank's size are built
    # Prediction targets (issue 5: eps vs x0 vs v); the default's own is skipped. Their
    # methods are diffusion-eps / diffusion-x0, the names issue 6's results.json asks for.
    targets: tuple[str, ...] = ("eps", "x0", "v")
    # PriorTrainConfig.anchor values ("": none, the plain prior); the default's own is skipped.
    anchors: tuple[str, ...] = ("", "lincomb")


@dataclass(frozen=True)
class Ablation:
    """One ablation model: its group, the value it sets and what differs from the default."""

    name: str
    group: str
    value: str
    prior: dict = field(default_factory=dict)  # PriorTrainConfig overrides
    vae: dict | None = None  # VAETrainConfig overrides: its own VAE (None: the shipped one)

    @property
    def method(self) -> str:
        return f"diffusion-{self.name}"


def ablations_for(
    config: AblationConfig, bank_size: int, prior: PriorTrainConfig | None = None
) -> list[Ablation]:
    """The ablations of `prior` (the default prior's config; default: PriorTrainConfig())."""
    default = (prior or PriorTrainConfig()).representation
    out = [
        Ablation(
            rep,
            "representation",
            rep,
            prior={"representation": rep},
            vae={} if rep == "vae" else None,
        )
        for rep in config.representations
        if rep != default
    ]
    out += [
        Ablation(f"latent{size}", "latent_size", str(size), vae={"latent_dim": size})
        if default == "vae"
        else Ablation(f"latent{size}", "latent_size", str(size), prior={"pca_dim": size})
        for size in config.latent_sizes
    ]
    out += [
        Ablation(f"bank{size}", "bank_size", str(size), prior={"subjects": size})
        for size in config.bank_sizes
        if size < bank_size
    ]
    out += [
        Ablation(target, "target", target, prior={"target": target})
        for target in config.targets
        if target != (prior or PriorTrainConfig()).target
    ]
    out += [
        Ablation(anchor or "plain", "anchor", anchor or "none", prior={"anchor": anchor})
        for anchor in config.anchors
        if anchor != (prior or PriorTrainConfig()).anchor and default != "vae"  # needs linear
    ]
    return out


def plain(prior: PriorTrainConfig) -> PriorTrainConfig:
    """The config every ablation but the anchor group changes: the default without its anchor."""
    return replace(prior, anchor="")


def ablations_root(domain: str | Domain) -> Path:
    return get_domain(domain).build_root() / ABLATIONS_DIR


def default_values(
    representation: str, latent_dim: int, bank_size: int, target: str = "v", anchor: str = ""
) -> dict[str, str]:
    """The value each group takes in the shipped default prior (its row in every curve)."""
    return {
        "representation": representation,
        "latent_size": str(latent_dim),
        "bank_size": str(bank_size),
        "target": target,
        "anchor": anchor or "none",
    }


def build_ablations(
    domain: str,
    config: AblationConfig,
    vae_config: VAETrainConfig,
    prior_config: PriorTrainConfig,
    resume: bool = True,
    progress: bool = True,
    calibration_subjects: int = 0,
) -> dict:
    """Train every ablation on the domain's full bank (the shipped prior's, see
    Domain.fullest_bank); returns {name: what was built}.

    With `calibration_subjects`, each prior's strength is chosen on that many validation
    subjects like the shipped priors' (world.calibrate), so the comparison is like for like."""
    from lorasynth.world.synthesis_build import calibrate_prior, strength_metadata

    dom = get_domain(domain)
    bank_path = dom.fullest_bank("bank")
    bank = Bank(bank_path)
    runs = dom.build_root() / "synthesis"
    out = ablations_root(dom)
    shipped_vae = dom.root() / "synthesis" / "lora-vae.safetensors"
    made = {}
    for ab in ablations_for(config, len(bank), prior_config):
        began = time.perf_counter()
        target = out / ab.name
        target.mkdir(parents=True, exist_ok=True)
        prior = replace(plain(prior_config), **ab.prior)
        vae_path: Path | None = shipped_vae if prior.representation == "vae" else None
        if ab.vae is not None:
            trained_vae = train_vae(
                bank_path,
                runs / f"vae-{ab.name}",
                replace(vae_config, **ab.vae),
                resume=resume,
                progress=progress,
            )
            vae_path = target / "lora-vae.safetensors"
            save_half_model_copy(trained_vae, vae_path)
        trained = train_prior(
            bank_path,
            bank_path / CONDITIONS_FILE,
            runs / f"adalora-v-{ab.name}",  # session-2 runs named adalora-v-pca/-raw resume here
            prior,
            vae_path=vae_path,
            resume=resume,
            progress=progress,
        )
        metadata, calibration = None, None
        if calibration_subjects:
            calibration = calibrate_prior(
                trained,
                vae_path or shipped_vae,
                trained.parent,
                domain,
                calibration_subjects,
                progress,
            )
            metadata = strength_metadata(calibration)
        save_half_model_copy(trained, target / "prior.safetensors", metadata)
        record = {
            **asdict(ab),
            "prior_config": asdict(prior),
            "vae_config": asdict(replace(vae_config, **ab.vae)) if ab.vae else None,
            "bank_subjects": len(bank),
            "seconds_this_run": round(time.perf_counter() - began, 1),
            "calibration": calibration,
        }
        write_json_atomic(target / "ablation.json", record)
        made[ab.name] = record
    return made


def built_ablations(domain: str | Domain) -> dict[str, tuple[Ablation, Path, Path | None]]:
    """The ablation models on disk: method name -> (ablation, prior file, own VAE file or None)."""
    root = ablations_root(domain)
    found = {}
    for record_path in sorted(root.glob("*/ablation.json")):
        folder = record_path.parent
        if not (folder / "prior.safetensors").is_file():
            continue
        record = json.loads(record_path.read_text())
        ab = Ablation(
            record["name"], record["group"], record["value"], record["prior"], record["vae"]
        )
        vae = folder / "lora-vae.safetensors"
        found[ab.method] = (ab, folder / "prior.safetensors", vae if vae.is_file() else None)
    return found


def stale_ablations(domain: str | Domain, default: PriorTrainConfig) -> dict[str, str]:
    """Built ablation priors whose base is not `default` (the domain's prior config now), each
    with what differs besides its own change, e.g. {"diffusion-pca": "mixup 0.0, now 0.5"}:
    their curve then compares two changes at once, which the report must say."""
    expected = asdict(plain(default))
    stale = {}
    for record_path in sorted(ablations_root(domain).glob("*/ablation.json")):
        record = json.loads(record_path.read_text())
        built = {**asdict(PriorTrainConfig()), **record.get("prior_config", {})}
        own = set(record.get("prior", {}))
        differs = [
            f"{key} {built[key]!r}, now {value!r}"
            for key, value in expected.items()
            if key not in own and built.get(key) != value
        ]
        if differs:
            stale[f"diffusion-{record['name']}"] = "; ".join(differs)
    return stale
