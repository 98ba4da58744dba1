"""Time per photo for each face embedder backend: photo file in -> unit embedding out.

Photos: scikit-image's astronaut (512x512), matplotlib's Grace Hopper (512x600), a 12 MP
(4000x3000) photo made by placing Grace Hopper, enlarged, on a canvas (what a phone gives),
and mini-world renders (32x32) for the mini embedders. Each time is the median of several runs
with the models loaded, split into decode (bytes -> RGB), detect (faces + landmarks) and
align + embed.

`arcface-onnx` runs real-size stand-ins with random weights, since buffalo_l cannot be
downloaded here: the recogniser is insightface's IResNet-50 (w600k_r50's architecture, 43.6M
parameters); the detector is a ResNet-34 at half width with SCRFD's heads and output layout
(about SCRFD-10G's compute at 640x640), whose scores come from the tests' red-square stand-in
so that it finds exactly one face. Its times are indicative of buffalo_l's, not a measurement
of it.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lorasynth.faces import FaceWarning, load_face_embedder
from lorasynth.faces.photos import load_photo

REPEATS = 5


# ---- real-size ONNX stand-ins -----------------------------------------------------------
class _IBasic(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin),
            nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.PReLU(cout),
            nn.Conv2d(cout, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.skip = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.skip(x)


class IResNet50(nn.Module):
    """insightface's iresnet50 (arcface_torch), the architecture of w600k_r50.onnx."""

    def __init__(self, dim: int = 512) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64)]
        layers.append(nn.PReLU(64))
        cin = 64
        for width, depth in zip((64, 128, 256, 512), (3, 4, 14, 3), strict=True):
            for i in range(depth):
                layers.append(_IBasic(cin, width, 2 if i == 0 else 1))
                cin = width
        self.trunk = nn.Sequential(*layers, nn.BatchNorm2d(512))
        self.fc = nn.Linear(512 * 7 * 7, dim)
        self.features = nn.BatchNorm1d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.fc(self.trunk(x).flatten(1)))


class _Basic(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.a = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
        )
        self.b = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.skip = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.b(self.a(x)) + self.skip(x))


class ScrfdLike(nn.Module):
    """ResNet-34 x 0.5 backbone, per-stride heads, SCRFD's 9 outputs (2 anchors a position)."""

    def __init__(self) -> None:
        super().__init__()
        from tests.faces.onnx_models import TinyScrfd

        self.scorer = TinyScrfd()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 32, 7, 2, 3, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
        )
        stages, cin = [], 32
        for width, depth, stride in zip(
            (32, 64, 128, 256), (3, 4, 6, 3), (1, 2, 2, 2), strict=True
        ):
            blocks = []
            for i in range(depth):
                blocks.append(_Basic(cin, width, stride if i == 0 else 1))
                cin = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.heads = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(c, 64, 3, 1, 1),
                nn.ReLU(),
                nn.Conv2d(64, 64, 3, 1, 1),
                nn.ReLU(),
                nn.Conv2d(64, 2 * (1 + 4 + 10), 3, 1, 1),
            )
            for c in (64, 128, 256)
        )

    def forward(self, x: torch.Tensor):
        feats, y = [], self.stem(x)
        for stage in self.stages:
            y = stage(y)
            feats.append(y)
        tiny = self.scorer(x)
        outs = []
        for j, (head, feat) in enumerate(zip(self.heads, feats[1:], strict=True)):
            h = head(feat).permute(0, 2, 3, 1).reshape(-1, 15)  # (K * 2 anchors, 1 + 4 + 10)
            # The learned-looking outputs are computed, then zeroed: the stand-in's answers come
            # from the red-square scorer, so detection finds one face as with real weights.
            outs.append((tiny[j], tiny[3 + j], tiny[6 + j], h))
        return (
            *[s + 0.0 * h[:, :1] for s, _, _, h in outs],
            *[b + 0.0 * h[:, 1:5] for _, b, _, h in outs],
            *[k + 0.0 * h[:, 5:] for _, _, k, h in outs],
        )


def export_real_size(folder: Path) -> Path:
    names = [f"{kind}_{s}" for kind in ("score", "bbox", "kps") for s in (8, 16, 32)]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            ScrfdLike().eval(),
            (torch.zeros(1, 3, 640, 640),),
            str(folder / "det_10g.onnx"),
            input_names=["input.1"],
            output_names=names,
            dynamic_axes={"input.1": {2: "h", 3: "w"}, **{n: {0: "k"} for n in names}},
            dynamo=False,
        )
        torch.onnx.export(
            IResNet50().eval(),
            (torch.zeros(1, 3, 112, 112),),
            str(folder / "w600k_r50.onnx"),
            input_names=["input.1"],
            output_names=["embedding"],
            dynamic_axes={"input.1": {0: "n"}, "embedding": {0: "n"}},
            dynamo=False,
        )
    return folder


# ---- photos -----------------------------------------------------------------------------
def real_photos(folder: Path) -> dict[str, Path]:
    import matplotlib.cbook
    from skimage import data

    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")) as im:
        hopper = im.convert("RGB")
    canvas = Image.new("RGB", (4000, 3000), (120, 120, 120))
    canvas.paste(hopper.resize((2048, 2400)), (900, 300))
    paths = {
        "astronaut 512x512 PNG": folder / "astronaut.png",
        "Grace Hopper 512x600 JPEG": folder / "hopper.jpg",
        "12 MP 4000x3000 JPEG": folder / "12mp.jpg",
    }
    Image.fromarray(data.astronaut()).save(paths["astronaut 512x512 PNG"])
    hopper.save(paths["Grace Hopper 512x600 JPEG"], quality=92)
    canvas.save(paths["12 MP 4000x3000 JPEG"], quality=92)
    return paths


def red_square_photo(folder: Path) -> dict[str, Path]:
    from tests.faces.onnx_models import face_photo

    path = folder / "square.png"
    Image.fromarray(face_photo(1, 1280, 960, 384, 192, 128)[0]).save(path)
    return {"stand-in face 1280x960 PNG": path}


def render_photos(folder: Path) -> dict[str, Path]:
    from lorasynth.world.render import render_identity

    path = folder / "render.png"
    Image.fromarray(render_identity(9_000_000, 1)[0][0]).save(path)
    return {"mini-world render 32x32 PNG": path}


# ---- timing -----------------------------------------------------------------------------
def median_ms(fn, repeats: int = REPEATS) -> float:
    fn()  # warm-up (first-call allocations, caches)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def time_backend(embedder, photos: dict[str, Path]) -> list[tuple[str, float, float, float, float]]:
    rows = []
    for label, path in photos.items():
        image = load_photo(path)
        faces = embedder.detect(image)
        decode = median_ms(lambda p=path: load_photo(p))
        detect = median_ms(lambda im=image: embedder.detect(im))
        embed = median_ms(
            lambda im=image, f=faces: embedder.embed_crops(embedder.align(im, f[0])[None])
        )
        total = median_ms(lambda p=path: embedder.embed([p]))
        rows.append((label, total, decode, detect, embed))
    return rows


def main() -> None:
    torch.set_num_threads(1)
    results = []
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FaceWarning)
        folder = Path(tmp)
        backends = []
        for name in ("mini-arcface", "mini-eval"):
            try:
                backends.append((name, load_face_embedder(name), render_photos(folder)))
            except Exception as exc:  # not built in this checkout
                print(f"{name}: skipped ({exc})")
        try:
            backends.append(("dlib", load_face_embedder("dlib"), real_photos(folder)))
        except Exception as exc:
            print(f"dlib: skipped ({exc})")
        onnx_dir = folder / "buffalo-standin"
        onnx_dir.mkdir()
        backends.append(
            (
                "arcface-onnx (stand-in)",
                load_face_embedder("arcface-onnx", export_real_size(onnx_dir)),
                red_square_photo(folder),
            )
        )
        for name, embedder, photos in backends:
            for row in time_backend(embedder, photos):
                results.append((name, embedder.dim, *row))
    print(
        f"{'backend':<24} {'dim':>4}  {'photo':<28} {'total ms':>9} {'decode':>8} {'detect':>8} {'align+embed':>12}"
    )
    for name, dim, label, total, decode, detect, embed in results:
        print(
            f"{name:<24} {dim:>4}  {label:<28} {total:>9.1f} {decode:>8.1f} {detect:>8.1f} {embed:>12.1f}"
        )
    print(f"(median of {REPEATS} runs each, models loaded; total = embed([path]) end to end)")


if __name__ == "__main__":
    main()
