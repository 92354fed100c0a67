"""Pareto fronts of multi-objective searches."""

from orchestrator.execute.pareto import dominates, pareto_indices, plot_front


def test_dominance_respects_each_objectives_direction():
    assert dominates([0.9, 0.2], [0.8, 0.3], ["max", "min"])
    assert not dominates([0.9, 0.4], [0.8, 0.3], ["max", "min"])
    assert not dominates([0.9, 0.2], [0.9, 0.2], ["max", "min"])


def test_front_keeps_exactly_the_non_dominated_points():
    points = [[0.90, 1.0], [0.85, 0.25], [0.80, 0.30], [0.70, 0.10], [0.91, 1.2]]
    assert pareto_indices(points, ["max", "min"]) == [0, 1, 3, 4]


def test_front_plot_is_a_png(tmp_path):
    path = plot_front(
        [[0.9, 1.0], [0.8, 0.2]], [0, 1], ["val_accuracy", "flops_ratio"], ["max", "min"], "t", tmp_path / "f.png"
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
