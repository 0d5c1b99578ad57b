"""The patient page's sparklines: oldest on the left, higher values drawn higher."""

from __future__ import annotations

from engine.ui.sparkline import HEIGHT, MARGIN, WIDTH, points


def _xy(text: str) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in (p.split(",") for p in text.split())]


def test_rising_series_goes_up_to_the_right() -> None:
    xy = _xy(points([4.0, 5.0, 7.0]))
    assert [x for x, _ in xy] == sorted(x for x, _ in xy)
    assert xy[0][0] == MARGIN and xy[-1][0] == WIDTH - MARGIN
    assert xy[0][1] == HEIGHT - MARGIN and xy[-1][1] == MARGIN  # SVG y grows downwards
    assert xy[0][1] > xy[1][1] > xy[2][1]


def test_flat_and_single_series_are_a_middle_line() -> None:
    assert {y for _, y in _xy(points([5.0, 5.0, 5.0]))} == {HEIGHT / 2}
    one = _xy(points([5.0]))
    assert len(one) == 2 and {y for _, y in one} == {HEIGHT / 2} and one[0][0] < one[1][0]
    assert points([]) == ""
