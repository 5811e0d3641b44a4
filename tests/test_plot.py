"""loss.png: smoothing, the curves it draws and its title."""

import matplotlib

from zoft.plot import plot_metrics, smooth, title

matplotlib.use("Agg")


def test_smoothing_is_a_debiased_moving_average():
    assert smooth([2.0, 2.0, 2.0]) == [2.0, 2.0, 2.0]  # a constant stays itself from the first point (debiased)
    values = [1.0, 0.0] * 50
    s = smooth(values)
    assert len(s) == 100 and abs(s[-1] - 0.5) < 0.1 and max(s[10:]) - min(s[10:]) < 0.3  # the noise averages out


def test_title_names_algorithm_mode_task_and_model():
    assert title({"algo": "qzo", "mode": "scales", "task": "sst2", "model": "/x/SmolLM2-135M"}) == \
        "qzo (scales) on sst2 · SmolLM2-135M"
    assert title({"algo": "mezo", "mode": "full", "task": "rte", "model": "facebook/opt-1.3b"}) == \
        "mezo on rte · opt-1.3b"


def test_a_ten_step_run_draws_points_dev_loss_and_the_metric(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    drawn = []
    real_savefig = plt.Figure.savefig

    def capture(fig, path, *args, **kwargs):
        for ax in fig.axes:
            drawn.extend((line.get_label(), line.get_marker(), len(line.get_xdata())) for line in ax.get_lines())
        return real_savefig(fig, path, *args, **kwargs)

    monkeypatch.setattr(plt.Figure, "savefig", capture)
    records = [{"event": "eval", "step": 0, "forwards": 0, "dev_accuracy": 0.5, "dev_loss": 0.7}]
    records += [{"event": "train", "step": s, "forwards": 2 * s, "loss": 0.7 - 0.01 * s} for s in range(1, 11)]
    records += [{"event": "eval", "step": 10, "forwards": 20, "dev_accuracy": 0.6, "dev_loss": 0.6}]
    plot_metrics(records, tmp_path / "loss.png", {"algo": "mezo", "mode": "full", "task": "sst2", "model": "m"})
    assert (tmp_path / "loss.png").stat().st_size > 1000
    labels = {label: (marker, n) for label, marker, n in drawn}
    assert labels["train loss"] == ("o", 10)  # few points: markers, not an invisible line
    assert labels["train loss (smoothed)"][1] == 10 and labels["dev loss"] == ("s", 2)
    assert labels["dev accuracy"] == ("o", 2)
