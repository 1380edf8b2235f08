"""Batch independence: passes on the healthy zoo, fails on each planted leak."""

from __future__ import annotations

import pytest
import torch
import zoo
from causes import first_cause, result_of
from state_oracle import assert_restores
from torch import nn

from nnsanity import assert_batch_independence, measure_batch_independence
from nnsanity.errors import SanityError

# --- planted bugs -------------------------------------------------------------------------------


class PermutedFlattenCNN(nn.Module):
    """The zoo CNN flattened with the batch dim moved: each row mixes every sample's features."""

    def __init__(self):
        super().__init__()
        self.net = zoo.cnn()

    def forward(self, x):
        h = self.net[:-2](x)  # (B, 16, 3, 3)
        return self.net[-1](h.permute(1, 0, 2, 3).reshape(x.shape[0], -1))


class ViewedMLP(nn.Module):
    """An MLP whose hidden layer goes through view(-1, B).t(): the transpose the author meant."""

    def __init__(self):
        super().__init__()
        self.net = zoo.mlp()

    def forward(self, x):
        h = self.net[1](self.net[0](x))  # (B, 32)
        h = h.view(-1, x.shape[0]).t()  # still (B, 32), but rows are now mixed
        return self.net[2:](h)


class BatchCentredMLP(nn.Module):
    """Centres its inputs with the batch mean, also in eval mode."""

    def __init__(self):
        super().__init__()
        self.net = zoo.mlp()

    def forward(self, x):
        return self.net(x - x.mean(0))


class BatchAttentionLM(zoo.TinyCausalLM):
    """Passes (B, T, D) to a layer that wants (T, B, D): attention runs across the batch."""

    def forward(self, idx):
        h = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        return self.head(self.ln(self.block(h.transpose(0, 1)).transpose(0, 1)))


class DetachedCentredMLP(BatchCentredMLP):
    """Mixes the batch but detaches its inputs, so no gradient reaches them."""

    def forward(self, x):
        return super().forward(x.detach())


# --- batch independence -------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(zoo.HEALTHY))
def test_batch_independence_passes_on_every_healthy_model_with_defaults(name):
    model_factory, batch_factory, _ = zoo.HEALTHY[name]
    result = assert_batch_independence(model_factory(), batch_factory())
    assert result.passed and max(result.dependence) == 0.0
    assert result.method == ("perturbation" if name == "causal_lm" else "gradient")


def test_fails_when_a_cnn_flattens_with_the_batch_dim_permuted():
    with pytest.raises(SanityError, match=r"Sample 0 depends on all 15 others") as failure:
        assert_batch_independence(PermutedFlattenCNN(), zoo.image_batch())
    place = result_of(failure).where
    assert place.operation.name == "permute" and place.module == ""
    assert "test_batch_independence.py" in place.line
    assert first_cause(failure).id == "reshape_across_batch"


def test_fails_when_an_mlp_reshapes_with_view_minus_one_batch_size():
    with pytest.raises(
        SanityError, match=r"(?s)other samples' inputs!.*Sample 8 depends on samples"
    ):
        assert_batch_independence(ViewedMLP(), zoo.classification_batch())


def test_fails_when_the_model_normalises_with_batch_statistics_in_eval_mode():
    # d(x_i - mean)/dx_j = -1/B against 1 - 1/B for its own input: a ratio of 1/15 for B = 16.
    with pytest.raises(
        SanityError,
        match=r"Sample 0 depends on all 15 others: 0\.0667 of its own input gradient \(up to 1e-05",
    ):
        assert_batch_independence(BatchCentredMLP(), zoo.classification_batch())


def test_fails_when_attention_runs_across_the_batch_of_a_token_model():
    with pytest.raises(
        SanityError, match=r"(?s)Sample 0 depends on all 3 others.*Method: perturbation"
    ):
        assert_batch_independence(BatchAttentionLM(), zoo.token_batch())


def test_falls_back_to_perturbation_when_no_gradient_reaches_float_inputs():
    result = measure_batch_independence(DetachedCentredMLP(), zoo.classification_batch())
    assert result.method == "perturbation" and not result.passed
    assert result.sources[0] == tuple(range(1, 16))


def test_train_mode_catches_batchnorm_mixing_the_batch_as_karpathy_warns():
    with pytest.raises(SanityError, match=r"1\. BatchNorm in train mode mixes the batch"):
        assert_batch_independence(zoo.cnn(), zoo.image_batch(), train_mode=True)


def test_batch_independence_works_in_float64():
    x, y = zoo.classification_batch()
    assert assert_batch_independence(zoo.mlp().double(), (x.double(), y)).passed
    with pytest.raises(SanityError, match="Sample 0 depends on all 15 others"):
        assert_batch_independence(BatchCentredMLP().double(), (x.double(), y))


def test_samples_chooses_which_samples_are_checked():
    result = measure_batch_independence(ViewedMLP(), zoo.classification_batch(), samples=[3, -1])
    assert result.samples == (3, 15) and not result.passed
    assert measure_batch_independence(zoo.mlp(), zoo.classification_batch(), samples=5).samples == (
        5,
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"model": "net"}, TypeError, "torch.nn.Module"),
        ({"batch": torch.zeros(4, 20)}, TypeError, r"\(inputs, targets\) pair"),
        ({"batch": zoo.classification_batch(1)}, ValueError, "at least 2 samples"),
        ({"samples": [16]}, ValueError, "outside the 16 available"),
        ({"samples": []}, ValueError, "empty"),
        ({"train_mode": 1}, TypeError, "train_mode must be a bool"),
        ({"max_dependence": -1.0}, ValueError, "max_dependence must be a number >= 0"),
    ],
)
def test_batch_independence_rejects_bad_arguments(kwargs, error, match):
    args = {"model": zoo.mlp(), "batch": zoo.classification_batch(), **kwargs}
    with pytest.raises(error, match=match):
        measure_batch_independence(args.pop("model"), args.pop("batch"), **args)


def test_rejects_a_token_batch_holding_a_single_value():
    tokens = torch.zeros(4, 12, dtype=torch.long)
    with pytest.raises(ValueError, match="single value"):
        measure_batch_independence(zoo.TinyCausalLM(), (tokens, tokens))


# --- side effects --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model_factory", "check"),
    [
        (zoo.cnn, lambda m: measure_batch_independence(m, zoo.image_batch())),
        (zoo.cnn, lambda m: measure_batch_independence(m, zoo.image_batch(), train_mode=True)),
        (zoo.TinyCausalLM, lambda m: measure_batch_independence(m, zoo.token_batch())),
    ],
    ids=["batch_eval", "batch_train", "batch_tokens"],
)
def test_checks_leave_global_state_and_the_model_as_they_found_them(model_factory, check):
    model = model_factory().train()
    assert_restores(lambda: check(model), model)
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


def test_a_seq2seq_decoder_without_batch_first_is_caught_through_its_target_tokens():
    import architectures as A

    torch.manual_seed(0)
    buggy = A.GRUSeq2Seq(batch_first=False)  # only tgt_in, the tuple's second tensor, mixes
    with pytest.raises(SanityError, match=r"combines samples|across the batch"):
        assert_batch_independence(buggy, A._translation_pairs())
    assert_batch_independence(A._gru_seq2seq(), A._translation_pairs())


def test_in_a_tuple_2d_token_ids_are_data_and_lengths_masks_positions_structure():
    from nnsanity._structures import roles

    ids = torch.randint(3, 20, (4, 6))
    lengths, mask = torch.tensor([6, 4, 5, 2]), (torch.arange(6) < 4).long().expand(4, 6)
    positions = torch.arange(6).expand(4, 6)
    got = roles((ids, ids.clone(), lengths, mask, positions))
    assert list(got.values()) == ["data", "data", "structure", "structure", "structure"]


class BatchCentredGCN(nn.Module):
    """Planted bug: the node features centred on the mean over the whole batch of graphs (a
    graph norm meant per graph), so every graph's logits move with the others'."""

    def __init__(self):
        super().__init__()
        import architectures as A

        torch.manual_seed(0)
        self.gcn = A.GCN()

    def forward(self, x, edge_index, batch):
        return self.gcn(x - x.mean(0), edge_index, batch)


def test_a_graph_batch_is_judged_graph_by_graph_and_its_edges_never_change():
    import architectures as A

    inputs, y = A._graph_batch()
    seen = []
    model = A._gcn()
    model.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["edge_index"]), with_kwargs=True
    )
    r = assert_batch_independence(model, (inputs, y))
    assert r.batch_size == 8 and r.sample_index == "inputs['batch']" and r.method == "perturbation"
    assert len(seen) > 1 and all(torch.equal(e, inputs["edge_index"]) for e in seen)
    for sample_index in (None, "batch", inputs["batch"]):
        with pytest.raises(SanityError, match=r"combines samples|depend"):
            assert_batch_independence(BatchCentredGCN(), (inputs, y), sample_index=sample_index)


def test_a_node_level_output_is_compared_per_graph():
    import architectures as A

    inputs, _ = A._graph_batch()

    class NodeTagger(nn.Module):
        def __init__(self, centre):
            super().__init__()
            self.centre, self.lin = centre, nn.Linear(8, 3)

        def forward(self, x, edge_index, batch):
            return self.lin(x - x.mean(0) if self.centre else x)  # (N, 3): one row per node

    assert_batch_independence(NodeTagger(False), (inputs, None))
    with pytest.raises(SanityError):
        assert_batch_independence(NodeTagger(True), (inputs, None))


def test_sample_index_misuse_is_a_clear_error():
    import architectures as A

    inputs, y = A._graph_batch()
    with pytest.raises(ValueError, match=r"sample_index='graph' names no tensor.*'batch'"):
        assert_batch_independence(A._gcn(), (inputs, y), sample_index="graph")
    with pytest.raises(TypeError, match="1-D integer tensor"):
        assert_batch_independence(A._gcn(), (inputs, y), sample_index=inputs["x"])
    with pytest.raises(ValueError, match=r"number the graphs 0, 1"):
        assert_batch_independence(A._gcn(), (inputs, y), sample_index=inputs["batch"] + 1)


def test_a_graph_batch_whose_ids_have_another_name_says_to_pass_sample_index():
    import architectures as A

    inputs, y = A._graph_batch()

    class Renamed(nn.Module):
        def __init__(self):
            super().__init__()
            self.gcn = A._gcn()

        def forward(self, x, edge_index, graph_of_node):
            return self.gcn(x, edge_index, graph_of_node)

    renamed = {
        "x": inputs["x"],
        "edge_index": inputs["edge_index"],
        "graph_of_node": inputs["batch"],
    }
    with pytest.raises(ValueError, match=r"no model output has size 58.*pass sample_index="):
        assert_batch_independence(Renamed(), (renamed, y))
    assert_batch_independence(Renamed(), (renamed, y), sample_index="graph_of_node")
