"""LF-VILA stage 2 as in the paper and its release (microsoft/XPretrain, LF-VILA/src/models):
single-stream. BERT-large layers 12-23 run over one sequence - the paragraph token, every
sentence's tokens (the paragraph layers' output for the masked text) and the video's
last-layer tokens, max-pooled to 2×3 per frame (192 for 32 frames) with learned time and
space position embeddings. Video-text matching reads the pooler output; the first half of
the batch is given the videos of that half rolled by one (negatives), the second half its
own (positives), and MLM is scored on the positive half only, all in the same pass.

Parameter names follow the release's so its stage-2 state dict maps onto ours by the
regex rules of ``XPRETRAIN_STAGE2_RULES`` (``text_encoder.bert.encoder.layer.12`` ->
``fusion.layer.0``, ``video_token_pos.*`` -> ``fusion.video_token_pos.*``, ...).
"""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertLayer, BertPooler, BertPredictionHeadTransform

from lfvila_model.models.crossmodal import CrossModalConfig, extended_mask
from lfvila_model.models.lfvila import LFVILA, LFVILAConfig

IGNORE_INDEX = -100
XPRETRAIN_FIRST_LAYER, XPRETRAIN_NUM_LAYERS = 12, 12  # the release's stage 2: BERT-large layers 12-23

# (regex over a release stage-2 key, re.Match.expand template of our LFVILASingleStream key).
# Both cls.predictions.bias and cls.predictions.decoder.bias (the same tensor in the release)
# map onto fusion.cls.predictions.bias.
XPRETRAIN_STAGE2_RULES: list[tuple[str, str]] = [
    *((rf"text_encoder\.bert\.encoder\.layer\.{i}\.(.+)", rf"fusion.layer.{i - XPRETRAIN_FIRST_LAYER}.\1")
      for i in range(XPRETRAIN_FIRST_LAYER, XPRETRAIN_FIRST_LAYER + XPRETRAIN_NUM_LAYERS)),
    (r"text_encoder\.bert\.pooler\.dense\.(weight|bias)", r"fusion.pooler.dense.\1"),
    (r"text_encoder\.cls\.predictions\.decoder\.bias", r"fusion.cls.predictions.bias"),
    (r"text_encoder\.cls\.predictions\.(bias|decoder\.weight|transform\..+)", r"fusion.cls.predictions.\1"),
    (r"text_encoder\.seq_relationship\.(weight|bias)", r"fusion.seq_relationship.\1"),
    (r"video_token_pos\.(s_pos_embed|t_pos_embed|norm\.weight|norm\.bias)", r"fusion.video_token_pos.\1"),
]


def xpretrain_stage2_key(key: str) -> str | None:
    """Our key for a release stage-2 key (after any DeepSpeed ``module.`` prefix is removed),
    or None when the key is not a stage-2 one (stage-1 keys are converted elsewhere)."""
    for pattern, template in XPRETRAIN_STAGE2_RULES:
        m = re.fullmatch(pattern, key)
        if m:
            return m.expand(template)
    return None


def map_xpretrain_stage2(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The release's stage-2 tensors under our keys; two release keys naming one of ours
    (the MLM bias and its decoder alias) must hold the same values."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        ours = xpretrain_stage2_key(key)
        if ours is None:
            continue
        if ours in out and not torch.equal(out[ours], value):
            raise ValueError(f"{key} and another release key map to {ours} with different values")
        out[ours] = value
    return out


def pool_frame_tokens(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """B×T×h×w×C → B×T×P×C: a stride-1 spatial max-pool whose output is ``grid`` (capped by
    h×w): the release's MaxPool2d((2, 3), stride 1) on the paper's 3×5 grid, P = 6."""
    b, t, h, w, c = tokens.shape
    gh, gw = min(grid[0], h), min(grid[1], w)
    x = F.max_pool2d(tokens.permute(0, 1, 4, 2, 3).reshape(b * t, c, h, w), (h - gh + 1, w - gw + 1), stride=1)
    return x.reshape(b, t, c, gh * gw).transpose(2, 3)


def rolled_pairs(batch: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(video index per text, VTM label): the first half's videos rolled by one within that
    half (label 0), the rest their own (label 1). With a first half of one sample the
    release's roll would give it its own video; it gets sample 1's instead."""
    half = batch // 2
    index = torch.arange(batch, device=device)
    index[:half] = (torch.arange(half, device=device) - 1) % max(half, 2)
    return index, (torch.arange(batch, device=device) >= half).long()


class VideoTokenPos(nn.Module):
    """Learned space (1×1×P×H) and time (1×T×1×H) position embeddings, then LayerNorm."""

    def __init__(self, num_patches: int, num_frames: int, hidden: int):
        super().__init__()
        self.s_pos_embed = nn.Parameter(0.02 * torch.randn(1, 1, num_patches, hidden))
        self.t_pos_embed = nn.Parameter(0.02 * torch.randn(1, num_frames, 1, hidden))
        self.norm = nn.LayerNorm(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.s_pos_embed + self.t_pos_embed)


class MLMHead(nn.Module):
    """BERT's MLM head with one output bias (transformers 5's head holds a second, unused
    one until a PreTrainedModel ties them, which DDP rejects as an unused parameter)."""

    def __init__(self, bert: BertConfig):
        super().__init__()
        self.predictions = nn.Module()
        self.predictions.transform = BertPredictionHeadTransform(bert)
        self.predictions.decoder = nn.Linear(bert.hidden_size, bert.vocab_size, bias=False)
        self.predictions.bias = nn.Parameter(torch.zeros(bert.vocab_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.predictions
        return p.decoder(p.transform(x)) + p.bias


class SingleStreamEncoder(nn.Module):
    """Text tokens B×N×H (+ 0/1 mask) and video tokens B×M×H → fused tokens B×(N+M)×H and
    the pooled first token B×H; holds the MLM and matching heads."""

    def __init__(self, cfg: CrossModalConfig, bert: BertConfig, video_dim: int,
                 video_grid: tuple[int, int, int], pool_grid: tuple[int, int]):
        super().__init__()
        hidden = bert.hidden_size
        t, h, w = video_grid
        self.video_grid, self.pool_grid = tuple(video_grid), tuple(pool_grid)
        num_patches = min(pool_grid[0], h) * min(pool_grid[1], w)
        # the release has no projection: its last video layer is as wide as BERT-large
        self.video_proj = nn.Identity() if video_dim == hidden else nn.Linear(video_dim, hidden)
        self.layer = nn.ModuleList(BertLayer(bert) for _ in range(cfg.num_layers))
        self.pooler = BertPooler(bert)
        self.cls = MLMHead(bert)
        self.seq_relationship = nn.Linear(hidden, 2)
        std = bert.initializer_range
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self.video_token_pos = VideoTokenPos(num_patches, t, hidden)

    def video_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """B×T×h×w×C last-layer video tokens → B×(T·P)×H sequence tokens."""
        if tuple(tokens.shape[1:4]) != self.video_grid:
            raise ValueError(f"video token grid {tuple(tokens.shape[1:4])} != the configured {self.video_grid}")
        x = self.video_token_pos(self.video_proj(pool_frame_tokens(tokens, self.pool_grid)))
        return x.flatten(1, 2)

    def forward(self, text: torch.Tensor, text_mask: torch.Tensor,
                video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """text B×N×H, text_mask B×N (0/1), video B×M×H from ``video_tokens`` (all valid)."""
        x = torch.cat([text, video], dim=1)
        ext = extended_mask(torch.cat([text_mask, text_mask.new_ones(video.shape[:2])], dim=1), x.dtype)
        for layer in self.layer:
            out = layer(x, attention_mask=ext)
            x = out[0] if isinstance(out, tuple) else out
        return x, self.pooler(x)

    def load_bert(self, bert_pretraining: nn.Module, first: int) -> None:
        """Layers ``first``.. , the pooler and the MLM head from a transformers
        BertForPreTraining; the matching head stays fresh (BERT's NSP labels are reversed)."""
        layers = bert_pretraining.bert.encoder.layer[first:first + len(self.layer)]
        for ours, theirs in zip(self.layer, layers):
            ours.load_state_dict(theirs.state_dict())
        if bert_pretraining.bert.pooler is not None:
            self.pooler.load_state_dict(bert_pretraining.bert.pooler.state_dict())
        head = bert_pretraining.cls.predictions
        p = self.cls.predictions
        p.transform.load_state_dict(head.transform.state_dict())
        with torch.no_grad():
            p.decoder.weight.copy_(head.decoder.weight)
            p.bias.copy_(head.bias)


class LFVILASingleStream(nn.Module):
    """Stage 2 as released: the stage-1 model, frozen (no gradients, always in eval mode),
    under ``fusion``, a SingleStreamEncoder. Its forward takes LFVILAStage2's arguments
    (``neg_draws`` is unused: the pairs are fixed by the batch order)."""

    negatives = "rolled"

    def __init__(self, cfg: LFVILAConfig, stage1: LFVILA | None = None):
        super().__init__()
        self.cfg = cfg
        self.stage1 = stage1 or LFVILA(cfg)
        self.stage1.requires_grad_(False)
        bert = self.stage1.text_encoder.bert.config
        grid = cfg.video.token_grid(cfg.num_frames, cfg.frame_size)
        self.fusion = SingleStreamEncoder(cfg.cross, bert, cfg.video.dims[-1], grid, cfg.video.pool_grid)
        if cfg.text.pretrained and cfg.cross.init_from_pretrained:
            self.load_pretrained_bert(cfg.text.pretrained)
        self.stage1.eval()

    def load_pretrained_bert(self, name_or_path: str) -> None:
        """The fusion layers from the BERT layers after the stage-1 ones (BERT-large: 12-23),
        the pooler and MLM head from BERT's, as the release starts stage 2."""
        from transformers import BertForPreTraining

        used = self.cfg.text.split + self.cfg.text.paragraph_layers
        bert = BertForPreTraining.from_pretrained(name_or_path)
        if len(bert.bert.encoder.layer) < used + len(self.fusion.layer):
            raise ValueError(f"{name_or_path} has {len(bert.bert.encoder.layer)} layers; stage 2 needs "
                             f"{used + len(self.fusion.layer)}")
        self.fusion.load_bert(bert, used)

    def train(self, mode: bool = True) -> LFVILASingleStream:
        """The stage-1 part stays in eval mode (no dropout, fixed features)."""
        super().train(mode)
        self.stage1.eval()
        return self

    def forward(self, video: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                masked_ids: torch.Tensor, mlm_labels: torch.Tensor,
                neg_draws: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """video B×T×3×H×W; input_ids, attention_mask, masked_ids, mlm_labels B×m×L →
          vtm_logits B×2 and vtm_labels B (first half 0: rolled videos; the rest 1);
          mlm_logits K×V and mlm_labels K at the K masked tokens of the positive half;
          video_index B (the video each text was paired with); in eval mode also the
          stage-1 "video"/"paragraph" features (of the unmasked text)."""
        b, m, length = input_ids.shape
        text = self.stage1.text_encoder
        with torch.no_grad():
            feats, vtokens = self.stage1.video_encoder.features_and_tokens(video)
            _, tokens, mask = text.paragraph_tokens(masked_ids, attention_mask)
            if not self.training:
                cls, unmasked, _ = text.paragraph_tokens(input_ids, attention_mask)
                feats.update(text.project(cls, unmasked[:, 0]))
        index, vtm_labels = rolled_pairs(b, video.device)
        seq, pooled = self.fusion(tokens, mask, self.fusion.video_tokens(vtokens)[index])
        labels = torch.cat([mlm_labels.new_full((b, 1), IGNORE_INDEX), mlm_labels.reshape(b, m * length)], dim=1)
        labels[vtm_labels == 0] = IGNORE_INDEX  # MLM on the matched pairs only
        where = labels != IGNORE_INDEX
        if not where.any():  # keep the MLM head in the graph (DDP) with nothing to predict
            where[-1, 0] = True
        out = {"vtm_logits": self.fusion.seq_relationship(pooled), "vtm_labels": vtm_labels,
               "mlm_logits": self.fusion.cls(seq[:, :labels.shape[1]][where]), "mlm_labels": labels[where],
               "video_index": index}
        if not self.training:
            out.update(video=feats["video"], paragraph=feats["paragraph"])
        return out
