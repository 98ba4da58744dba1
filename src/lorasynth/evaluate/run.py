"""`lorasynth evaluate`: the paper's comparison on held-out mini-world identities.

For each held-out identity: condition on one photo (and, as a second setting, four), make the
LoRA with every method, generate images with several prompts (same seeds for every method), and
score them with the metrics of DESIGN.md using the domain's judge (`mini-eval` for faces,
`mini-style-eval` for products), which never conditions anything, against reference renders that
never condition anything. Nothing is trained here: the trained upper-bound LoRAs and every prior
variant come from `world build`; absent ones are reported as absent. Generated images are cached
per (setting, method), so a rerun resumes.

Everything that knows what a subject is (renderer, attributes, prompts, embedders, asset folder,
the bank's training settings) comes from the domain (lorasynth.domains), faces by default.
"""

from __future__ import annotations

import hashlib
import io
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from lorasynth.atomic import write_json_atomic
from lorasynth.bank import Bank
from lorasynth.batch_generate import generate_with_loras
from lorasynth.domains import Domain, check_same_domain, get_domain
from lorasynth.errors import LorasynthError
from lorasynth.evaluate.metrics import (
    id_similarity,
    mean_ci95,
    normalised_fidelity,
    reference_embedding,
    top1_identification,
)
from lorasynth.lora import LoraFile, LoraLayout, unflatten, write_lora
from lorasynth.models.defaults import IMAGE_GUIDANCE, PRIOR_GUIDANCE, PRIOR_STEPS
from lorasynth.synthesis import Prior, Synthesizer
from lorasynth.world.ablations import built_ablations, stale_ablations
from lorasynth.world.identities import bank_id, identity_seeds

SUBJECT = "a photo of sks person"
DEFAULT_PROMPTS = (
    SUBJECT,
    f"{SUBJECT}, blue background",
    f"{SUBJECT}, smiling, red background, wearing glasses",
)
# What the prompts add to each domain's subject prompt, in the words its captions use: one plain
# prompt, one that only names a background, one that names several nuisances and a background.
PROMPT_NUISANCES = {
    "faces": ("", "blue background", "smiling, red background, wearing glasses"),
    "products": ("", "blue background", "tilted left, on a table, red background"),
}
SYNTH_METHODS = ("nearest", "lincomb", "ridge", "kernel", "diffusion", "optimize")
BANK_METHODS = ("nearest", "lincomb", "ridge", "kernel")  # draw on the bank's rows
# What evaluate reads from a domain's asset folder, in build order: (file, `world build` stages).
REQUIRED_FILES = (
    ("embedders/{conditioner}.safetensors", ("embedders",)),
    ("embedders/{judge}.safetensors", ("embedders",)),
    ("pipeline/model_index.json", ("vae", "unet")),
    ("bank/manifest.json", ("bank",)),
    ("bank/conditions.safetensors", ("conditions",)),
)


def domain_prompts(domain: str | Domain) -> tuple[str, ...]:
    """The evaluation prompts of a domain: its subject prompt, then with named nuisances."""
    dom = get_domain(domain)
    extras = PROMPT_NUISANCES.get(dom.name, ("", "blue background", "red background"))
    return tuple(f"{dom.subject_prompt}, {e}" if e else dom.subject_prompt for e in extras)


def missing_models(domain: str | Domain) -> str | None:
    """None when the domain's models are built, else one line naming the stage(s) to build."""
    dom = get_domain(domain)
    root = dom.root()
    for pattern, stages in REQUIRED_FILES:
        path = root / pattern.format(conditioner=dom.conditioner, judge=dom.judge)
        if not path.is_file():
            how = " then ".join(
                f"`lorasynth world build --domain {dom.name} --stage {stage}`" for stage in stages
            )
            return (
                f"the {dom.name} models are not built ({path} is missing): run {how}, "
                f"or every stage with `lorasynth world build --domain {dom.name}`"
            )
    return None


def attribute_error(
    predicted: np.ndarray, truth: np.ndarray, columns: list[int], identities: int
) -> np.ndarray:
    """Mean absolute attribute error per identity, over `columns` only: the attributes the
    judge's embedding can predict at all (others would add the same noise to every method)."""
    per_image = np.abs(predicted - truth)[:, columns].mean(1)
    return per_image.reshape(identities, -1).mean(1)


@dataclass(frozen=True)
class EvalConfig:
    identities: int = 200
    methods: tuple[str, ...] = (
        "base",
        "nearest",
        "lincomb",
        "ridge",
        "kernel",
        "optimize",
        "diffusion",
        "trained",
    )
    prompts: tuple[str, ...] = ()  # empty: the domain's (domain_prompts)
    multi_photos: int = 4  # the second conditioning setting; 0 skips it
    # Which methods the second setting repeats (None: every synthesis method of the run);
    # `optimize` costs seconds a subject, so a large run may leave it to the first setting.
    multi_photo_methods: tuple[str, ...] | None = None
    references: int = 8
    gallery: int = 100
    image_steps: int = 20
    image_guidance: float = IMAGE_GUIDANCE  # identity fades with it (models/defaults.py)
    prior_steps: int = PRIOR_STEPS
    prior_guidance: float = PRIOR_GUIDANCE
    timing_repeats: int = 20
    ablations: bool = True
    seed: int = 0
    domain: str = "faces"  # lorasynth.domains: whose subjects, models and judge

    def __post_init__(self) -> None:
        object.__setattr__(self, "domain", get_domain(self.domain).name)
        if not self.prompts:
            object.__setattr__(self, "prompts", domain_prompts(self.domain))


@dataclass
class EvalModels:
    """Everything evaluation reads; `shipped(domain)` loads that domain's mini-world models."""

    pipe: object
    synth: Synthesizer
    eval_embedder: object
    heldout: Bank | None
    variants: dict[str, Prior] = field(default_factory=dict)  # "diffusion-adanorm" -> prior
    regressor: object | None = None
    trainer_config: object | None = None
    # Attributes the regressor predicts better than the mean (the others would only add noise).
    informative_attributes: tuple[str, ...] | None = None
    # Ablation variants (world build --stage ablations): method -> (group, value), e.g.
    # "diffusion-bank500" -> ("bank_size", "500"); their priors are in `variants` too.
    ablation_groups: dict[str, tuple[str, str]] = field(default_factory=dict)
    # Ablations built from another default prior config than today's: method -> what differs.
    stale_ablations: dict[str, str] = field(default_factory=dict)

    def attribute_columns(self) -> list[int]:
        names = self.domain.attribute_names
        return [names.index(name) for name in self.informative_attributes or names]

    @property
    def layout(self) -> LoraLayout:
        return self.synth.layout

    @property
    def domain(self) -> Domain:
        """The subjects' domain: the bank's."""
        return get_domain(self.synth.domain)

    @classmethod
    def shipped(cls, domain: str | Domain = "faces", ablations: bool = True) -> EvalModels:
        """The domain's shipped models; a LorasynthError naming the stage to build if absent.
        `ablations`: also the ablation priors that `world build --stage ablations` left in build/."""
        from lorasynth.domains import load_mini_embedder
        from lorasynth.faces.mini import REGRESSOR_NAME, load_regressor
        from lorasynth.world.build import WORLDS
        from lorasynth.world.pipeline_io import load_pipeline

        dom = get_domain(domain)
        missing = missing_models(dom)
        if missing:
            raise LorasynthError(missing)
        root = dom.root()
        # The bank the priors were trained on (build/ when it outgrew what ships): the
        # baselines then draw on the same subjects as the prior.
        synth = Synthesizer.load(
            bank=dom.fullest_bank("bank"),
            prior=root / "synthesis" / "prior.safetensors",
            domain=dom.name,
        )
        heldout = heldout_bank(dom)
        variants = {}
        for path in sorted((root / "synthesis" / "priors").glob("prior-*.safetensors")):
            name = "diffusion-" + path.stem.removeprefix("prior-")
            variants[name] = Prior.load(
                path,
                synth.bank,
                synth.normaliser,
                synth.embedder.embedder_id,
                root / "synthesis" / "lora-vae.safetensors",
            )
        groups = {}
        for method, (ablation, prior_path, own_vae) in (
            built_ablations(dom) if ablations else {}
        ).items():
            variants[method] = Prior.load(
                prior_path,
                synth.bank,
                synth.normaliser,
                synth.embedder.embedder_id,
                own_vae or root / "synthesis" / "lora-vae.safetensors",
            )
            groups[method] = (ablation.group, ablation.value)
        try:
            regressor = load_regressor(root / "embedders" / f"{REGRESSOR_NAME}.safetensors")
        except LorasynthError:
            regressor = None
        record = root / "embedders" / f"{dom.judge}.json"
        informative = None
        if record.is_file():
            informative = (
                json.loads(record.read_text()).get("attribute_regressor", {}).get("informative")
            )
        pipe = load_pipeline(root / "pipeline")
        synth.pipe = pipe  # optimize and trained reuse the loaded pipeline
        return cls(
            pipe,
            synth,
            load_mini_embedder(dom, dom.judge),
            heldout,
            variants,
            regressor,
            WORLDS[dom.name].bank,
            tuple(informative) if informative else None,
            groups,
            {
                method: note
                for method, note in stale_ablations(dom, WORLDS[dom.name].synthesis.prior).items()
                if method in groups
            },
        )


def heldout_bank(domain: Domain) -> Bank | None:
    """The held-out subjects' trained LoRAs: the fullest bank (Domain.fullest_bank); None when
    there is none."""
    path = domain.fullest_bank("bank-heldout")
    return Bank(path) if (path / "manifest.json").is_file() else None


def cache_key(models: EvalModels, config: EvalConfig) -> str:
    """Names the image cache by everything the images depend on besides setting, method and
    prior (those name the file, see Evaluation.images): another seed, prompt or sampling setting
    gets a fresh cache, never stale images; a new prior variant adds only its own images."""
    keyed = {
        k: v
        for k, v in asdict(config).items()
        if k
        not in (
            "identities",
            "methods",
            "timing_repeats",
            "ablations",
            "gallery",
            "multi_photo_methods",
        )
    }
    text = json.dumps(keyed, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


class Evaluation:
    def __init__(
        self, models: EvalModels, config: EvalConfig, out: Path, progress: bool = True
    ) -> None:
        from lorasynth.faces.mini import embed_images

        self.m, self.cfg, self.out, self.progress = models, config, Path(out), progress
        self.domain = dom = get_domain(config.domain)
        if models.eval_embedder.embedder_id == models.synth.embedder.embedder_id:
            raise LorasynthError(
                f"the judging embedder must not be the conditioning embedder (use {dom.judge})"
            )
        check_same_domain(
            f"bank {models.synth.bank.path}", models.synth.domain, "the evaluation", dom.name
        )
        if models.heldout is not None and config.identities > len(models.heldout):
            raise LorasynthError(
                f"{models.heldout.path}: {len(models.heldout)} held-out {dom.name} subjects, "
                f"{config.identities} asked for; use --identities {len(models.heldout)} or "
                f"fewer, or train the rest with `lorasynth world build --domain {dom.name} "
                "--stage heldout`"
            )
        self.embed = lambda images: embed_images(models.eval_embedder, images)
        self.cache_dir = self.out / "cache" / cache_key(models, config)
        self.seeds = identity_seeds("heldout", config.identities)
        gallery_seeds = identity_seeds("heldout", max(config.gallery, config.identities))
        refs = np.stack(
            [
                np.stack(
                    [
                        im
                        for im, _ in dom.render_identity(
                            s, config.references, dom.eval_reference_photos
                        )
                    ]
                )
                for s in gallery_seeds
            ]
        )
        self.reference_images = refs[: config.identities].reshape(-1, *refs.shape[2:])
        ref_emb = self.embed(refs.reshape(-1, *refs.shape[2:])).reshape(
            len(gallery_seeds), config.references, -1
        )
        self.gallery = reference_embedding(
            ref_emb
        )  # (G, E); rows 0..N-1 are the evaluated subjects
        self.reference_embeddings = ref_emb[: config.identities].reshape(-1, ref_emb.shape[-1])
        photos_needed = max(1, config.multi_photos)
        self.photos = [
            [im for im, _ in dom.render_identity(s, photos_needed, dom.eval_condition_photos)]
            for s in self.seeds
        ]

    # ---- LoRAs per method ------------------------------------------------------------------
    def loras(
        self, method: str, photos: int, steps: int | None = None, guidance: float | None = None
    ) -> list[LoraFile | None] | None:
        """One LoRA per identity (None = base model), or None when the method is unavailable."""
        if method == "base":
            return [None] * len(self.seeds)
        if method in ("trained", "shuffled"):
            if self.m.heldout is None:
                return None
            vectors = self.m.heldout.gather([self.m.heldout.row_of(bank_id(s)) for s in self.seeds])
            if method == "shuffled":  # a broken method: someone else's LoRA; must score near base
                vectors = vectors.roll(1, dims=0)
            return [unflatten(v, self.m.heldout.layout) for v in vectors]
        synth, prior_name = self.m.synth, None
        if method.startswith("diffusion-"):
            if method not in self.m.variants:
                return None
            prior_name = method
        elif method not in SYNTH_METHODS:
            raise LorasynthError(f"unknown method {method!r}")
        if method in ("diffusion", "optimize") and synth.prior is None:
            return None
        if method == "optimize":
            vectors = [
                synth.optimize(p[:photos], self.cfg.seed)
                for p in tqdm(self.photos, desc="optimize", disable=not self.progress, leave=False)
            ]
            return [unflatten(v, self.m.layout) for v in vectors]
        cond = torch.stack([synth.embed(p[:photos]) for p in self.photos])
        saved = synth.prior
        try:
            if prior_name:
                synth.prior = self.m.variants[prior_name]
            base_method = "diffusion" if method.startswith("diffusion") else method
            vectors = synth.vectors_for(
                cond,
                base_method,
                self.cfg.seed,
                guidance or self.cfg.prior_guidance,
                steps or self.cfg.prior_steps,
            )
        finally:
            synth.prior = saved
        return [unflatten(v, self.m.layout) for v in vectors]

    # ---- images (cached) ---------------------------------------------------------------------
    def prior_tag(self, method: str) -> str:
        """The weights hash of the prior a method's images come from ('' when none does), so
        retraining or adding a prior invalidates its own images and no others; for optimize,
        a hash of what it uses (the representation and latent statistics)."""
        if method == "optimize":
            # optimize fits the representation's coefficients: the denoiser plays no part, so
            # its images depend on the basis and latent statistics alone
            prior = self.m.synth.prior
            if prior is None:
                return ""
            digest = hashlib.sha256(prior.representation.id.encode())
            for stats in (prior.latent_mean, prior.latent_std):
                digest.update(stats.detach().cpu().numpy().tobytes())
            return "rep-" + digest.hexdigest()[:16]
        if method.startswith("diffusion"):
            prior = self.m.variants.get(method) or self.m.synth.prior
            if prior is None:
                return ""
            tag = prior.name.rpartition(":")[2]
            # an anchored prior's LoRAs also depend on the bank its lincomb anchor draws on
            return f"{tag}@{self.bank_tag()}" if prior.anchor is not None else tag
        if method == "kernel":  # its settings are still being chosen: they key its images too
            from lorasynth.kernel import KernelConfig
            from lorasynth.synthesis import KERNEL_STRENGTH

            settings = repr((KernelConfig(), KERNEL_STRENGTH)).encode()
            return f"{self.bank_tag()}-{hashlib.sha256(settings).hexdigest()[:8]}"
        if method in BANK_METHODS:
            return self.bank_tag()
        return ""

    def bank_tag(self) -> str:
        """A hash of the bank the baselines draw on (its rows, by shard hash, and normaliser):
        a grown bank makes fresh baseline images, never reuses the smaller bank's."""
        bank = self.m.synth.bank
        digest = hashlib.sha256(self.m.synth.normaliser.hash.encode())
        for shard in bank.shards:
            digest.update(shard.sha256.encode())
        return f"bank{len(bank)}-{digest.hexdigest()[:12]}"

    def cache_path(self, setting: str, method: str) -> Path:
        tag = self.prior_tag(method)
        return self.cache_dir / f"{setting}-{method}{'@' + tag if tag else ''}.npz"

    def images(
        self,
        setting: str,
        method: str,
        make_loras: Callable[[], Sequence[LoraFile | None] | None],
    ) -> np.ndarray | None:
        """The method's images (cached); its LoRAs are made only on a cache miss, so a rerun
        (or a second process given other methods, same OUT) skips e.g. `optimize` entirely.
        None when the method is unavailable (make_loras returned None)."""
        cache = self.cache_path(setting, method)
        if cache.is_file():
            with np.load(cache, allow_pickle=False) as data:
                if data["images"].shape[0] == len(self.seeds) * len(self.cfg.prompts):
                    return data["images"]
        loras = make_loras()
        if loras is None:
            return None
        p = len(self.cfg.prompts)
        per_image_loras = [lora for lora in loras for _ in range(p)]
        prompts = [prompt for _ in loras for prompt in self.cfg.prompts]
        seeds = [
            self.cfg.seed * 1_000_003 + i for i in range(len(prompts))
        ]  # same for every method
        layout = next((lo.layout() for lo in loras if lo is not None), self.m.layout)
        chunks = []
        step = 48
        for lo in tqdm(
            range(0, len(prompts), step),
            desc=f"images {setting}/{method}",
            disable=not self.progress,
            leave=False,
        ):
            part = slice(lo, lo + step)
            chunks.append(
                generate_with_loras(
                    self.m.pipe,
                    layout,
                    per_image_loras[part],
                    prompts[part],
                    seeds[part],
                    self.cfg.image_steps,
                    self.cfg.image_guidance,
                    batch_size=step,
                )
            )
        images = np.concatenate(chunks)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, images=images)
        tmp.replace(cache)
        return images

    # ---- scores ------------------------------------------------------------------------------
    def score(self, images: np.ndarray) -> dict:
        from lorasynth.world.prompt_fidelity import (
            background_of,
            frechet_distance,
            prompt_fidelity,
        )

        n, p = len(self.seeds), len(self.cfg.prompts)
        emb = self.embed(images)
        subject = torch.arange(n).repeat_interleave(p)
        sims = id_similarity(emb, self.gallery[subject]).reshape(n, p).mean(1)
        top1 = top1_identification(emb, subject, self.gallery, self.cfg.gallery)
        top1 = top1.reshape(n, p).mean(1)
        scores = {"id_sim_per_identity": sims.tolist(), "top1_per_identity": top1.tolist()}
        wanted = [background_of(prompt) for prompt in self.cfg.prompts] * n
        named = [i for i, w in enumerate(wanted) if w]
        if named:
            scores["prompt_fidelity"] = prompt_fidelity(images[named], [wanted[i] for i in named])
        scores["frechet"] = float(frechet_distance(emb.numpy(), self.reference_embeddings.numpy()))
        if self.m.regressor is not None:
            from lorasynth.faces.mini import predict_attributes

            pred = predict_attributes(self.m.regressor, self.m.eval_embedder, images).numpy()
            truth = np.stack(
                [self.domain.identity_attributes(s).as_vector() for s in self.seeds]
            ).repeat(p, axis=0)
            scores["attr_error_per_identity"] = attribute_error(
                pred, truth, self.m.attribute_columns(), n
            ).tolist()
        return scores

    # ---- timing and storage ------------------------------------------------------------------
    def time_to_lora_ms(self, method: str, photos: int) -> float | None:
        if method == "base":
            return 0.0
        if method == "trained":
            return self._trained_ms(photos)
        if method in ("shuffled",):
            return None
        synth, saved = self.m.synth, self.m.synth.prior
        try:
            if method.startswith("diffusion-"):
                synth.prior = self.m.variants[method]
            base_method = "diffusion" if method.startswith("diffusion") else method
            with tempfile.TemporaryDirectory() as tmp:
                times = []
                repeats = 2 if method == "optimize" else self.cfg.timing_repeats  # seconds each
                for k in range(min(repeats, len(self.photos)) + 1):
                    shots = [_png(im) for im in self.photos[k % len(self.photos)][:photos]]
                    result = synth.synthesize(
                        shots,
                        base_method,
                        self.cfg.seed,
                        self.cfg.prior_guidance,
                        self.cfg.prior_steps,
                        out=Path(tmp) / "l.safetensors",
                    )
                    times.append(result.time_ms)
            return statistics.median(times[1:])  # the first call warms caches
        finally:
            synth.prior = saved

    def _trained_ms(self, photos: int) -> float | None:
        """One real per-subject LoRA training run from the photo(s), as the bank was trained."""
        from lorasynth.world.lora_trainer import train_subject_loras

        if self.m.trainer_config is None:
            return None
        cfg = self.m.trainer_config.lora
        images = np.stack(self.photos[0][:photos])[None]
        start = time.perf_counter()
        train_subject_loras(
            self.m.pipe,
            self.m.layout,
            images,
            [[self.domain.subject_prompt] * photos],
            cfg,
            progress=False,
        )
        return (time.perf_counter() - start) * 1000

    def lora_bytes(self) -> int:
        with tempfile.TemporaryDirectory() as tmp:
            zero = unflatten(torch.zeros(self.m.layout.size), self.m.layout)
            return write_lora(Path(tmp) / "x.safetensors", zero).stat().st_size

    # ---- the whole table ---------------------------------------------------------------------
    def run_setting(self, setting: str, photos: int, methods: Sequence[str]) -> dict:
        results, raw = {}, {}
        for method in methods:
            images = self.images(setting, method, lambda m=method: self.loras(m, photos))
            if images is None:
                results[method] = {"absent": True}
                continue
            raw[method] = self.score(images)
        base = np.mean(raw["base"]["id_sim_per_identity"]) if "base" in raw else float("nan")
        trained = (
            np.mean(raw["trained"]["id_sim_per_identity"]) if "trained" in raw else float("nan")
        )
        lora_bytes = self.lora_bytes()
        for method, scores in raw.items():
            sim, sim_ci = mean_ci95(scores["id_sim_per_identity"])
            top1, top1_ci = mean_ci95(scores["top1_per_identity"])
            attr, attr_ci = mean_ci95(scores.get("attr_error_per_identity", []))
            results[method] = {
                "id_sim_mean": sim,
                "id_sim_ci95": sim_ci,
                "normalised_fidelity": normalised_fidelity(sim, base, trained),
                "top1": top1,
                "top1_ci95": top1_ci,
                "attr_error": attr,
                "attr_error_ci95": attr_ci,
                "prompt_fidelity": scores.get("prompt_fidelity", float("nan")),
                "frechet": scores["frechet"],
                "time_to_lora_ms": _nan(self.time_to_lora_ms(method, photos)),
                "bytes_per_subject": 0 if method == "base" else lora_bytes,
            }
            if method.startswith("diffusion"):
                prior = self.m.variants.get(method, self.m.synth.prior)
                results[method]["latent_bytes"] = prior.representation.dim * 4
        return results


def _nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def evaluate(
    out: str | Path,
    config: EvalConfig = EvalConfig(),
    models: EvalModels | None = None,
    progress: bool = True,
) -> dict:
    """Run the comparison; writes OUT/results.json, OUT/report.md and OUT/plots/."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    models = models or EvalModels.shipped(config.domain)
    ev = Evaluation(models, config, out, progress)
    methods = list(config.methods)
    if "diffusion" in methods:
        methods += [name for name in sorted(models.variants) if name not in methods]
    results = {
        "n_identities": config.identities,
        "methods": ev.run_setting("photos1", 1, methods),
        "ablations": {},
        "config": {
            **asdict(config),
            "embedder_condition": models.synth.embedder.embedder_id,
            "embedder_eval": models.eval_embedder.embedder_id,
        },
    }
    if config.ablations:  # the extra settings and sweeps (the curves below cost nothing more)
        results["ablations"] = run_ablations(ev, config, methods)
    results["ablations"].update(ablation_curves(results["methods"], models))
    results["seconds"] = round(time.perf_counter() - began, 1)
    write_json_atomic(out / "results.json", results)
    from lorasynth.evaluate.report import write_report

    write_report(out, results, ev)
    return results


def available_identities(models: EvalModels, wanted: int) -> int:
    """`wanted`, or fewer when the held-out bank has fewer subjects (products: 100)."""
    return wanted if models.heldout is None else min(wanted, len(models.heldout))


def evaluate_domains(
    out: str | Path,
    config: EvalConfig = EvalConfig(),
    domains: Sequence[str] | None = None,
    progress: bool = True,
) -> dict[str, dict | str]:
    """Evaluate each domain into OUT/<domain>/ and write OUT/report.md with every domain's table.

    Each domain's folder is a complete evaluation (results.json, report.md, plots/, cache/), so
    the issue-6 contract holds per domain and caches of two domains never meet. A domain whose
    models are not built is named in the combined report with the command that builds it.
    Domains with fewer held-out subjects than `config.identities` use all of theirs (said in the
    report). Returns {domain: results, or the line saying it is not built}.
    """
    from dataclasses import replace

    from lorasynth.domains import DOMAINS
    from lorasynth.evaluate.report import write_combined_report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    outcome: dict[str, dict | str] = {}
    for name in domains or list(DOMAINS):
        missing = missing_models(name)
        if missing:
            outcome[name] = missing
            continue
        models = EvalModels.shipped(name)
        n = available_identities(models, config.identities)
        cfg = replace(config, domain=name, identities=n, prompts=())
        outcome[name] = evaluate(out / name, cfg, models, progress)
    write_combined_report(out, outcome)
    return outcome


def run_ablations(ev: Evaluation, config: EvalConfig, methods: Sequence[str]) -> dict:
    ablations: dict = {}
    if config.multi_photos > 1:
        # Ablation priors are compared on one photo only; this setting repeats the methods.
        synth_methods = [
            m
            for m in methods
            if (m in SYNTH_METHODS or m.startswith("diffusion"))
            and m not in ev.m.ablation_groups
            and (config.multi_photo_methods is None or m in config.multi_photo_methods)
        ]
        ablations[f"photos_{config.multi_photos}"] = ev.run_setting(
            f"photos{config.multi_photos}", config.multi_photos, ["base", "trained", *synth_methods]
        )
    ablations["shuffled_identity"] = ev.run_setting(
        "photos1", 1, ["base", "trained", "shuffled"]
    ).get("shuffled")
    if ev.m.synth.prior is not None:
        ablations["prior_steps"] = {str(k): sweep_point(ev, steps=k) for k in (5, 10, 25, 50)}
        ablations["prior_guidance"] = {str(g): sweep_point(ev, guidance=g) for g in (1.0, 2.0, 4.0)}
    return ablations


CURVE_KEYS = ("id_sim_mean", "id_sim_ci95", "normalised_fidelity", "top1", "time_to_lora_ms")


def ablation_curves(rows: dict[str, dict], models: EvalModels) -> dict:
    """Representation, latent size, bank size, target and anchor: each a {value: scores} curve
    whose default point is the shipped prior's own row (with an anchored default, the plain
    prior's for every group but the anchor); a group with no built model is named in
    not_built."""
    from lorasynth.world.ablations import GROUPS, default_values

    prior = models.synth.prior
    latent = prior.representation.dim if prior is not None else 0
    kind = prior.representation.kind if prior is not None else "vae"
    target = prior.model.config.target if prior is not None else "v"
    anchor = "lincomb" if prior is not None and prior.anchor is not None else ""
    # The subjects the prior was trained on (a prior can predate the bank's growth).
    subjects = (prior.subjects if prior is not None else None) or len(models.synth.bank)
    defaults = default_values(kind, latent, subjects, target, anchor)
    # Every group but the anchor changes the plain prior (world.ablations): their reference
    # point is the default itself, or with an anchored default its plain ablation.
    plain = "diffusion"
    if anchor:
        plain = next(
            (m for m, (g, v) in models.ablation_groups.items() if (g, v) == ("anchor", "none")),
            "diffusion-plain",
        )
    curves: dict = {"not_built": []}
    for group in GROUPS:
        members = {
            value: method
            for method, (g, value) in models.ablation_groups.items()
            if g == group and not rows.get(method, {}).get("absent")
        }
        if group == "anchor" and prior is not None and not prior.representation.linear:
            continue  # an anchor needs a linear representation: no such ablation exists
        reference = "diffusion" if group == "anchor" else plain
        if not members or reference not in rows or rows[reference].get("absent"):
            curves["not_built"].append(
                f"{group.replace('_', ' ')}: no ablation prior built "
                f"(`lorasynth world build --domain {models.domain.name} --stage ablations`)"
            )
            continue
        members.setdefault(defaults[group], reference)
        ordered = sorted(members, key=lambda v: (not v.isdigit(), int(v) if v.isdigit() else v))
        curves[group] = {
            value: {
                "method": members[value],
                **{k: rows[members[value]].get(k) for k in CURVE_KEYS},
            }
            for value in ordered
        }
    if not curves["not_built"]:
        del curves["not_built"]
    if models.stale_ablations:
        curves["other_base"] = [
            f"{method} was built from another default prior ({note}): its curve compares "
            "two changes (`lorasynth world build --stage ablations --no-resume` rebuilds it)"
            for method, note in sorted(models.stale_ablations.items())
        ]
    return curves


def sweep_point(ev: Evaluation, steps: int | None = None, guidance: float | None = None) -> dict:
    """ID similarity and time of the default prior at other sampling settings."""
    steps_used = steps or ev.cfg.prior_steps
    guidance_used = guidance or ev.cfg.prior_guidance
    if (steps_used, guidance_used) == (ev.cfg.prior_steps, ev.cfg.prior_guidance):
        # the default setting's point: the main table's own images, not a second copy
        images = ev.images("photos1", "diffusion", lambda: ev.loras("diffusion", 1))
    else:
        name = f"diffusion-s{steps_used}-g{guidance_used:g}"
        images = ev.images(
            "sweep", name, lambda: ev.loras("diffusion", 1, steps_used, guidance_used)
        )
    sims = ev.score(images)["id_sim_per_identity"]
    mean, ci = mean_ci95(sims)
    cond = ev.m.synth.embed(ev.photos[0][:1])[None]
    start = time.perf_counter()
    for _ in range(5):
        ev.m.synth.vectors_for(cond, "diffusion", 0, guidance_used, steps_used)
    return {
        "id_sim_mean": mean,
        "id_sim_ci95": ci,
        "sample_ms": (time.perf_counter() - start) / 5 * 1000,
    }
