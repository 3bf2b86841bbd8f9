import math

import torch
import torch.nn.functional as F

from lfvila_model.losses import (
    IGNORE_INDEX,
    LFVILALoss,
    MTCSample,
    gather_features,
    global_contrastive_loss,
    mtc_labels,
    mtc_loss,
    sample_mtc,
)


def _feats(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_mtc_labels_hand_built():
    key_pos = torch.tensor([[0, 3], [1, 2], [3, 0]])
    value_pos = torch.tensor([[1, 2], [0, 2], [2, 3]])
    # 0 is nearer 1 (value 0); 3 is nearer 2 (value 1); 1 is equidistant from 0 and 2 → ignored;
    # 2 is itself a value of sample 2 → 2 is value 0, and 0 is nearer 2 than 3 → value 0.
    expected = torch.tensor([[0, 1], [IGNORE_INDEX, 1], [1, 0]])
    assert torch.equal(mtc_labels(key_pos, value_pos), expected)


def test_sample_mtc_draws_valid_indices():
    g = torch.Generator().manual_seed(0)
    s = sample_mtc(batch=4, m=4, total=8, offset=4, generator=g)
    assert s.key_pos.shape == (4, 2) and s.value_pos.shape == (4, 2)
    assert (s.key_pos[:, 0] != s.key_pos[:, 1]).all() and (s.value_pos[:, 0] != s.value_pos[:, 1]).all()
    own = torch.arange(4) + 4
    assert torch.equal(s.neg_sample[:, 0], own)  # first extra negative: this sample
    others = s.neg_sample[:, 1:]
    assert (others != own[:, None]).all() and (others[:, 0] != others[:, 1]).all()
    assert ((s.neg_pos >= 0) & (s.neg_pos < 4)).all()
    again = sample_mtc(batch=4, m=4, total=8, offset=4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.neg_sample, s.neg_sample) and torch.equal(again.key_pos, s.key_pos)
    # Too few other samples: drawn with replacement, never the sample itself.
    small = sample_mtc(batch=2, m=4, total=2, generator=g)
    assert (small.neg_sample[:, 1:] == torch.tensor([[1], [0]])).all()


def _direct_mtc(clip, sent, s, t):
    """Explicit loops over samples, directions and keys."""
    terms = {"t2v": [], "v2t": []}
    for name, keys, values in (("t2v", sent, clip), ("v2t", clip, sent)):
        for b in range(clip.shape[0]):
            cands = [values[b, p] for p in s.value_pos[b]]
            cands += [values[n, p] for n, p in zip(s.neg_sample[b], s.neg_pos[b])]
            for kp in s.key_pos[b].tolist():
                d = [abs(kp - vp) for vp in s.value_pos[b].tolist()]
                if d[0] == d[1]:
                    continue
                label = 0 if d[0] < d[1] else 1
                logits = torch.stack([keys[b, kp] @ c for c in cands]) / t
                terms[name].append(-torch.log_softmax(logits, 0)[label])
    return (torch.stack(terms["t2v"]).mean() + torch.stack(terms["v2t"]).mean()) / 2


def test_mtc_loss_equals_direct_computation():
    clip, sent = _feats(3, 4, 8, seed=1), _feats(3, 4, 8, seed=2)
    s = MTCSample(key_pos=torch.tensor([[0, 3], [1, 2], [0, 1]]), value_pos=torch.tensor([[1, 2], [0, 2], [3, 2]]),
                  neg_sample=torch.tensor([[0, 1, 2], [1, 0, 2], [2, 0, 1]]),
                  neg_pos=torch.tensor([[3, 0, 1], [2, 2, 3], [0, 1, 1]]))
    got = mtc_loss(clip, sent, temperature=0.05, sample=s)
    torch.testing.assert_close(got, _direct_mtc(clip, sent, s, 0.05))
    # With random draws too.
    s = sample_mtc(3, 4, 3, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(mtc_loss(clip, sent, sample=s), _direct_mtc(clip, sent, s, 0.05))
    via_generator = mtc_loss(clip, sent, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(via_generator, mtc_loss(clip, sent, sample=s))


def test_mtc_loss_all_keys_ignored_is_zero_with_grad():
    clip = _feats(1, 4, 8).requires_grad_()
    # One key, midway between the two values: ignored, so nothing is left to score.
    s = MTCSample(torch.tensor([[1]]), torch.tensor([[0, 2]]), torch.tensor([[0, 0, 0]]), torch.tensor([[0, 1, 2]]))
    loss = mtc_loss(clip, _feats(1, 4, 8, seed=3), sample=s)
    assert loss.item() == 0.0
    loss.backward()


def test_global_loss_equals_direct_computation():
    v, p, t = _feats(5, 8, seed=1), _feats(5, 8, seed=2), 0.05
    direct = 0.0
    for i in range(5):
        v2p = [math.exp(float(v[i] @ p[j]) / t) for j in range(5)]
        p2v = [math.exp(float(p[i] @ v[j]) / t) for j in range(5)]
        direct += -math.log(v2p[i] / sum(v2p)) - math.log(p2v[i] / sum(p2v))
    got = global_contrastive_loss(v, p, t)
    assert math.isclose(got.item(), direct / 10, rel_tol=1e-5)


def test_local_rows_against_gathered_batch_average_to_the_full_loss():
    # Two simulated ranks of 3: the mean of their local-row losses is the full-batch loss.
    v, p = _feats(6, 8, seed=1), _feats(6, 8, seed=2)
    ranks = [global_contrastive_loss(v[r * 3:(r + 1) * 3], p[r * 3:(r + 1) * 3], 0.05, v, p, offset=r * 3)
             for r in range(2)]
    torch.testing.assert_close((ranks[0] + ranks[1]) / 2, global_contrastive_loss(v, p, 0.05))


def test_gather_is_identity_without_distributed():
    x = torch.randn(3, 4)
    assert gather_features(x) is x


def test_lfvila_loss_weights():
    feats = {"video": _feats(4, 8, seed=1), "paragraph": _feats(4, 8, seed=2),
             "clip": _feats(4, 4, 8, seed=3), "sentence": _feats(4, 4, 8, seed=4)}
    out = LFVILALoss()(feats, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out["loss"], out["global"] + 0.25 * out["mtc"])
    torch.testing.assert_close(out["global"], global_contrastive_loss(feats["video"], feats["paragraph"]))
    expected_mtc = mtc_loss(feats["clip"], feats["sentence"], generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out["mtc"], expected_mtc)
