"""The one batching helper every index build uses (``engine.batching``)."""

import pytest

from twostage_search.engine.batching import chunked, progress_bar


def test_chunked_keeps_order_and_leaves_a_short_last_chunk():
    assert list(chunked(range(5), 2)) == [[0, 1], [2, 3], [4]]
    assert list(chunked(iter("abc"), 3)) == [["a", "b", "c"]]
    assert list(chunked([], 4)) == []
    with pytest.raises(ValueError):
        list(chunked([1], 0))


def test_disabled_progress_bar_is_silent(capsys):
    with progress_bar(3, "index", enabled=False) as bar:
        bar.update(2)
    assert capsys.readouterr() == ("", "")
