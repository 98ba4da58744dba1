"""The report's plots: which methods the fidelity-vs-time plot names."""

from lorasynth.evaluate.report import ablation_methods, fidelity_vs_time


def _row(sim: float, ms: float) -> dict:
    return {"id_sim_mean": sim, "time_to_lora_ms": ms}


def test_ablation_points_are_told_apart_from_the_methods(tmp_path):
    ablations = {
        "target": {
            "eps": {"method": "diffusion-eps", "id_sim_mean": 0.5},
            "v": {"method": "diffusion", "id_sim_mean": 0.57},  # the default is a method
        },
        "photos_4": {"lincomb": {"id_sim_mean": 0.6}},  # rows without a method name
        "prior_steps": {"10": {"id_sim_mean": 0.57, "sample_ms": 10.0}},
        "shuffled_identity": {"id_sim_mean": 0.0},
    }
    assert ablation_methods(ablations) == {"diffusion-eps"}
    rows = {"lincomb": _row(0.59, 15), "diffusion": _row(0.57, 18), "diffusion-eps": _row(0.5, 18)}
    for muted in (set(), {"diffusion-eps"}, set(rows)):
        path = tmp_path / f"plot-{len(muted)}.png"
        assert fidelity_vs_time(rows, path, muted=muted) == path and path.stat().st_size > 1000
