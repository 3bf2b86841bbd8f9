"""Named LF-VILA sizes: each preset only supplies numbers."""
from __future__ import annotations

from lfvila_model.models.crossmodal import CrossModalConfig
from lfvila_model.models.lfvila import LFVILAConfig
from lfvila_model.models.text import TextEncoderConfig
from lfvila_model.models.video import VideoEncoderConfig

BERT_LARGE = dict(  # bert-large-uncased, built from its config (no download)
    vocab_size=30522, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
    intermediate_size=4096, max_position_embeddings=512, type_vocab_size=2,
)


def paper(**video_overrides) -> LFVILAConfig:
    """The paper's model: 3D Swin-B-sized HTWA video encoder, BERT-large layers 0–11 (stage 1),
    layers 12–23 as the cross-modal encoder (stage 2)."""
    return LFVILAConfig(
        video=VideoEncoderConfig(**video_overrides),
        text=TextEncoderConfig(bert=BERT_LARGE, split=8, paragraph_layers=4, proj_dim=1024),
        num_clips=4, frame_size=(192, 320), max_tokens=50, cross=CrossModalConfig(num_layers=12),
    )


def tiny(**video_overrides) -> LFVILAConfig:
    """A CPU-test size: 2 clips × 4 frames × 32×64, three video layers, a 4-layer BERT
    (+ 2 cross-modal layers in stage 2)."""
    video = dict(
        embed_dim=16, depths=(2, 2, 2), heads=(1, 2, 4), windows=((2, 2, 4), (4, 2, 4), (8, 2, 2)),
        merge_after=(0, 1), frames_per_clip=4, drop_path=0.0, proj_dim=32,
    )
    video.update(video_overrides)
    bert = dict(vocab_size=128, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                intermediate_size=64, max_position_embeddings=64)
    return LFVILAConfig(
        video=VideoEncoderConfig(**video),
        text=TextEncoderConfig(bert=bert, split=2, paragraph_layers=2, max_sentences=8, proj_dim=32),
        num_clips=2, frame_size=(32, 64), max_tokens=12, cross=CrossModalConfig(num_layers=2),
    )
