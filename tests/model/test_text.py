import dataclasses

import torch
from transformers import BertConfig, BertModel

from lfvila_model.models import presets
from lfvila_model.models.text import TextEncoder

CFG = presets.tiny().text  # 4-layer BERT, hidden 32, split 2, 2 paragraph layers


def _batch(b=2, m=3, length=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 128, (b, m, length), generator=g)
    ids[..., 0] = 1
    mask = torch.ones(b, m, length, dtype=torch.long)
    mask[:, 1, 6:] = 0  # a shorter sentence
    return ids * mask, mask


def test_shapes_and_norms():
    out = TextEncoder(CFG).eval()(*_batch())
    assert out["sentence"].shape == (2, 3, 32) and out["paragraph"].shape == (2, 32)
    torch.testing.assert_close(out["sentence"].norm(dim=-1), torch.ones(2, 3))
    torch.testing.assert_close(out["paragraph"].norm(dim=-1), torch.ones(2))


def test_sentences_are_encoded_alone_by_the_first_split_layers():
    enc = TextEncoder(CFG).eval()
    ids, mask = _batch()
    ref = BertModel(BertConfig(**{**CFG.bert, "num_hidden_layers": CFG.split}), add_pooling_layer=False).eval()
    ref.load_state_dict(enc.bert.state_dict(), strict=False)
    with torch.no_grad():
        cls, _ = enc.encode(ids, mask)
        expected = ref(input_ids=ids.view(6, 10), attention_mask=mask.view(6, 10)).last_hidden_state[:, 0]
    torch.testing.assert_close(cls, expected.view(2, 3, -1), rtol=1e-4, atol=1e-5)


def test_other_sentences_change_the_paragraph_not_the_sentence():
    enc = TextEncoder(CFG).eval()
    ids, mask = _batch()
    with torch.no_grad():
        a = enc(ids, mask)
        ids2 = ids.clone()
        ids2[:, 2, 1:] = 7
        b = enc(ids2, mask)
    torch.testing.assert_close(a["sentence"][:, :2], b["sentence"][:, :2])
    assert not torch.allclose(a["paragraph"], b["paragraph"])


def test_paragraph_sees_sentence_order():
    enc = TextEncoder(CFG).eval()
    ids, mask = _batch()
    order = torch.tensor([1, 0, 2])
    with torch.no_grad():
        enc.sentence_index.weight.zero_()  # without the sentence index, order is invisible
        a, b = enc(ids, mask), enc(ids[:, order], mask[:, order])
        torch.testing.assert_close(a["sentence"][:, order], b["sentence"])
        torch.testing.assert_close(a["paragraph"], b["paragraph"], rtol=1e-4, atol=1e-5)
        enc.sentence_index.weight.normal_()
        a, b = enc(ids, mask), enc(ids[:, order], mask[:, order])
    assert (a["paragraph"] - b["paragraph"]).abs().max() > 1e-4


def test_paragraph_token_starts_as_mean_of_present_sentence_cls():
    cfg = dataclasses.replace(CFG, paragraph_layers=0)
    enc = TextEncoder(cfg).eval()
    ids, mask = _batch()
    mask[1, 2] = 0  # sample 1 has only two sentences
    with torch.no_grad():
        cls, para = enc.encode(ids, mask)
    torch.testing.assert_close(para[0], cls[0].mean(0))
    torch.testing.assert_close(para[1], cls[1, :2].mean(0))


def test_from_pretrained_local_dir_keeps_used_layers(tmp_path):
    bert = BertModel(BertConfig(**{**CFG.bert, "num_hidden_layers": 6}), add_pooling_layer=False)
    bert.save_pretrained(tmp_path)
    enc = TextEncoder(dataclasses.replace(CFG, pretrained=str(tmp_path)))
    enc.load_pretrained()
    assert len(enc.bert.encoder.layer) == CFG.split + CFG.paragraph_layers
    torch.testing.assert_close(enc.bert.encoder.layer[3].output.dense.weight, bert.encoder.layer[3].output.dense.weight)
