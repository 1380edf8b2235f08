"""The profiles ``--nnsanity-plots`` draws are read from a result's data by shape."""

from nnsanity._plots import profiles


def test_a_group_with_one_value_per_layer_is_a_profile_and_a_mismatched_one_is_not():
    group = {"pattern": "blocks.*.fc", "layers": ["blocks.0.fc", "blocks.1.fc"]}
    (found,) = profiles("gradient_ratio", {"groups": [{**group, "error_rms": [1.0, 0.5]}]})
    assert found.series == (("blocks.*.fc", (1.0, 0.5)),) and found.log
    assert profiles("gradient_ratio", {"groups": [{**group, "error_rms": [1.0]}]}) == []
    assert profiles("finite", {"loss": 1.0, "groups": "not a list"}) == []


def test_a_trace_is_a_profile_with_its_target_as_the_bound():
    (found,) = profiles("can_overfit", {"trace": [2.0, 1.0, 0.1], "target": 0.2})
    assert found.series == (("loss", (2.0, 1.0, 0.1)),) and found.bound == 0.2 and not found.log
    assert profiles("can_overfit", {"trace": [], "target": 0.2}) == []
