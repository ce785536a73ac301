import pytest

from tracker.rotation import Rotation


def test_each_item_once_per_period_in_evenly_spaced_turns() -> None:
    rotation = Rotation(["a", "b", "c", "d"], period=4.0, start=0.0)
    turns = {t / 2: rotation.due(t / 2) for t in range(0, 17)}  # every 0.5 s for 8 s
    assert [item for due in turns.values() for item in due] == list("abcdabcda")
    assert turns[0.0] == ["a"]
    assert turns[0.5] == []
    assert turns[1.0] == ["b"]
    assert turns[3.0] == ["d"]


def test_several_turns_passed_at_once_come_together_in_order() -> None:
    rotation = Rotation([1, 2, 3, 4], period=4.0, start=0.0)
    assert rotation.due(2.5) == [1, 2, 3]
    assert rotation.due(3.0) == [4]


def test_after_a_long_stall_each_item_once_then_the_rhythm_resumes() -> None:
    rotation = Rotation([1, 2, 3], period=3.0, start=0.0)
    assert rotation.due(100.0) == [1, 2, 3]
    assert rotation.due(100.5) == []
    assert rotation.due(101.0) == [1]


def test_no_items_is_never_due() -> None:
    assert Rotation([], period=1.0, start=0.0).due(10.0) == []


def test_the_period_must_be_positive() -> None:
    with pytest.raises(ValueError, match="period must be positive"):
        Rotation([1], period=0, start=0.0)
